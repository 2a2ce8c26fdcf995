"""The compiled kernels run only where a timed race at first use found them faster than
the torch path; the verdict is cached with the verified build and re-measured when its
record does not match (labkit.model.native.choose)."""

from __future__ import annotations

import json
import time

import pytest
import torch

from labkit.model import native, tile_physics, tiles_native


@pytest.fixture
def fresh(tmp_path, monkeypatch):
    """An empty kernel cache, no forcing, and nothing loaded or chosen in this process."""
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LABKIT_NATIVE", raising=False)
    for name in ("_LOADED", "_PATHS", "_CHOSEN"):
        monkeypatch.setattr(native, name, {})
    return tmp_path


def _kernel(tmp_path):
    src = tmp_path / "tiny.c"
    src.write_text("int tiny(void) { return 7; }\n")
    assert native.load(src) is not None
    return src


class Race:
    def __init__(self, native_s, torch_s):
        self.times, self.calls = (native_s, torch_s), 0

    def __call__(self):
        self.calls += 1
        return self.times


def _new_process():
    native._CHOSEN.clear()  # what a new process knows: only the disk cache


def test_a_slower_kernel_loses_and_the_verdict_is_cached(fresh):
    src = _kernel(fresh)
    slow = Race(2e-3, 1e-3)
    assert native.choose(src, False, "p1", slow) is False and slow.calls == 1
    rec = json.loads(native.choice_path(src).read_text())
    assert rec["native"] is False and rec["native_s"] == 2e-3 and rec["torch_s"] == 1e-3
    assert native.choose(src, False, "p1", slow) is False and slow.calls == 1  # this process
    _new_process()
    assert native.choose(src, False, "p1", slow) is False and slow.calls == 1  # from the cache
    fast = Race(1e-3, 2e-3)
    assert native.choose(src, False, "p2", fast) is True and fast.calls == 1  # another probe races anew


def test_a_tampered_or_foreign_record_is_not_trusted(fresh):
    src = _kernel(fresh)
    assert native.choose(src, False, "p", Race(2e-3, 1e-3)) is False
    path = native.choice_path(src)
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "native": True}))  # flipped without its digest
    _new_process()
    again = Race(2e-3, 1e-3)
    assert native.choose(src, False, "p", again) is False and again.calls == 1
    rec = json.loads(path.read_text())
    path.write_text(json.dumps({**rec, "library_sha256": "0" * 64}))  # another library's verdict
    _new_process()
    again = Race(2e-3, 1e-3)
    assert native.choose(src, False, "p", again) is False and again.calls == 1
    path.chmod(0o666)  # anyone could have written it
    _new_process()
    again = Race(2e-3, 1e-3)
    native.choose(src, False, "p", again)
    assert again.calls == 1


def test_labkit_native_forces_either_path_without_a_race(fresh, monkeypatch):
    src = _kernel(fresh)
    never = Race(None, None)
    monkeypatch.setenv("LABKIT_NATIVE", "1")
    assert native.choose(src, False, "p", never) is True
    monkeypatch.setenv("LABKIT_NATIVE", "0")
    assert native.choose(src, False, "p", never) is False
    assert never.calls == 0


def test_a_slow_tile_kernel_loses_the_race_and_the_layer_runs_the_torch_path(fresh, monkeypatch):
    real = tiles_native.forward

    def slow_forward(*args, **kw):
        time.sleep(0.25)  # far slower than the torch path even on a loaded machine (38 ms seen)
        return real(*args, **kw)

    monkeypatch.setattr(tiles_native, "forward", slow_forward)
    if not tiles_native.available():
        pytest.skip("no C compiler")
    assert tiles_native.chosen() is False
    rec = json.loads(native.choice_path(tiles_native.SOURCE, True).read_text())
    assert rec["probe"] == tiles_native.PROBE and rec["native_s"] > rec["torch_s"]
    xt = torch.rand(1, 16, 256)
    assert not tiles_native.applies(xt)
    ctx = native.RaceCtx((False,) * 7)
    calls = []
    monkeypatch.setattr(tiles_native, "forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    args = (10.0 * torch.rand(1, 16, 8), torch.rand(1, 16, 8), torch.full((1, 1, 8), 1e-3),
            torch.full((1, 1, 8), 900.0), torch.ones(1, 1, 8), (True, True, (0.0, 0.0), 1023.0, 2, True, True))
    tile_physics.TileBmm.forward(ctx, xt, *args)
    assert ctx.native is False and not calls


def test_labkit_march_builds_another_target_in_its_own_entry_and_refuses_junk(fresh, monkeypatch):
    src = _kernel(fresh)
    native_entry = native.entry_path(src)
    monkeypatch.setenv("LABKIT_MARCH", "x86-64-v3")
    v3 = native.entry_path(src)
    assert v3 != native_entry and "-march=x86-64-v3" in native.build_record(src, False)["flags"]
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):  # an x86-64 machine that runs v3 code
        native._LOADED.clear()
        assert native.load(src).tiny() == 7 and v3.exists()
    monkeypatch.setenv("LABKIT_MARCH", "native; rm -rf /")
    with pytest.raises(ValueError, match="LABKIT_MARCH"):
        native.build_record(src, False)
