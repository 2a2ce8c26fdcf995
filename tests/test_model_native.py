"""The compiled kernels: slots.c and crossing.c against the pure-torch path, and the verified kernel cache (planted, tampered, foreign-writable, missing-symbol entries)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from labkit.model import slots_native as native
from labkit.model.kernels import ChargeFn

from tests.test_model import make_model, patterns

pytestmark = pytest.mark.skipif(native.library() is None, reason="no C compiler: torch path only")


_USABLE = native.usable  # (a monkeypatched usable must not become the "native" run's)


def _charge_and_grads(m, x, use_native, monkeypatch):
    monkeypatch.setattr(native, "usable", _USABLE if use_native else (lambda *a: False))
    params = [m.log_i0, m.eta, m.k_xt]
    for p in params:
        p.grad = None
    xg = x.clone().requires_grad_(True)
    q = m.charge_fc(xg)
    w = torch.linspace(-1.0, 2.0, q.numel(), dtype=q.dtype).reshape(q.shape)
    (q * w).sum().backward()
    return [q.detach(), xg.grad] + [p.grad.clone() for p in params]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n_tiles", [None, 3])
def test_native_equals_torch_path_values_and_gradients(monkeypatch, dtype, tol, n_tiles):
    m = make_model(seed=4, n_tiles=n_tiles, strong=4.0, quantize=False, dtype=dtype)
    shape = (16,) if n_tiles is None else (n_tiles, 16)
    x = patterns(300, shape, seed=5, levels=8).to(dtype)  # zeros, ties, full scale
    x[2:150] = patterns(148, shape, seed=6).to(dtype)  # and distinct widths
    ref = _charge_and_grads(m, x, False, monkeypatch)
    got = _charge_and_grads(m, x, True, monkeypatch)
    names = ["q", "x", "log_i0", "eta", "k_xt"]
    for name, a, b in zip(names, got, ref):
        if name == "x":
            a, b = _untied(a, b, x, tol)
        scale = b.abs().max().clamp_min(1e-30)
        assert (a - b).abs().max() <= tol * scale, name


def _untied(a, b, xq, tol):
    """Input gradients where they are defined: on widths that no other row of the sample
    shares (equal widths share their gradient in an arbitrary split: the torch path
    gives it to one of them, the C kernel to each its own), and as the sum per sample,
    which every split keeps. Returns them as two flat tensors."""
    same = (xq.unsqueeze(-1) == xq.unsqueeze(-2)).sum(-1) == 1
    sa, sb = a.sum(-1), b.sum(-1)
    assert (sa - sb).abs().max() <= 10 * tol * sb.abs().max().clamp_min(1e-30), "x (sums per sample)"
    return a[same], b[same]


def test_native_kernel_is_used_and_falls_back():
    d = torch.rand(1, 4, 16)
    i0 = torch.rand(1, 16, 16)
    assert native.usable(d, i0, i0, i0)
    assert not native.usable(d[..., :6], i0[:, :6], i0[:, :6])  # 6 rows: not a lane multiple
    assert not native.usable(d.double(), i0, i0)  # mixed dtypes


def test_gradcheck_through_native_kernel():
    m = make_model(seed=2, strong=4.0, quantize=False)
    gen = torch.Generator().manual_seed(3)
    x = 0.05 + 0.95 * torch.rand(6, 16, generator=gen, dtype=torch.float64)  # distinct widths, all pulsed
    args = (m._tiled(m.log_i0, 2), m._tiled(m.k_xt, 2), m._tiled(m.eta, 1).unsqueeze(1))
    assert native.usable(x.unsqueeze(0), args[0], args[1])

    def f(xx, log_i0, kxt, eta):
        return ChargeFn.apply(xx, xx > 0, log_i0, kxt, eta, m.T_us, m.C_ff, True, True)

    inputs = [x.unsqueeze(0).requires_grad_(True)] + [a.detach().clone().requires_grad_(True) for a in args]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- verified kernel cache

PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *p = getenv("PLANT_MARKER");
    FILE *f = p ? fopen(p, "w") : NULL;
    if (f) { fputs("constructor ran", f); fclose(f); }
}
int slots_fwd_f32(void) { return 0; }
"""


