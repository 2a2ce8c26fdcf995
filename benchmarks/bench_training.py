"""Training speed: LeNet-5, batch 128, forward + backward on CPU, side by side in one run.

- ``plain``: the torch LeNet-5 (``labkit.train.networks.lenet5``);
- ``labkit``: the same network converted to analog tiles (16 rows x 8 signed outputs,
  497 tiles, each with its own chip parameters from the datasheet spread) with the full
  time-domain physics on: input clock, bit-line droop, per-cell crosstalk with the
  edge-order term, readout noise, TDC quantization and clip, partial sums;
- ``labkit, torch path``: the same analog network, same step, with the torch path of
  the tile physics instead of the fused C kernels (``tile_physics.NATIVE["on"] = False``),
  timed in the same rounds (the kernels' speed-up over their fallback, the Speed issue);
  the header says which path the ``labkit`` row took (the race at first use,
  :func:`labkit.model.native.choose`);
- ``labkit, second order``: the same network on tiles that also carry chip-sized
  second-order terms (:func:`second_order_tiles`: bit-line coupling 2 % per column pair,
  30 ns of pulse width lost per row, source-line factor 7e4 /A, as a calibration of
  ``sim://?preset=silicon`` with ``CalibrationConfig(programmed_states=2)`` gives), so
  the layers run coupling, effective widths and the source line every step (the
  Silicon physics issue's Performance paragraph);
- ``aihwkit-lightning`` (the peer, if installed: ``pip install .[bench]``): its analog
  layers with 16-row tiles (``max_input_size=16``), 8-bit inputs, 10-bit outputs, output
  noise and additive weight noise.

Each figure is the median over rounds in which every network runs three steps in turn
(so a busy machine slows them alike, and each runs warm) of one optimizer-free step (zero_grad, forward, cross-entropy,
backward); ratios are to the plain network, in wall time (the rows) and in the thread's
CPU time (printed next to them: less disturbed by other processes on a shared machine). ``--threads`` sets torch's CPU threads (the
default is 1: on a shared machine a second thread mostly waits). The process keeps freed
memory for reuse (:func:`labkit.model.keep_freed_memory`, as ``labkit.train.training.train``
does; it serves all the networks; ``--default-allocator`` to measure without). The
target (the Speed issue) is a ratio below 3 on this project's machines and below 5 on any
AVX2 CPU (``LABKIT_MARCH=x86-64-v3`` builds the kernels' AVX2 code to measure that here). Peak
resident memory of a training step (plain, labkit, second order) is measured in one
fresh process per network (VmHWM; ``--no-memory`` skips it).

    python benchmarks/bench_training.py [--steps 15] [--threads 1]

Latest figures (Intel Xeon, AVX-512, 2 cores, host loaded: plain 17.7 ms against 13.8 ms
quiet; session 6, one run): labkit 2.74x plain torch (4.00x at the session's start),
torch path 9.5x, second order 3.56x; peak memory plain 277, labkit 288, second order
312 MiB. AVX2 build (``LABKIT_MARCH=x86-64-v3``): 3.76x, second order 5.10x.
aihwkit-lightning 2.1.0: 15.8x (with ``.ci/run`` on the other core: labkit 2.83x).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # this checkout's labkit

import machine  # noqa: E402
import numpy as np  # noqa: E402
from labkit.nn import ChipSpread, TileParams, convert, tile_plan  # noqa: E402
from labkit.model import keep_freed_memory, tile_physics, tiles_native  # noqa: E402
from labkit.train.networks import lenet5  # noqa: E402

TARGET = "< 3 (AVX-512 machines of this project), < 5 (any AVX2 CPU)"  # the Speed issue


def second_order_tiles(net: nn.Module, seed: int = 0) -> list[TileParams]:
    """One tile per tile of ``net``: the datasheet spread plus chip-sized second-order
    terms (coupling ~0.02 per column pair, width loss ~30 ns per row, source line 7e4 /A,
    10 % spread)."""
    rng = np.random.default_rng(seed)
    spread = ChipSpread()
    total = sum(n for _, n in tile_plan(net))
    return [dataclasses.replace(spread.sample(seed=i), mix=0.02 * (1 + 0.1 * rng.standard_normal(15)),
                                width_loss_s=30e-9 * (1 + 0.1 * rng.standard_normal(16)),
                                source_per_a=7e4 * (1 + 0.1 * rng.standard_normal()))
            for i in range(total)]


def _step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    model.zero_grad(set_to_none=True)
    nn.functional.cross_entropy(model(x), y).backward()


class _TorchPath(nn.Module):
    """``net`` with the tile physics on its torch path (the fused kernels' fallback)."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x)

    def zero_grad(self, set_to_none: bool = True):
        self.net.zero_grad(set_to_none=set_to_none)


def _torch_path_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    tile_physics.NATIVE["on"] = False
    try:
        _step(model, x, y)
    finally:
        tile_physics.NATIVE["on"] = True


def _peer(net: nn.Module) -> nn.Module | None:
    try:
        from aihwkit_lightning.nn.conversion import convert_to_analog
        from aihwkit_lightning.simulator.configs import TorchInferenceRPUConfig
        from aihwkit_lightning.simulator.parameters.enums import WeightNoiseInjectionType
    except ImportError:
        return None
    cfg = TorchInferenceRPUConfig()
    cfg.mapping.max_input_size = 16
    cfg.forward.inp_res = 2**8 - 2
    cfg.forward.out_res = 2**10 - 2
    cfg.forward.out_noise = 0.02
    cfg.forward.out_bound = 10.0
    cfg.pre_post.input_range.enable = True  # output quantization needs the input range
    cfg.modifier.noise_type = WeightNoiseInjectionType.ADD_NORMAL
    cfg.modifier.std_dev = 0.02
    return convert_to_analog(net, cfg)


def main(argv=None) -> list[dict]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--default-allocator", action="store_true", help="do not keep freed memory (page faults)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    retained = not args.default_allocator and keep_freed_memory()
    torch.manual_seed(0)
    net = lenet5()
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    analog = convert(net, ChipSpread()).train()
    second = convert(net, second_order_tiles(net)).train()
    models = {"plain": net, "labkit": analog, "labkit, torch path": _TorchPath(analog),
              "labkit, second order": second}
    peer = _peer(lenet5())
    if peer is not None:
        models["aihwkit-lightning"] = peer.train()
    step = {name: _torch_path_step if name == "labkit, torch path" else _step for name in models}
    for name, m in models.items():  # warm up (allocations, first-call paths, the kernels' race)
        for _ in range(3):
            step[name](m, x, y)
    times: dict[str, list[float]] = {k: [] for k in models}
    cpu: dict[str, list[float]] = {k: [] for k in models}  # this thread's CPU time (robust to a busy machine)
    for _ in range(max(1, args.steps // 3)):  # rounds of 3 warm steps per network
        for name, m in models.items():
            for _ in range(3):
                t, c = time.perf_counter(), time.thread_time()
                step[name](m, x, y)
                times[name].append(time.perf_counter() - t)
                cpu[name].append(time.thread_time() - c)
    base = statistics.median(times["plain"])
    rows = []
    print(f"LeNet-5, batch {args.batch}, forward+backward, {args.threads} CPU thread(s), median of {args.steps}, "
          f"{'freed memory kept' if retained else 'default allocator'}")
    print(f"machine: {machine.describe()}")
    env = __import__("os").environ
    print(f"labkit row: {'fused C kernels' if tiles_native.chosen() else 'torch path'} "
          f"(LABKIT_NATIVE={env.get('LABKIT_NATIVE', 'unset: measured choice')}, "
          f"built with -march={env.get('LABKIT_MARCH', 'native')})")
    print(f"{'network':22} {'ms/step':>9} {'ratio':>7} {'cpu ms':>8} {'ratio':>7}")
    meds = {name: statistics.median(ts) for name, ts in times.items()}
    cmeds = {name: statistics.median(ts) for name, ts in cpu.items()}
    for name, med in meds.items():
        print(f"{name:22} {med * 1e3:9.1f} {med / base:7.2f} {cmeds[name] * 1e3:8.1f} {cmeds[name] / cmeds['plain']:7.2f}")
    if "labkit, torch path" in meds:
        speedup = meds["labkit, torch path"] / meds["labkit"]
        print(f"fused kernels vs torch path, same run: {speedup:.2f}x faster")
        rows.append({"name": f"LeNet-5 B={args.batch} fwd+bwd, labkit path vs its torch path (speed-up)",
                     "value": speedup, "unit": "x", "target": ">= 1.5", "peer": "-"})
    peer = meds.get("aihwkit-lightning")
    for name, med in meds.items():
        if name == "plain":
            continue
        ours = name in ("labkit", "labkit, second order")
        rows.append({"name": f"LeNet-5 B={args.batch} fwd+bwd, {name}, ratio to plain torch", "value": med / base,
                     "unit": "x", "target": TARGET if ours else "-",
                     "peer": f"aihwkit-lightning {peer / base:.1f}x" if ours and peer else "-"})
    rows.append({"name": f"LeNet-5 B={args.batch} fwd+bwd, plain torch", "value": base * 1e3, "unit": "ms",
                 "target": "-", "peer": "-"})
    if "aihwkit-lightning" not in times:
        print("aihwkit-lightning not installed (pip install '.[bench]'): no peer figure")
    if not args.no_memory:
        mem = {name: _peak_memory(name, args) for name in ("plain", "labkit", "labkit, second order")}
        print(f"peak resident memory, one process per network (MiB): {'network':22} {'peak':>7} {'step':>7}")
        for name, (peak, grow) in mem.items():
            print(f"{'':52}{name:22} {peak:7.0f} {grow:7.0f}")
            rows.append({"name": f"LeNet-5 B={args.batch} training step, {name}, peak resident memory (step: "
                                 f"{grow:.0f} MiB over the process before it)", "value": peak, "unit": "MiB",
                         "target": "report", "peer": f"plain torch {mem['plain'][0]:.0f} MiB"})
    return rows


def _status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _memory_child(name: str, batch: int, threads: int, retained: bool) -> None:
    """In a fresh process: build ``name``, run 5 training steps; print the peak resident
    set (VmHWM) and its growth over the resident set before the first step, MiB."""
    torch.set_num_threads(threads)
    if retained:
        keep_freed_memory()
    torch.manual_seed(0)
    net = lenet5()
    model = {"plain": lambda: net, "labkit": lambda: convert(net, ChipSpread()).train(),
             "labkit, second order": lambda: convert(net, second_order_tiles(net)).train()}[name]()
    x = torch.rand(batch, 1, 28, 28)
    y = torch.randint(0, 10, (batch,))
    before = _status_mib("VmRSS")
    for _ in range(5):
        _step(model, x, y)
    peak = _status_mib("VmHWM")
    print(f"{peak} {peak - before}")


def _peak_memory(name: str, args) -> tuple[float, float]:
    """(peak resident MiB, growth during the steps MiB) of a training step of ``name``,
    measured in its own process (a process's peak cannot be reset portably)."""
    import subprocess

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_training as b; "
            f"b._memory_child({name!r}, {args.batch}, {args.threads}, {not args.default_allocator})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, grow = (float(v) for v in out.stdout.split()[-2:])
    return peak, grow


if __name__ == "__main__":
    main()
