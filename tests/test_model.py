"""The hardware-aware array model (labkit.model): physics, gradients, batching, persistence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from labkit.backend import Datasheet, Geometry, VmmSettings
from labkit.model import ArrayModel

SHEET = Datasheet()
Q_FS = SHEET.full_scale_charge_c  # 0.2 pC


def make_model(seed=0, n_tiles=None, per_cell=False, rows=16, cols=16, strong=1.0, **switches):
    """A model with chip-like random parameters (float64 unless told otherwise); ``strong``
    scales droop and crosstalk up so that their interaction is far above tolerances."""
    rng = np.random.default_rng(seed)
    lead = () if n_tiles is None else (n_tiles,)
    switches.setdefault("dtype", torch.float64)
    eta_shape = lead + ((rows, cols) if per_cell else (cols,))
    return ArrayModel(
        SHEET, VmmSettings(), Geometry(rows=rows, cols=cols,
                                       pairs=tuple((2 * k, 2 * k + 1) for k in range(cols // 2))),
        n_tiles=n_tiles,
        currents_a=np.exp(rng.uniform(np.log(3e-9), np.log(15e-9), lead + (rows, cols))),
        eta_per_v=strong * rng.uniform(0.35, 0.7, eta_shape),
        crosstalk_c=strong**2 * rng.uniform(-0.4e-15, 1.2e-15, lead + (rows, cols)),
        offset_s=1.0e-6 + 20e-9 * rng.standard_normal(lead + (cols,)),
        gain_s_per_c=(1 + 0.02 * rng.standard_normal(lead + (cols,))) / SHEET.reference_current_a,
        eta_per_cell=per_cell,
        **switches,
    )


def patterns(b, shape=(16,), seed=1, zero_frac=0.4, levels=None):
    """Random inputs with many zeros, some ties, a full-scale and an all-zero sample."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(0.0, 1.0, (b,) + shape)
    x[rng.uniform(size=x.shape) < zero_frac] = 0.0
    if levels:
        x = np.round(x * levels) / levels  # ties on a coarse grid
    x[0] = 1.0
    if b > 1:
        x[1] = 0.0
    return torch.tensor(x)


@pytest.mark.parametrize(
    "kind", ["column_eta", "strong", "per_cell_eta", "per_cell_strong", "tiles", "droop_only", "crosstalk_only"]
)
def test_closed_form_matches_fine_step_reference(kind):
    opts = dict(quantize=False, strong=4.0 if "strong" in kind else 1.0)
    if kind.startswith("per_cell"):
        opts["per_cell"] = True
    if kind == "droop_only":
        opts["crosstalk"] = False
    if kind == "crosstalk_only":
        opts["droop"] = False
    n_tiles = 3 if kind == "tiles" else None
    m = make_model(seed=2, n_tiles=n_tiles, **opts)
    shape = (16,) if n_tiles is None else (n_tiles, 16)
    x = torch.cat([patterns(8, shape, levels=8), patterns(8, shape, seed=5)])
    q = m.charge(x)
    q_ref = m.fine_step_reference(x, steps=200, charge=True)
    assert q.shape == q_ref.shape == x.shape
    assert q.max() > 0.3 * Q_FS  # a real signal, not a trivially small one
    if "strong" in kind:  # the timing of the crosstalk steps matters far above the tolerance
        m.crosstalk = False
        steps_at_end = m.charge(x) + (x > 0).double() @ torch.as_tensor(m.crosstalk_c())
        m.crosstalk = True
        assert (q - steps_at_end).abs().max() > 1e-3 * Q_FS
        if not m.eta_per_cell:  # the cheap approximation is exactly "all steps at the end"
            m.edge_timing = False
            assert torch.allclose(m.charge(x), steps_at_end, rtol=1e-12, atol=0)
            m.edge_timing = True
    err = (q - q_ref).abs().max().item()
    assert err < 1e-4 * Q_FS, f"closed form differs from fine-step RK4 by {err / Q_FS:.2e} of full scale"
    # the crossing times agree too (same readout)
    t, t_ref = m(x), m.fine_step_reference(x, steps=200)
    assert (t - t_ref).abs().max().item() < 1e-4 * SHEET.full_scale_charge_c / SHEET.reference_current_a


SECOND = dict(mix=0.015, width_loss_s=12e-9, source_per_a=6e4, tdc_bow_lsb=0.7)  # second-order terms, chip-sized