def _plant(path, tmp_path, source=PLANTED):
    """Compile ``source`` into the library ``path`` (what an attacker would drop there)."""
    import subprocess

    c = tmp_path / "planted.c"
    c.write_text(source)
    subprocess.run(["cc", "-shared", "-fPIC", str(c), "-o", str(path)], check=True, capture_output=True)


def _load_in_subprocess(cache, marker):
    """Load the slots kernel in a fresh process with LABKIT_CACHE=cache; its stderr."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, LABKIT_CACHE=str(cache), PLANT_MARKER=str(marker), LABKIT_NATIVE="1")
    code = ("from labkit.model import slots_native as s; lib = s.library(); "
            "assert lib is not None and lib.slots_bwd_f64 is not None; print(lib._name)")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip(), r.stderr


def _record_for(entry):
    import hashlib
    import json

    from labkit.model import native as builder

    rec = builder.build_record(native.SOURCE, False)
    rec["library_sha256"] = hashlib.sha256(entry.read_bytes()).hexdigest()
    entry.with_suffix(".json").write_text(json.dumps(rec))


def _entry(cache):
    from labkit.model import native as builder

    d = cache / "native"
    d.mkdir(parents=True, mode=0o700)
    return builder.entry_path(native.SOURCE, False, d)


def test_planted_library_in_the_cache_is_never_loaded(tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    entry = _entry(cache)
    _plant(entry, tmp_path)  # right name, no record: not built from the shipped source
    loaded, _ = _load_in_subprocess(cache, marker)
    assert not marker.exists()
    assert loaded == str(entry)  # rebuilt in place, then loaded
    from labkit.model import native as builder

    assert builder.is_verified(entry, builder.build_record(native.SOURCE, False))


def test_tampered_entry_is_rebuilt(tmp_path):
    import hashlib

    cache, marker = tmp_path / "cache", tmp_path / "marker"
    entry = _entry(cache)
    _load_in_subprocess(cache, marker)  # a genuine build
    genuine = hashlib.sha256(entry.read_bytes()).hexdigest()
    _plant(entry, tmp_path)  # the library swapped under its (genuine) record
    loaded, _ = _load_in_subprocess(cache, marker)
    assert not marker.exists()
    assert hashlib.sha256(entry.read_bytes()).hexdigest() == genuine  # same compiler, same bytes
    assert loaded == str(entry)


@pytest.mark.parametrize("loose", ["native", "root"])
def test_cache_writable_by_others_is_not_used(tmp_path, loose):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    entry = _entry(cache)
    _plant(entry, tmp_path)
    _record_for(entry)  # even with a consistent record: anyone could have written both
    (entry.parent if loose == "native" else cache).chmod(0o777)  # or swapped the directory
    loaded, err = _load_in_subprocess(cache, marker)
    assert not marker.exists()
    assert "writable by others" in err and loaded != str(entry)


def test_library_missing_a_symbol_is_rebuilt(tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "marker"
    entry = _entry(cache)
    _plant(entry, tmp_path, source="int slots_fwd_f32(void) { return 0; }\n")
    _record_for(entry)  # a consistent record, but a library without the kernel's symbols
    _load_in_subprocess(cache, marker)  # no AttributeError traceback: a working kernel
    from labkit.model import native as builder

    assert builder.is_verified(entry, builder.build_record(native.SOURCE, False))  # and the entry mended



def test_build_record_covers_every_source_and_local_header():
    from labkit.model import native as builder

    rec = builder.build_record(native.SOURCE, False)
    assert set(rec["sources_sha256"]) == {"slots.c", "crossing.c", "slot_walk.h", "crossing_math.h", "ln_poly.h"}
    tiles = builder.build_record(Path(native.SOURCE[0]).with_name("analog_tiles.c"), True)
    assert set(tiles["sources_sha256"]) == {"analog_tiles.c", "ln_poly.h"}


def test_changed_header_rebuilds_the_library(tmp_path, monkeypatch):
    """Two sources sharing a local header, built into one library: a changed header gives
    another entry and record, the old binary is not trusted for it (not even copied under
    the new entry's name), and the library is rebuilt from the new header."""
    import ctypes
    import shutil

    from labkit.model import native as builder

    (tmp_path / "cache").mkdir(mode=0o700)
    monkeypatch.setenv("LABKIT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("LABKIT_NATIVE", raising=False)
    monkeypatch.setattr(builder, "_LOADED", {})
    monkeypatch.setattr(builder, "_PATHS", {})
    src = tmp_path / "src"
    src.mkdir()
    head = src / "walk.h"
    head.write_text("#define K_VALUE 1\n")
    (src / "a.c").write_text('#include "walk.h"\nint k_value(void) { return K_VALUE; }\n')
    (src / "b.c").write_text('#include "walk.h"\n#include <math.h>\nint k_twice(void) { return 2 * K_VALUE; }\n')
    sources = (src / "a.c", src / "b.c")
    sig = {"k_value": ([], ctypes.c_int), "k_twice": ([], ctypes.c_int)}
    assert builder.build_inputs(sources) == [src / "a.c", src / "b.c", head]
    lib = builder.load(sources, signatures=sig)
    assert lib is not None and (lib.k_value(), lib.k_twice()) == (1, 2)
    first = builder.entry_path(sources, False)
    assert first.name.startswith("a-") and builder.is_verified(first, builder.build_record(sources, False))

    head.write_text("#define K_VALUE 5\n")  # the header alone changes
    second = builder.entry_path(sources, False)
    assert second != first
    assert builder.build_record(sources, False)["sources_sha256"]["walk.h"] != \
        json.loads(first.with_suffix(".json").read_text())["sources_sha256"]["walk.h"]
    assert not builder.is_verified(first, builder.build_record(sources, False))
    for suffix in (".so", ".json"):  # the stale build planted under the new name
        shutil.copyfile(first.with_suffix(suffix), second.with_suffix(suffix))
    builder._LOADED.clear()  # a new process
    builder._PATHS.clear()
    lib = builder.load(sources, signatures=sig)
    assert lib is not None and (lib.k_value(), lib.k_twice()) == (5, 10)  # rebuilt, not the cached binary
    assert builder.is_verified(second, builder.build_record(sources, False))

# ---------------------------------------------------------------- the fused crossing (crossing.c cross_fwd / cross_bwd)

SWITCHES = {
    "full": {},
    "no_quantize": dict(quantize=False, clip=None),
    "hard_clip": dict(clip="hard"),
    "no_edge_timing": dict(edge_timing=False),
    "droop_only": dict(crosstalk=False),
    "crosstalk_only": dict(droop=False),
    "ideal": dict(droop=False, crosstalk=False, quantize=False, clip=None),
}


def _crossing_and_grads(m, x, use_native):
    params = [m.log_i0, m.k_xt, m.eta, m.t0, m.gain]
    for p in params:
        p.grad = None
    xg = x.clone().requires_grad_(True)
    with native.forcing(use_native):
        t = m.crossing_us(xg)
        w = torch.linspace(-1.0, 2.0, t.numel(), dtype=t.dtype).reshape(t.shape)
        (t * w).sum().backward()
    return [t.detach(), xg.grad] + [None if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("n_tiles", [None, 3])
@pytest.mark.parametrize("kind", list(SWITCHES))
def test_fused_crossing_equals_torch_path(dtype, tol, n_tiles, kind):
    """The fused crossing (one C call each way) against the composition of the torch
    functions: times and every gradient, float64 and float32, on every switch."""
    opts = dict(SWITCHES[kind])
    m = make_model(seed=4, n_tiles=n_tiles, strong=4.0, dtype=dtype, **opts)
    shape = (16,) if n_tiles is None else (n_tiles, 16)
    x = patterns(300, shape, seed=5, levels=8).to(dtype)  # zeros, ties, full scale
    x[2:150] = patterns(148, shape, seed=6).to(dtype)  # and distinct widths
    gen = torch.Generator().manual_seed(8)
    x[150:160] = 0.05 + 0.9 * torch.rand(x[150:160].shape, generator=gen, dtype=dtype)
    x[150:160, ..., 3], x[150:160, ..., 7] = -0.2, 1.3  # outside [0, 1]: clamped, zero gradient
    ref = _crossing_and_grads(m, x, False)
    got = _crossing_and_grads(m, x, True)
    xq = x.clamp(0.0, 1.0)
    if m.quantize:
        xq = torch.round(xq * m.input_levels) / m.input_levels
    for name, a, b in zip(["t", "x", "log_i0", "k_xt", "eta", "t0", "gain"], got, ref):
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if name == "t" and m.quantize:  # a rounding of q may move a time across a TDC edge
            off = (a - b).abs()
            assert off.max() <= m.lsb_us * (1 + 1e-6) and (off > 1e-9).float().mean() < 0.01, name
            continue
        if name == "x":
            assert (a[150:160, ..., 3] == 0).all() and (a[150:160, ..., 7] == 0).all(), "x outside [0, 1]"
            a, b = _untied(a, b, xq, tol)
        scale = b.abs().max().clamp_min(1e-30)
        assert (a - b).abs().max() <= tol * scale, name


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-12), (torch.float32, 2e-5)])
@pytest.mark.parametrize("rows, cols", [(8, 24), (32, 16)])
@pytest.mark.parametrize("kind", ["full", "no_edge_timing", "hard_clip"])
def test_fused_crossing_on_other_array_shapes(dtype, tol, rows, cols, kind):
    """Other shapes than the chip's: 24 columns take the kernel's general path, 32 rows
    the 16-column one with more slots."""
    m = make_model(seed=7, rows=rows, cols=cols, strong=4.0, dtype=dtype, **SWITCHES[kind])
    x = patterns(200, (rows,), seed=8).to(dtype)
    ref = _crossing_and_grads(m, x, False)
    got = _crossing_and_grads(m, x, True)
    xq = torch.round(x.clamp(0.0, 1.0) * m.input_levels) / m.input_levels
    for name, a, b in zip(["t", "x", "log_i0", "k_xt", "eta", "t0", "gain"], got, ref):
        if name == "t":
            off = (a - b).abs()
            assert off.max() <= m.lsb_us * (1 + 1e-6) and (off > 1e-9).float().mean() < 0.01, name
            continue
        if name == "x":
            a, b = _untied(a, b, xq, tol)
        assert (a - b).abs().max() <= tol * b.abs().max().clamp_min(1e-30), name


def test_fused_crossing_noise_uses_the_same_normals():
    m = make_model(seed=1, noise_std_s=2e-9)
    m.train()
    x = patterns(64, seed=2)
    ts = []
    for on in (True, False):
        torch.manual_seed(7)
        with native.forcing(on):
            ts.append(m.crossing_us(x).detach())
    assert (ts[0] - ts[1]).abs().max() <= m.lsb_us * (1 + 1e-6)
    assert (ts[0] != ts[1]).float().mean() < 0.02


def test_gradcheck_through_fused_crossing():
    from labkit.model.kernels import Crossing

    m = make_model(seed=2, strong=4.0, quantize=False, clip=None)
    gen = torch.Generator().manual_seed(3)
    x = 0.05 + 0.95 * torch.rand(6, 16, generator=gen, dtype=torch.float64)  # distinct widths, all pulsed
    assert native.usable(x, m.log_i0, m.k_xt)
    params = [p.detach().clone().requires_grad_(True) for p in (m.log_i0, m.k_xt, m.eta, m.t0, m.gain)]
    with native.forcing(True):
        assert torch.autograd.gradcheck(lambda v, *ps: Crossing.apply(v, *ps, m._crossing_cfg()),
                                        [x.requires_grad_(True)] + params)
