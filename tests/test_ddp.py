"""Data-parallel training with torchrun: two real processes (gloo on CPU) on a tiny set."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("mode", ["ideal", "hw"])
def test_two_ranks_end_with_identical_weights(tmp_path, mode):
    env = dict(os.environ, OMP_NUM_THREADS="1", MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "helpers_ddp_worker.py"), str(tmp_path), mode]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert (r0["world"], r1["world"]) == (2, 2)
    # the ranks started from different random weights ...
    assert not torch.equal(r0["init"]["1.weight"], r1["init"]["1.weight"])
    # ... each trained on half of the 96 examples (3 epochs of 48 / 8 = 6 steps) ...
    assert r0["steps"] == r1["steps"] == 18
    # ... and they end with exactly the same weights, which training did change
    assert r0["state"].keys() == r1["state"].keys()
    for k in r0["state"]:
        assert torch.equal(r0["state"][k], r1["state"][k]), k
    assert not torch.equal(r0["state"]["1.weight"], r0["init"]["1.weight"])
    assert r0["loss"][-1] < r0["loss"][0]
