"""The droop and readout equations (labkit.model.equations) are the one definition: the
array model's kernels, the tile physics and the fused C kernel all agree with them."""

from __future__ import annotations

import pytest
import torch

from labkit.model import equations, tile_physics, tiles_native
from labkit.model.kernels import Readout
from labkit.model.tile_physics import TileBmm


def test_droop_charge_is_the_closed_form_with_its_small_e_limit():
    z = torch.rand(3, 50, 8, dtype=torch.float64) * 400.0
    e = torch.tensor([0.0, 1e-12, 1e-4, 2e-3, -1e-4, 5e-3, 1e-3, 0.0], dtype=torch.float64).view(1, 1, 8)
    q, y = equations.droop_charge(z, e)
    exact = torch.where(e == 0, z, torch.log1p(e * z) / torch.where(e == 0, 1.0, e))
    assert torch.allclose(q[..., 1], z[..., 1] - 0.5e-12 * z[..., 1] ** 2, rtol=1e-15)  # series
    assert torch.allclose(q, exact, rtol=1e-12, atol=1e-12)
    assert torch.equal(y, (e * z).clamp_min(equations.Y_MIN))


def test_read_times_floors_clips_and_reports_the_hard_clip():
    t = torch.tensor([-0.3, 0.26, 0.74, 1.2, 9.0])
    out, keep = equations.read_times(t.clone(), 0.25, 2.0, True, "hard")
    assert torch.equal(out, torch.tensor([0.0, 0.25, 0.5, 1.0, 2.0]))
    assert keep.tolist() == [False, True, True, True, False]
    assert equations.read_times(t.clone(), 0.25, 2.0, False, None)[1] is None


def test_array_model_readout_uses_the_shared_definition():
    q = torch.rand(2, 40, 4) * 50.0
    t0, gain = torch.full((2, 1, 4), 3.0), torch.full((2, 1, 4), 1.1)
    t = Readout.apply(q, t0, gain, 20.0, 0.01, 4.0, True, "ste", 0.0)
    ref, _ = equations.read_times(t0 - gain / 20.0 * q, 0.01, 4.0, True, "ste")
    assert torch.equal(t, ref)


def _tile_case(seed=0, rt=3, R=16, n=8, N=300):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(rt, R, N, generator=g) * (torch.rand(rt, R, N, generator=g) > 0.2)
    i0t = 5.0 + 40.0 * torch.rand(rt, R, 2 * n, generator=g)
    kx = 0.5 * torch.randn(rt, R, 2 * n, generator=g)
    e = 1e-3 * (1.0 + torch.rand(rt, 1, 2 * n, generator=g))
    t0c = 900.0 + 20.0 * torch.rand(rt, 1, 2 * n, generator=g)
    gc = 1.0 + 0.1 * torch.rand(rt, 1, 2 * n, generator=g)
    return x, i0t, kx, e, t0c, gc


def _by_the_equations(x, i0t, kx, e, t0c, gc, quantize, cmax):
    """The tile readout composed directly from labkit.model.equations (no edge term)."""
    col = lambda v: v.transpose(1, 2)  # noqa: E731  (rt, 1, 2n) -> (rt, 2n, 1)
    z = torch.bmm(i0t.transpose(1, 2), x)
    kt = torch.bmm(kx.transpose(1, 2), torch.sign(x))
    q = equations.droop_charge(z, col(e))[0] + kt
    c, _ = equations.read_times(col(t0c) - col(gc) * q, 1.0, cmax, quantize, "ste")
    s = ((col(t0c) - c) / col(gc)).sum(0)
    half = s.shape[0] // 2
    return (s[:half] - s[half:]).t()


@pytest.mark.parametrize("native", [False, True])
@pytest.mark.parametrize("quantize", [False, True])
def test_tile_physics_and_the_c_kernel_follow_the_shared_equations(native, quantize):
    if native and not tiles_native.available():
        pytest.skip("no C compiler")
    case = _tile_case()
    cmax = 1023.0
    ref = _by_the_equations(*case, quantize, cmax)
    opts = (True, quantize, (0.0, 0.0), cmax, 2, True, False)
    tile_physics.NATIVE["on"] = native
    try:
        with torch.no_grad():
            y = TileBmm.apply(*case, opts)
    finally:
        tile_physics.NATIVE["on"] = True
    diff = (y - ref).abs()
    if not quantize:
        assert float(diff.max()) < 1e-3 * float(ref.abs().max())
    else:  # a last-bit difference may flip a floor: at most one count, rarely
        assert float(diff.max()) <= 3.0 / float(case[5].min())
        assert float((diff > 1e-3).float().mean()) < 0.02