def test_gradcheck_inputs_and_every_parameter():
    m = make_model(seed=3, quantize=False, **SECOND)
    rng = np.random.default_rng(4)
    # distinct widths away from 0 so that no finite-difference step crosses an edge or a tie
    x = torch.tensor(rng.permuted(np.tile(np.linspace(0.05, 0.95, 16), (3, 1)), axis=1), requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: m.crossing_us(v), (x,))

    names = [k for k, _ in m.named_parameters()]
    assert set(names) == {"log_i0", "eta", "k_xt", "t0", "gain", "mix", "wloss", "beta", "bow"}
    # zeros (no edge) are fine for parameters; ties of pulsed rows are not (the source line's
    # slots reorder under a finite-difference step of one row's width loss)
    x0 = x.detach().clone()
    x0[:, ::5] = 0.0

    for crosstalk, droop, timing in ((True, True, True), (True, True, False), (False, True, True), (True, False, True)):
        m.crosstalk, m.droop, m.edge_timing = crosstalk, droop, timing
        params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())

        def f(*ps):
            return torch.func.functional_call(m, dict(zip(names, ps)), (x0,)) * 1e6  # us

        assert torch.autograd.gradcheck(f, params, fast_mode=True)


def test_gradcheck_per_cell_eta_small_array():
    geometry = dict(rows=4, cols=4)
    m = make_model(seed=6, per_cell=True, quantize=False, **geometry)
    x = torch.tensor([[0.2, 0.9, 0.5, 0.35], [0.7, 0.1, 0.95, 0.45]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: m.crossing_us(v), (x,))
    names = [k for k, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())
    x0 = torch.tensor([[0.0, 0.9, 0.5, 0.5], [1.0, 0.25, 0.0, 0.6]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda *ps: torch.func.functional_call(m, dict(zip(names, ps)), (x0,)) * 1e6, params, fast_mode=True
    )


def test_gradient_of_droop_coefficient_is_stable_near_zero():
    """eta -> 0 is the linear limit: value and gradient stay finite and continuous."""
    from labkit.model.kernels import LogCompress as _LogCompress

    z = torch.tensor([[[1.0, 50.0, 200.0, 0.0]]], dtype=torch.float64, requires_grad=True)
    for scale in (1e-9, 1e-5, 1e-3, 3e-3):
        e = torch.full((1, 1, 4), scale, dtype=torch.float64, requires_grad=True)
        assert torch.autograd.gradcheck(_LogCompress.apply, (z, e))
    e0 = torch.zeros(1, 1, 4, dtype=torch.float64, requires_grad=True)
    q = _LogCompress.apply(z, e0)
    q.sum().backward()
    assert torch.equal(q.detach(), z.detach())  # e = 0: no droop
    assert torch.allclose(e0.grad, -(z.detach() ** 2).sum(-2, keepdim=True) / 2)  # d/de ln(1+ez)/e at 0


def test_no_droop_no_crosstalk_is_the_ideal_linear_model():
    m = make_model(seed=7, droop=False, crosstalk=False, quantize=False, clip=None)
    x = patterns(64)
    t = m(x).detach()
    assert torch.allclose(t, m.ideal(x), rtol=0, atol=1e-18)
    # and W x + b straight from the SI getters
    i0, T = m.currents_a(), VmmSettings().integration_time_s
    expected = m.offset_s() - m.gain_s_per_c() * ((x.numpy() * T) @ i0)
    np.testing.assert_allclose(t.numpy(), expected, rtol=0, atol=1e-18)
    w, b = m.linear_weights()
    np.testing.assert_allclose((x @ w.T + b).detach().numpy(), expected, rtol=0, atol=1e-18)
    # switching the non-idealities on changes the prediction
    m.droop = m.crosstalk = True
    assert (m(x) - t).abs().max() > 20 * VmmSettings().tdc_lsb_s


def test_droop_compresses_large_outputs():
    m = make_model(seed=8, crosstalk=False, quantize=False)
    x = torch.linspace(0, 1, 21, dtype=torch.float64)[:, None].repeat(1, 16)
    q = m.charge(x)
    m.droop = False
    q_lin = m.charge(x)
    ratio = (q[1:] / q_lin[1:]).detach().numpy()
    assert np.all(ratio < 1.0)
    assert np.all(np.diff(ratio, axis=0) < 0)  # the larger the charge, the stronger the droop
    assert np.all(np.diff(q.detach().numpy(), axis=0) > 0)  # still monotone
    # the closed form: q = ln(1 + eta' q_lin) / eta' with eta' = eta / C
    e = m.eta_per_v() / SHEET.bitline_capacitance_f
    np.testing.assert_allclose(q.detach().numpy(), np.log1p(e * q_lin.detach().numpy()) / e, rtol=1e-12)
    # a realistic amount: a few % at a 0.3 V swing
    full = q_lin[-1].detach().numpy() / SHEET.bitline_capacitance_f  # swing in V without droop
    assert 0.25 < full.max() and 0.01 < (1 - ratio[-1]).mean() < 0.2


def test_crosstalk_makes_same_dot_product_patterns_differ():
    m = make_model(seed=9, quantize=False)
    with torch.no_grad():
        m.log_i0.fill_(np.log(8.0))  # equal currents: the dot product is sum(x)
    one_edge = torch.zeros(1, 16, dtype=torch.float64)
    one_edge[0, 0] = 0.8
    two_edges = torch.zeros(1, 16, dtype=torch.float64)
    two_edges[0, :2] = 0.4
    late, early = torch.zeros(1, 16, dtype=torch.float64), torch.zeros(1, 16, dtype=torch.float64)
    late[0, :2] = torch.tensor([0.7, 0.1])
    early[0, :2] = torch.tensor([0.1, 0.7])  # same widths on the two rows, swapped
    k = m.crosstalk_c()

    # droop alone: a function of the dot product only
    m.crosstalk = False
    assert torch.allclose(m.charge(one_edge), m.charge(two_edges), rtol=1e-13)
    assert torch.allclose(m.charge(late), m.charge(early), rtol=1e-13)

    # crosstalk without droop: one step per falling edge of a pulsed row
    m.crosstalk, m.droop = True, False
    diff = (m.charge(two_edges) - m.charge(one_edge)).detach().numpy()[0]
    np.testing.assert_allclose(diff, k[1], rtol=1e-9)

    # both: the step's timing matters (an earlier step droops more of the later current)
    m.droop = True
    d_late_early = (m.charge(late) - m.charge(early)).detach().numpy()[0]
    assert np.all(np.abs(d_late_early) > 1e-6 * Q_FS)
    ref = (m.fine_step_reference(late, charge=True) - m.fine_step_reference(early, charge=True)).detach().numpy()[0]
    np.testing.assert_allclose(d_late_early, ref, rtol=1e-3, atol=1e-8 * Q_FS)


def test_batch_independence():
    m = make_model(seed=10)  # quantization on
    x = patterns(200, levels=32)
    full = m(x)
    order = torch.randperm(200, generator=torch.Generator().manual_seed(0))
    shuffled = m(x[order])
    assert torch.allclose(shuffled, full[order], rtol=0, atol=1e-15)
    for idx in (slice(0, 1), slice(7, 8), slice(50, 53)):
        assert torch.allclose(m(x[idx]), full[idx], rtol=0, atol=1e-15)
    # leading dims are just batch dims
    assert torch.allclose(m(x.reshape(10, 20, 16)).reshape(200, 16), full, rtol=0, atol=1e-15)


def test_large_batch_in_one_pass_float32():
    m = make_model(seed=11, dtype=torch.float32, quantize=False)
    x = patterns(4096, levels=64).float()
    t = m.crossing_us(x)
    m64 = make_model(seed=11, quantize=False)
    t64 = torch.cat([m64.crossing_us(x[i : i + 512].double()) for i in range(0, 4096, 512)])
    assert t.dtype == torch.float32 and t.shape == (4096, 16)
    assert (t.double() - t64).abs().max() < 1e-4  # us: well below one 1.25 ns TDC step
    ref = m64.fine_step_reference(x[:8].double(), steps=200) * 1e6
    assert (t64[:8] - ref).abs().max() < 1e-5


def test_tiles_equal_separate_arrays():
    tiled = make_model(seed=12, n_tiles=4)
    x = patterns(32, (4, 16), levels=16)
    out = tiled(x)
    assert out.shape == (32, 4, 16)
    d = tiled.to_dict()
    for k in range(4):
        single = ArrayModel(
            currents_a=d["currents_a"][k], eta_per_v=d["eta_per_v"][k], crosstalk_c=d["crosstalk_c"][k],
            offset_s=d["offset_s"][k], gain_s_per_c=d["gain_s_per_c"][k], dtype=torch.float64,
        )
        assert torch.allclose(single(x[:, k]), out[:, k], rtol=0, atol=1e-15)


def test_gradients_reach_every_tile_and_parameter():
    m = make_model(seed=13, n_tiles=3, dtype=torch.float32, **SECOND)
    x = patterns(16, (3, 16)).float().requires_grad_(True)
    # signed outputs are offset-free (t0 cancels in the read-back charge): add the times
    (m.signed(x, i_scale_a=10e-9).square().sum() + m.crossing_us(x).sum()).backward()
    assert x.grad.abs().sum() > 0
    for name, p in m.named_parameters():
        assert torch.isfinite(p.grad).all(), name
        per_tile = p.grad.abs().reshape(3, -1).sum(1)
        assert torch.all(per_tile > 0), name


def test_quantization_and_clip():
    m = make_model(seed=14)
    lsb = VmmSettings().tdc_lsb_s
    x = patterns(64, levels=None)
    t = m(x).detach()
    counts = t / lsb
    assert torch.allclose(counts, counts.round(), atol=1e-6)  # on the TDC grid
    # inputs inside one clock step give the same result
    clock = 1.0 / 2 ** VmmSettings().input_bits
    x2 = (torch.round(x * 2**8) / 2**8 + 0.3 * clock).clamp(0, 1)
    assert torch.equal(m(x2), m(x))
    # straight-through: gradients still flow
    xg = x.clone().requires_grad_(True)
    m(xg).sum().backward()
    assert xg.grad.abs().sum() > 0
    # saturation: a huge charge clips at 0 s, no charge never exceeds full scale
    m.set_si(currents_a=np.full((16, 16), 200e-9))
    assert torch.all(m(torch.ones(2, 16)) == 0)
    m.set_si(offset_s=np.full(16, 5e-6))
    assert torch.allclose(m(torch.zeros(2, 16)), torch.tensor(VmmSettings().tdc_full_scale_s, dtype=torch.float64))
    m.clip = "hard"
    m.zero_grad()
    xg = torch.zeros(2, 16, dtype=torch.float64, requires_grad=True)
    m.crossing_us(xg).sum().backward()
    assert torch.all(m.t0.grad == 0)  # clipped: no gradient with a hard clip


def test_noise_only_in_training_mode():
    m = make_model(seed=15, quantize=False, noise_std_s=2e-9)
    x = patterns(256)
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    torch.manual_seed(0)
    delta = (m(x) - m(x)).detach()
    assert abs(delta.std().item() / np.sqrt(2) - 2e-9) < 0.3e-9


def test_signed_outputs():
    m = make_model(seed=16, quantize=False)
    x = patterns(20)
    q = m.charge(x)
    y = m.signed(x)
    assert y.shape == (20, 8)
    assert torch.allclose(y, q[:, 0::2] - q[:, 1::2], rtol=1e-10, atol=1e-22)
    # ideal switches: normalized output is w x with w = (I+ - I-) / I_scale
    m.droop = m.crosstalk = False
    i0 = m.currents_a()
    w = (i0[:, 0::2] - i0[:, 1::2]) / 10e-9
    np.testing.assert_allclose(m.signed(x, i_scale_a=10e-9).detach().numpy(), x.numpy() @ w, rtol=1e-10)


def test_dict_round_trip_through_npz_without_pickle(tmp_path):
    m = make_model(seed=17, n_tiles=2, per_cell=True, dtype=torch.float32)
    d = m.to_dict()
    assert all(isinstance(v, np.ndarray) and v.dtype != object for v in d.values())
    np.savez(tmp_path / "cal.npz", **d)
    with np.load(tmp_path / "cal.npz", allow_pickle=False) as f:
        m2 = ArrayModel.from_dict(dict(f), dtype=torch.float32)
    x = patterns(8, (2, 16)).float()
    assert torch.equal(m(x), m2(x))
    np.testing.assert_allclose(m2.crosstalk_c(), m.crosstalk_c(), rtol=1e-6)
    assert m2.eta_per_cell and m2.n_tiles == 2
    # state_dict round trip (torch's own format)
    m3 = make_model(seed=99, n_tiles=2, per_cell=True, dtype=torch.float32)
    m3.load_state_dict(m.state_dict())
    assert torch.equal(m3(x), m(x))
    with pytest.raises(ValueError, match="format"):
        ArrayModel.from_dict({**d, "format": np.array("other/9")})


def test_bad_input_is_a_value_error():
    m = make_model(seed=18)
    with pytest.raises(ValueError, match="expected"):
        m(torch.zeros(4, 15))
    with pytest.raises(ValueError, match="expected"):
        make_model(seed=18, n_tiles=2)(torch.zeros(4, 16))
    with pytest.raises(ValueError, match="currents_a"):
        ArrayModel(currents_a=np.full((16, 16), -1e-9))
    with pytest.raises(ValueError, match="shape"):
        ArrayModel(crosstalk_c=np.zeros((3, 3)))
    with pytest.raises(ValueError, match="clip"):
        ArrayModel(clip="soft")
    with pytest.raises(ValueError, match="unknown parameter"):
        m.set_si(currents=np.ones((16, 16)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    m = make_model(seed=22, n_tiles=2)
    x = patterns(64, (2, 16))
    cpu = m(x)
    mc = make_model(seed=22, n_tiles=2, device="cuda")
    out = mc(x.cuda())
    assert out.device.type == "cuda"
    assert torch.allclose(out.cpu(), cpu, rtol=0, atol=1e-15)
    xg = x.cuda().requires_grad_(True)
    mc.signed(xg).sum().backward()
    assert torch.isfinite(xg.grad).all()


def test_model_family_represents_the_emulated_chip():
    """With the emulator's hidden truth mapped onto the model's parameters, the model
    reproduces the emulated physics (noise off): the equations are the right ones."""
    chip_mod = pytest.importorskip("simulator.chip")
    chip = chip_mod.VirtualChip(seed=3, switches=chip_mod.Switches(
        noise=False, program_noise=False, leakage=False, retention=False, disturb=False))
    p, sheet, st = chip.params, chip.sheet, chip.settings
    vread = st.read_voltage_v
    c_nom = sheet.bitline_capacitance_f
    eta = p.eta_per_v * c_nom / p.capacitance_f[None, :]  # model's eta' = eta / C_nominal
    i0 = chip.currents() * np.exp(p.eta_per_v * (p.precharge_v - sheet.precharge_v)[None, :])
    i0 = i0 * -np.expm1(-p.precharge_v / (chip_mod.K_B_OVER_Q * chip.temperature_k))[None, :]
    thr = sheet.threshold_v + p.comparator_offset_v
    offset = (p.precharge_v - thr) * p.capacitance_f / p.reference_current_a + p.comparator_delay_s
    m = ArrayModel(sheet, st, currents_a=i0, eta_per_v=eta, crosstalk_c=p.coupling_f * vread,
                   offset_s=offset, gain_s_per_c=1.0 / p.reference_current_a, eta_per_cell=True,
                   dtype=torch.float64)
    x = patterns(64, levels=None, seed=23)
    x = x * 0.6  # stay clear of saturation
    widths = m.settings.integration_time_s * x.numpy()
    v = chip.integrate(widths)
    q_chip = (p.precharge_v[None, :] - v) * p.capacitance_f[None, :]
    q_model = m.charge(x).detach().numpy()
    assert np.abs(q_model - q_chip).max() < 1e-4 * Q_FS
    t_chip = chip.vmm(widths)
    lsb = st.tdc_lsb_s
    assert np.abs(m(x).detach().numpy() - t_chip).max() <= lsb * 1.001  # same TDC bin, or the next one at an edge
    # the cheaper per-column-eta model (column means) is still close
    m_col = ArrayModel(sheet, st, currents_a=i0, eta_per_v=eta.mean(0), crosstalk_c=p.coupling_f * vread,
                       offset_s=offset, gain_s_per_c=1.0 / p.reference_current_a, dtype=torch.float64)
    err = np.abs(m_col.charge(x).detach().numpy() - q_chip).max()
    assert err < 3e-3 * Q_FS
    # and without the edge timing (crosstalk added after the integration) barely worse
    m_col.edge_timing = False
    err_fast = np.abs(m_col.charge(x).detach().numpy() - q_chip).max()
    assert err_fast < 2e-3 * Q_FS
