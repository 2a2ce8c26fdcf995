"""Analog neural-network layers on 16-row x 8-signed-output tiles of time-domain arrays.

A weight matrix ``W`` (outputs x inputs) is cut into tiles of 16 rows (inputs) by 8
signed outputs; output ``o`` of a tile is the dual-branch column pair
``Geometry.pairs[o % 8] = (plus, minus)`` and ``w = (I+ - I-) / I_scale`` with the
currents of :class:`labkit.program.mapping.WeightWindow` (offset scheme). Per layer:

* **Inputs -> pulse widths.** Activations ``a`` are divided by the layer's
  ``input_scale`` (a buffer, set from data by :func:`input_scales`), clipped to [0, 1]
  (a pulse cannot be longer than T) and quantized to the input clock (``2**input_bits``
  steps of T, straight-through gradient): ``d_i = x_i T``. Signed inputs (a first layer
  fed standardized data, or a layer not preceded by a ReLU) are split into their
  positive and negative parts, run as two VMMs on the same tiles (time-multiplexed)
  and subtracted digitally; ``AnalogConfig(signed_inputs="error")`` refuses them instead.
* **Weights -> currents.** Each output row of ``W`` is divided by its own scale
  ``s_o = max_i |W_oi|`` (a digital gain, so every output uses the full current window).
* **Outputs.** Each tile's columns are read through its comparators and TDC; a column's
  charge is ``q = (t(x=0) - t(x)) / g`` and a signed output is ``q+ - q-`` in units of
  ``I_scale T``, i.e. ``sum_i w_i x_i`` of that tile. Partial sums of the row tiles of a
  layer are added digitally, scaled back by ``s_o * input_scale``, the digital bias is
  added, and (``relu=True``, fused by :func:`convert` when a ReLU follows) the ReLU is
  taken on the resulting time difference: the next layer's pulse is the interval between
  the minus and plus crossings when the plus column crosses first, none otherwise.

**Tile physics** (training; one batched computation for all tiles of a layer, no Python
loop over tiles or samples). Every tile has its own array model parameters
(:class:`TileParams`: drain coefficient per column, crosstalk charge per cell, offset and
readout gain per column), from a chip's calibration (:meth:`TileParams.from_model`) or
sampled from a spread (:class:`ChipSpread`). The equations are those of
:class:`labkit.model.ArrayModel` (PHYSICS.md section 4), removed charge per column::

    Z0 = sum_i I0_i d_i          (cell currents from the weights)
    Kt = sum_{i pulsed} k_i      (crosstalk charge of the falling edges)
    X  = sum_{i, l pulsed} I0_i k_l relu(d_i - d_l)     (edge-order term, see below)
    q  = Kt + ln(1 + e' (Z0 - e' X)) / e',   e' = eta / C   (bit-line droop)

then ``t = t0 - g q`` + readout noise (training only), floored to the TDC LSB, clipped to
the TDC range. ``X`` (current that flows after another row's edge has already stepped
the bit line, so it sees that step through the droop) is the first-order term of the
closed-form slot integral of ArrayModel in ``e' K`` (``e' K`` < 0.05 on these chips);
its pairwise ``relu(d_i - d_l)`` kernel is approximated by the separable fit
``d_i 0.9 (p_l - x_l)`` (least squares over uniform, activation-like and saturating
inputs, constrained to be exact for equal pulses), and ``sum_l k_l x_l`` in it by
``mean_l(k_l) sum_l x_l``, so the term costs no extra matrix product. The whole term
is below one TDC LSB for typical inputs (a few LSB at full scale); tests/test_analog.py
checks the layer against ArrayModel's exact slot integration (about 0.2 LSB rms). Gradients: straight-through for the input
clock, the TDC and the clip; exact for the droop; the edge-order term is a forward-only
correction (its gradient is second order).

Noise: Gaussian readout noise per column (training mode only) of rms
``sqrt(noise_std_s^2 + (noise_relative * output)^2)`` (a floor and a part that grows
with the column's time shift), drawn
from a pre-generated Gaussian bank at random offsets (``torch.randn`` costs more than the
rest of the tile physics on a CPU): one offset per call in torch, one per column and
block of 128 samples in C. Units inside: nA, us, fC (= nA us).

Speed: on the CPU (float32) the whole tile computation runs in C
(:mod:`labkit.model.tiles_native`, ``analog_tiles.c``, built at first use): products,
readout and row-tile sums on blocks of samples held in the cache, the backward pass
likewise, convolution patches copied by runs; the torch code here is the fallback (other
devices and dtypes, no compiler, ``LABKIT_NATIVE=0``) and the reference the tests hold
the kernels to.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from labkit.model import tiles_native as analog_native
from labkit.backend import Datasheet, Geometry, VmmSettings
from labkit.program.mapping import WeightWindow

__all__ = [
    "AnalogConfig", "TileParams", "ChipSpread", "AnalogLinear", "AnalogConv2d", "AnalogLayer",
    "convert", "analog_layers", "tile_plan", "count_tiles", "input_scales", "set_noise", "resample_tiles",
]

_NA, _US, _FC, _FF = 1e-9, 1e-6, 1e-15, 1e-15
_EDGE_A, _EDGE_B = 0.9, -0.9  # relu(u - v) p_v ~ u (A p_v + B v): exact for equal pulses


# ----------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class AnalogConfig:
    """Operating point and switches of the analog layers (SI units).

    ``noise_std_s``: readout noise per column in training (the calibration's measured
    ``noise_std_s`` is about 4 ns on the emulated chips); ``noise_relative``: a further
    part proportional to the column's output (time shift), added in quadrature, as the
    calibration's ``noise_floor_s`` and ``noise_relative`` describe a chip (about 2.5 ns
    and 1.4 % on the emulated ones: cell-current fluctuations grow with the signal). ``jitter``: in training, every
    forward pass perturbs the tile parameters by this relative spread (crosstalk and
    drain coefficient by ``jitter``, readout gain by ``jitter / 5``, cell currents by
    ``jitter / 10``, i.e. programming error), so the network does not rely on the
    calibration being exact. ``headroom``: of the weight
    window (labkit.program.mapping). ``signed_inputs``: ``"split"`` (two VMMs) or ``"error"``.
    """

    integration_time_s: float = VmmSettings.integration_time_s
    input_bits: int = VmmSettings.input_bits
    tdc_bits: int = VmmSettings.tdc_bits
    tdc_lsb_s: float = VmmSettings.tdc_lsb_s
    bitline_capacitance_f: float = Datasheet.bitline_capacitance_f
    reference_current_a: float = Datasheet.reference_current_a
    precharge_v: float = Datasheet.precharge_v
    threshold_v: float = Datasheet.threshold_v
    i_min_a: float = Datasheet.cell_current_range_a[0]
    i_max_limit_a: float = Datasheet.cell_current_range_a[1]
    headroom: float = 0.9
    rows: int = 16
    pairs: tuple[tuple[int, int], ...] = Geometry.pairs
    noise_std_s: float = 4e-9
    noise_relative: float = 0.0
    jitter: float = 0.0
    quantize: bool = True
    droop: bool = True
    crosstalk: bool = True
    edge_order: bool = True
    signed_inputs: str = "split"

    def __post_init__(self):
        if self.signed_inputs not in ("split", "error"):
            raise ValueError(f"signed_inputs={self.signed_inputs!r}; expected 'split' or 'error'")
        if not (0 <= self.jitter < 1):
            raise ValueError(f"jitter={self.jitter!r}; expected a relative spread in [0, 1)")
        if not (self.noise_std_s >= 0 and math.isfinite(self.noise_std_s)):
            raise ValueError(f"noise_std_s={self.noise_std_s!r}; expected a finite value >= 0 s")
        if not (0 <= self.noise_relative < 1):
            raise ValueError(f"noise_relative={self.noise_relative!r}; expected a fraction of the output in [0, 1)")
        if self.rows < 1 or len(self.pairs) < 1:
            raise ValueError(f"rows={self.rows}, pairs={self.pairs}; expected a non-empty tile")
        self.window()  # validates the current window

    @classmethod
    def from_backend(cls, backend, **changes) -> "AnalogConfig":
        """The operating point of ``backend`` (datasheet, settings, geometry)."""
        ds, st, g = backend.datasheet, backend.settings, backend.geometry
        return cls(integration_time_s=st.integration_time_s, input_bits=st.input_bits, tdc_bits=st.tdc_bits,
                   tdc_lsb_s=st.tdc_lsb_s, bitline_capacitance_f=ds.bitline_capacitance_f,
                   reference_current_a=ds.reference_current_a, precharge_v=ds.precharge_v,
                   threshold_v=ds.threshold_v, i_min_a=ds.cell_current_range_a[0],
                   i_max_limit_a=ds.cell_current_range_a[1], rows=g.rows,
                   pairs=tuple(tuple(p) for p in g.pairs), **changes)

    @property
    def outputs_per_tile(self) -> int:
        return len(self.pairs)

    @property
    def cols(self) -> int:
        return 1 + max(max(p) for p in self.pairs)

    def datasheet(self) -> Datasheet:
        return Datasheet(precharge_v=self.precharge_v, threshold_v=self.threshold_v,
                         bitline_capacitance_f=self.bitline_capacitance_f,
                         reference_current_a=self.reference_current_a,
                         cell_current_range_a=(self.i_min_a, self.i_max_limit_a))

    def geometry(self) -> Geometry:
        return Geometry(rows=self.rows, cols=self.cols, pairs=self.pairs)

    def window(self) -> WeightWindow:
        return WeightWindow.from_datasheet(self.datasheet(), self.integration_time_s, self.rows, self.headroom)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["pairs"] = [list(p) for p in self.pairs]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "AnalogConfig":
        d = dict(d)
        if "pairs" in d:
            d["pairs"] = tuple(tuple(int(v) for v in p) for p in d["pairs"])
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


@dataclass
class TileParams:
    """One tile's chip parameters (SI): drain coefficient per column (1/V), crosstalk
    charge per falling edge per cell (C), crossing time at zero charge per column (s),
    readout gain per column (s/C). ``chip_id`` names the chip they describe."""

    eta_per_v: np.ndarray
    crosstalk_c: np.ndarray
    offset_s: np.ndarray
    gain_s_per_c: np.ndarray
    chip_id: str = ""

    @classmethod
    def nominal(cls, config: AnalogConfig = AnalogConfig(), eta_per_v: float = 0.5,
                crosstalk_c: float = 0.5e-15) -> "TileParams":
        """Datasheet values: the same for every column and cell."""
        R, C = config.rows, config.cols
        q_fs = config.bitline_capacitance_f * (config.precharge_v - config.threshold_v)
        return cls(np.full(C, eta_per_v), np.full((R, C), crosstalk_c),
                   np.full(C, q_fs / config.reference_current_a), np.full(C, 1.0 / config.reference_current_a),
                   "nominal")

    @classmethod
    def from_model(cls, model, read_currents_a=None, chip_id: str = "") -> "TileParams":
        """From a fitted :class:`~labkit.model.ArrayModel` (one array, e.g. a chip's
        calibration). ``read_currents_a`` (rows, cols): the cells' read currents when the
        calibration was measured; with them, each column's ratio of fitted to read current
        (capacitance and reference-current spread the fit folds into the currents) moves
        into the readout gain, so that currents programmed by read-verify predict right."""
        eta = np.asarray(model.eta_per_v(), dtype=float)
        if eta.ndim == 2:  # per-cell drain coefficients: the column mean
            eta = eta.mean(axis=0)
        kxt = np.asarray(model.crosstalk_c(), dtype=float)
        gain = np.asarray(model.gain_s_per_c(), dtype=float)
        if eta.ndim != 1 or kxt.ndim != 2:
            raise ValueError("TileParams.from_model expects a single-array ArrayModel (n_tiles=None)")
        if read_currents_a is not None:
            read = np.asarray(read_currents_a, dtype=float)
            fit = model.currents_a()
            if read.shape != fit.shape:
                raise ValueError(f"read_currents_a has shape {read.shape}; expected {fit.shape}")
            rho = np.median(fit / np.maximum(read, 1e-15), axis=0)
            eta, kxt, gain = eta * rho, kxt / rho[None, :], gain * rho
        return cls(eta, kxt, np.asarray(model.offset_s(), dtype=float), gain, chip_id)

    @classmethod
    def from_calibration(cls, cal, read_currents_a=None) -> "TileParams":
        """From a :class:`labkit.calibrate.calibration.Calibration` (or a calibration file path); the
        read currents default to those stored with the calibration."""
        if isinstance(cal, (str, bytes)) or hasattr(cal, "__fspath__"):
            from labkit.calibrate.file import read_calibration

            cal = read_calibration(cal)
        if read_currents_a is None:
            read_currents_a = getattr(cal, "read_currents_a", None)
        return cls.from_model(cal.array_model(), read_currents_a, chip_id=cal.chip_id)


@dataclass(frozen=True)
class ChipSpread:
    """Chip-to-chip spread of the tile parameters, to sample tiles without a calibration.

    Defaults are datasheet-level ranges (PHYSICS.md): drain coefficient 0.3-0.7 /V per
    column, crosstalk 0.2-1.2 fC per edge (coupling 0.1-0.5 fF at 1.8 V word-line swing)
    with a 30 % cell spread, comparator offset of up to tens of mV (offset spread 40 ns at
    0.5 pF / 0.2 uA) plus 4 ns of delay spread, readout gain 3 % per column.
    :meth:`from_tiles` fits the spread to the tiles of measured chips instead.
    """

    eta_range_per_v: tuple[float, float] = (0.3, 0.7)
    crosstalk_mean_c: float = 0.6e-15
    crosstalk_rel_std: float = 0.3
    offset_std_s: float = 40e-9
    gain_rel_std: float = 0.03

    @classmethod
    def from_tiles(cls, tiles: Sequence[TileParams]) -> "ChipSpread":
        """Spread of measured tiles (e.g. calibrations of a few chips)."""
        if not tiles:
            raise ValueError("ChipSpread.from_tiles needs at least one TileParams")
        eta = np.concatenate([t.eta_per_v for t in tiles])
        k = np.concatenate([t.crosstalk_c.ravel() for t in tiles])
        off = np.concatenate([t.offset_s for t in tiles])
        gain = np.concatenate([t.gain_s_per_c for t in tiles])
        lo, hi = np.percentile(eta, [5, 95])
        return cls((float(lo), float(max(hi, lo + 1e-6))), float(np.mean(k)), float(np.std(k) / abs(np.mean(k))),
                   float(np.std(off)), float(np.std(gain) / np.mean(gain)))

    def sample(self, config: AnalogConfig = AnalogConfig(), seed: int = 0) -> TileParams:
        """One tile drawn from the spread (deterministic given ``seed``)."""
        rng = np.random.default_rng([int(seed), 0x711E])
        base = TileParams.nominal(config)
        R, C = config.rows, config.cols
        return TileParams(
            rng.uniform(*self.eta_range_per_v, size=C),
            self.crosstalk_mean_c * np.clip(1 + self.crosstalk_rel_std * rng.standard_normal((R, C)), 0.1, 3.0),
            base.offset_s + self.offset_std_s * rng.standard_normal(C),
            base.gain_s_per_c * (1 + self.gain_rel_std * rng.standard_normal(C)),
            f"spread-{seed}",
        )


# ----------------------------------------------------------------------------- noise bank

_BANK: dict[tuple, torch.Tensor] = {}


def _gaussian(numel: int, dtype, device) -> torch.Tensor:
    """``numel`` standard normal values: a slice at a random offset of a cached bank."""
    key = (dtype, str(device))
    bank = _BANK.get(key)
    if bank is None or bank.numel() < 2 * numel:
        bank = torch.randn(max(2 * numel, 1 << 20), dtype=dtype, device=device)
        _BANK[key] = bank
    start = int(torch.randint(0, bank.numel() - numel + 1, ()))
    return bank[start:start + numel]


# ----------------------------------------------------------------------------- tile physics


_WORK: dict[tuple, torch.Tensor] = {}


def _work(key, shape: tuple, like: torch.Tensor) -> torch.Tensor:
    """A scratch tensor reused across calls (large temporaries: allocating fresh pages for
    them costs more than the arithmetic on a CPU). Never saved for backward."""
    buf = _WORK.get(key)
    n = math.prod(shape)
    if buf is None or buf.numel() < n or buf.dtype != like.dtype or buf.device != like.device:
        buf = torch.empty(n, dtype=like.dtype, device=like.device)
        _WORK[key] = buf
    return buf[:n].view(shape)


def _readout(z, kt, ku, e, t0c, gc, opts):
    """Droop, crosstalk, readout noise, TDC and clip of every column of every row tile,
    and the digital sum of the signed outputs over the row tiles; returns ``(y, m)`` with
    ``m = dq/dZ0`` (for the backward pass; None without droop).

    Tensors are 4-D with the row tiles on dim 1 and the columns (plus then minus) on dim
    ``col``; parameters broadcast against them. ``z``: removed charge without droop or
    crosstalk, ``Z0 = sum_i I0_i d_i`` (fC; used as scratch); ``kt``: crosstalk of the
    pulsed rows (fC); ``ku``: ``(sum_l x_l, mean_l k_l)``, whose product approximates
    ``sum_l k_l x_l`` in the edge-order term (a sub-LSB correction: its row-to-row
    crosstalk spread is second order there).
    ``e``: eta/C (1/fC); ``t0c``: offsets (TDC counts); ``gc``: readout gain (counts per
    fC). ``y``: the row-tile sum of ``q_read(plus) - q_read(minus)`` (fC), dim 1 removed.
    """
    droop, quantize, (noise_counts, noise_rel), cmax, col = opts
    noisy = noise_counts > 0 or noise_rel > 0
    noise = _gaussian(z.numel(), z.dtype, z.device).view_as(z) if noisy else None
    m = None
    c = z
    if droop:
        if ku is not None:  # 1 - e' (A Kt + B Ku)
            sx, kbar = ku
            one = torch.ones((), dtype=z.dtype, device=z.device)
            m = torch.addcmul(one, kt, -_EDGE_A * e).addcmul_(sx, (-_EDGE_B * e) * kbar)
            c.mul_(m)
        w = torch.addcmul(torch.ones((), dtype=z.dtype, device=z.device), c, e, out=_work("w", z.shape, z))
        m = torch.reciprocal(w) if m is None else m.div_(w)  # dq/dZ0
        c = torch.log(w, out=c)
        c = torch.addcmul(t0c, c, -gc / e, out=c)  # counts = t0 - g (ln(1 + e'Z) / e' + Kt)
    else:
        c = torch.addcmul(t0c, c, -gc, out=c)
    if kt is not None:
        c.addcmul_(kt, -gc)
    if noise is not None:  # rms sqrt(floor^2 + (relative g q)^2), g q = t0 - c
        c.add_(noise * torch.sqrt(noise_counts**2 + (noise_rel * (t0c - c)) ** 2))
    if quantize:
        c.floor_()
    c.clamp_(0.0, cmax)
    c = torch.addcmul(t0c / gc, c, -1.0 / gc, out=c)  # charge read back (fC)
    s = c.sum(1)
    half = s.shape[col - 1] // 2
    return s.narrow(col - 1, 0, half) - s.narrow(col - 1, half, half), m


_NATIVE = {"on": True}  # the fused C kernels (labkit.model.tiles_native) where they apply
_NOISE_BANK = 1 << 16  # normal values the C kernel's noise windows come from (256 kB: stays in L2)


class _TileBmm(torch.autograd.Function):
    """Row tiles as batched matrix products: xt (rt, R, N), the inputs in [0, 1] with
    each row's samples contiguous; i0t (rt, R, 2n) currents times T (fC per unit input),
    kx (rt, R, 2n) crosstalk (fC); parameters (rt, 1, 2n). Returns (N, n): the row-tile
    sum of the signed outputs (fC). The products are (rt, 2n, N), so each column's
    samples are contiguous for the readout."""

    @staticmethod
    def forward(ctx, xt, i0t, kx, e, t0c, gc, opts):
        crosstalk, edge = opts[-2:]
        opts = opts[:-2]
        droop, quantize, noise, cmax, _ = opts
        rt, R, N = xt.shape
        n2 = i0t.shape[-1]
        ctx.native = _NATIVE["on"] and analog_native.applies(xt, i0t, kx, e, t0c, gc)
        if ctx.native:
            bank = _gaussian(_NOISE_BANK, xt.dtype, xt.device) if max(noise) > 0 else None
            y, m = analog_native.forward(xt, i0t, kx, e, t0c, gc, kx.mean(1), bank, noise, cmax, droop,
                                         quantize, crosstalk, edge, _EDGE_A, _EDGE_B, any(ctx.needs_input_grad[:2]))
            ctx.save_for_backward(xt, i0t, m)
            return y.t()
        shape = (1, rt, n2, N)
        z = torch.bmm(i0t.transpose(1, 2), xt, out=_work("z", shape, xt)[0])
        kt = ku = None
        if crosstalk:
            p = torch.sign(xt, out=_work("p", xt.shape, xt))
            kt = torch.bmm(kx.transpose(1, 2), p, out=_work("kt", shape, xt)[0]).unsqueeze(0)
            if edge and droop:
                ku = (xt.sum(1).view(1, rt, 1, N), kx.mean(1).view(1, rt, n2, 1))
        col = lambda v: v.transpose(1, 2).unsqueeze(0)  # (rt, 1, 2n) -> (1, rt, 2n, 1)
        y, m = _readout(z.unsqueeze(0), kt, ku, col(e), col(t0c), col(gc), opts)
        ctx.save_for_backward(xt, i0t, m)
        return y[0].t()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):
        xt, i0t, m = ctx.saved_tensors
        if ctx.native:
            gx, gi = analog_native.backward(xt, i0t, m, gy.t(), *ctx.needs_input_grad[:2])
            return gx, gi, None, None, None, None, None
        rt = xt.shape[0]
        g = torch.cat([gy, -gy], dim=-1).t().unsqueeze(0)  # (1, 2n, N)
        if m is not None:
            gz = torch.mul(m[0], g, out=_work("gz", m.shape[1:], m))
        else:
            gz = g.expand(rt, -1, -1)
        gx = gi = None
        if ctx.needs_input_grad[0]:
            gx = torch.bmm(i0t, gz)  # (rt, R, N)
        if ctx.needs_input_grad[1]:
            gi = torch.bmm(gz, xt.transpose(1, 2)).transpose(1, 2)  # (rt, R, 2n)
        return gx, gi, None, None, None, None, None


class _UnfoldT(torch.autograd.Function):
    """Transposed patches (rows, B*Ho*Wo) of ``x`` (B, C, H, W), channel-major like
    ``F.unfold``, zero-padded around ``x`` by ``padding`` and to ``rows`` rows. In C where
    the kernels apply (runs of input rows copied), else one strided torch copy; backward
    by the adjoint (one shifted add per kernel position in torch)."""

    @staticmethod
    def forward(ctx, x, kernel, stride, padding, dilation, out_hw, rows):
        ctx.args = (kernel, stride, padding, dilation, tuple(x.shape), out_hw, rows)
        if _NATIVE["on"] and analog_native.applies(x):
            return analog_native.patches(x, kernel + stride + padding + dilation + out_hw, rows)
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo) = kernel, stride, padding, dilation, out_hw
        if ph or pw:
            x = F.pad(x, (pw, pw, ph, ph))
        B, C, H, W = x.shape
        s = x.stride()
        v = x.as_strided((C, kh, kw, B, Ho, Wo), (s[1], s[2] * dh, s[3] * dw, s[0], s[2] * sh, s[3] * sw))
        K = C * kh * kw
        out = torch.empty(rows, B * Ho * Wo, dtype=x.dtype, device=x.device)
        out[:K].view(C, kh, kw, B, Ho, Wo).copy_(v)
        if rows > K:
            out[K:] = 0.0
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        (kh, kw), (sh, sw), (ph, pw), (dh, dw), (B, C, H, W), (Ho, Wo), rows = ctx.args
        if _NATIVE["on"] and analog_native.applies(g):
            return (analog_native.patches_backward(g, (B, C, H, W), (kh, kw, sh, sw, ph, pw, dh, dw, Ho, Wo), rows),
                    None, None, None, None, None, None)
        K = C * kh * kw
        gp = g[:K].reshape(C, kh, kw, B, Ho, Wo)
        gx = torch.zeros(B, C, H + 2 * ph, W + 2 * pw, dtype=g.dtype, device=g.device)
        gxc = gx.transpose(0, 1)  # (C, B, H, W) view
        for i in range(kh):
            for j in range(kw):
                gxc[:, :, i * dh: i * dh + sh * (Ho - 1) + 1: sh, j * dw: j * dw + sw * (Wo - 1) + 1: sw] += gp[:, i, j]
        return gx[:, :, ph: ph + H, pw: pw + W], None, None, None, None, None, None


def _ste(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + (y - x).detach()


# ----------------------------------------------------------------------------- layers

MeasureFn = Callable[["AnalogLayer", torch.Tensor], torch.Tensor]


class AnalogLayer(nn.Module):
    """Common part of :class:`AnalogLinear` and :class:`AnalogConv2d`: ``K`` inputs
    (rows) by ``n`` outputs on ``rt x ct`` tiles; tile ``(r, c)`` has index ``r*ct + c``.

    Buffers (saved in state dicts): ``input_scale`` (activation that maps to a full
    pulse, T); ``tile_eta`` (tiles, cols) 1/V; ``tile_kxt`` (tiles, rows, cols) fC;
    ``tile_t0`` (tiles, cols) us; ``tile_gain`` (tiles, cols) us/fC.
    ``measure``: when set (chip-in-the-loop), a function ``(layer, x) -> y`` that
    measures the normalized tile outputs of inputs ``x`` (N, K) on chips; the forward
    value is then the measurement and the gradient that of the model.
    """

    def _setup(self, in_rows: int, out: int, relu: bool, config: AnalogConfig, tiles) -> None:
        self.config = config
        self.in_rows, self.out_features_, self.relu = int(in_rows), int(out), bool(relu)
        R, P = config.rows, config.outputs_per_tile
        self.row_tiles = -(-self.in_rows // R)
        self.col_tiles = -(-self.out_features_ // P)
        n = self.row_tiles * self.col_tiles
        params = _tile_list(tiles, n, config)
        self.register_buffer("input_scale", torch.tensor(1.0))
        self.register_buffer("tile_eta", torch.tensor(np.stack([p.eta_per_v for p in params]), dtype=torch.float32))
        self.register_buffer("tile_kxt", torch.tensor(np.stack([p.crosstalk_c for p in params]) / _FC,
                                                      dtype=torch.float32))
        self.register_buffer("tile_t0", torch.tensor(np.stack([p.offset_s for p in params]) / _US, dtype=torch.float32))
        self.register_buffer("tile_gain", torch.tensor(np.stack([p.gain_s_per_c for p in params]) * (_FC / _US),
                                                       dtype=torch.float32))
        self.tile_chips = [p.chip_id for p in params]
        self.measure: MeasureFn | None = None
        o = np.arange(self.out_features_)
        tidx = np.arange(self.row_tiles)[:, None] * self.col_tiles + (o // P)[None, :]
        pairs = np.asarray(config.pairs)
        self.register_buffer("_tidx", torch.tensor(np.concatenate([tidx, tidx], 1)), persistent=False)
        self.register_buffer("_cols", torch.tensor(np.concatenate([pairs[o % P, 0], pairs[o % P, 1]])),
                             persistent=False)
        w = config.window()
        self._i_min_na, self._i_scale_na = w.i_min_a / _NA, w.i_scale_a / _NA
        self._T_us = config.integration_time_s / _US
        self._lsb_us = config.tdc_lsb_s / _US
        self._cmax = float(2**config.tdc_bits - 1)
        self._levels = float(2**config.input_bits)
        self._c_ff = config.bitline_capacitance_f / _FF

    # -------------------------------------------------------------- tiles
    @property
    def n_tiles(self) -> int:
        return self.row_tiles * self.col_tiles

    def tile_params(self, index: int) -> TileParams:
        """Chip parameters (SI) of tile ``index``."""
        return TileParams(self.tile_eta[index].double().numpy().copy(),
                          self.tile_kxt[index].double().numpy() * _FC,
                          self.tile_t0[index].double().numpy() * _US,
                          self.tile_gain[index].double().numpy() * (_US / _FC),
                          self.tile_chips[index] if index < len(self.tile_chips) else "")

    def set_tiles(self, tiles) -> None:
        """Replace every tile's chip parameters (same sources as :func:`convert`)."""
        params = _tile_list(tiles, self.n_tiles, self.config)
        with torch.no_grad():
            self.tile_eta.copy_(torch.tensor(np.stack([p.eta_per_v for p in params])))
            self.tile_kxt.copy_(torch.tensor(np.stack([p.crosstalk_c for p in params]) / _FC))
            self.tile_t0.copy_(torch.tensor(np.stack([p.offset_s for p in params]) / _US))
            self.tile_gain.copy_(torch.tensor(np.stack([p.gain_s_per_c for p in params]) * (_FC / _US)))
        self.tile_chips = [p.chip_id for p in params]

    def weight_matrix(self) -> torch.Tensor:
        """The weights as (outputs, K)."""
        return self.weight.reshape(self.out_features_, -1)

    def output_scales(self) -> torch.Tensor:
        """Digital gain per output: ``max_i |W_oi|`` (detached)."""
        return self.weight_matrix().detach().abs().amax(dim=1).clamp_min(1e-12)

    def normalized_weights(self) -> torch.Tensor:
        """``W / s_o`` in [-1, 1], (outputs, K)."""
        return self.weight_matrix() / self.output_scales()[:, None]

    def tile_weights(self) -> np.ndarray:
        """Normalized weights per tile, ``(rt, ct, rows, outputs_per_tile)`` (zero-padded)."""
        R, P = self.config.rows, self.config.outputs_per_tile
        w = np.zeros((self.row_tiles * R, self.col_tiles * P))
        w[: self.in_rows, : self.out_features_] = self.normalized_weights().detach().double().numpy().T
        return w.reshape(self.row_tiles, R, self.col_tiles, P).transpose(0, 2, 1, 3)

    def _currents_t(self) -> torch.Tensor:
        """Cell currents times T (fC per unit input), (rt, rows, 2n): plus, then minus."""
        R = self.config.rows
        w = self.normalized_weights().t()  # (K, n)
        w = F.pad(w, (0, 0, 0, self.row_tiles * R - self.in_rows)).reshape(self.row_tiles, R, -1)
        both = torch.cat([w.clamp_min(0.0), (-w).clamp_min(0.0)], dim=-1)
        return (self._i_min_na + both * self._i_scale_na) * self._T_us

    def _wide(self):
        """Per row tile, the used columns' parameters: kx (rt, R, 2n), e', t0 (counts),
        gain (counts/fC) (rt, 1, 2n). Cached until a tile buffer changes."""
        bufs = (self.tile_kxt, self.tile_eta, self.tile_t0, self.tile_gain)
        key = tuple((b.data_ptr(), b._version) for b in bufs)
        cached = getattr(self, "_wide_cache", None)
        if cached is not None and cached[0] == key:
            return cached[1]
        t, c = self._tidx, self._cols  # (rt, 2n), (2n,)
        with torch.no_grad():
            kx = self.tile_kxt.transpose(1, 2)[t, c].transpose(1, 2).contiguous()
            e = (self.tile_eta[t, c] / self._c_ff).unsqueeze(1)
            t0c = (self.tile_t0[t, c] / self._lsb_us).unsqueeze(1)
            gc = (self.tile_gain[t, c] / self._lsb_us).unsqueeze(1)
        self._wide_cache = (key, (kx, e, t0c, gc))
        return kx, e, t0c, gc

    def _jittered(self, wide):
        """The wide parameters, perturbed in training when ``config.jitter`` > 0."""
        j = self.config.jitter
        if not (self.training and j > 0):
            return wide
        kx, e, t0c, gc = wide
        return (kx * (1 + j * torch.randn_like(kx)), e * (1 + j * torch.randn_like(e)), t0c,
                gc * (1 + 0.2 * j * torch.randn_like(gc)))

    def _jitter_currents(self, i0t: torch.Tensor) -> torch.Tensor:
        j = self.config.jitter
        if not (self.training and j > 0):
            return i0t
        return i0t * (1 + 0.1 * j * torch.randn_like(i0t))

    # -------------------------------------------------------------- forward pieces
    def pulse_inputs(self, a: torch.Tensor) -> torch.Tensor:
        """Activations -> inputs in [0, 1] on the input clock (straight-through)."""
        x = (a / self.input_scale).clamp(0.0, 1.0)
        if self.config.quantize:
            x = _ste(x, torch.round(x * self._levels) / self._levels)
        return x

    def _opts(self, col: int) -> tuple:
        cfg = self.config
        noise = (cfg.noise_std_s / cfg.tdc_lsb_s, cfg.noise_relative) if self.training else (0.0, 0.0)
        return (cfg.droop, cfg.quantize, noise, self._cmax, col)

    def tile_outputs(self, x: torch.Tensor) -> torch.Tensor:
        """Model of the summed signed tile outputs for inputs ``x`` (N, K) in [0, 1]:
        ``(N, n)`` in units of ``I_scale T`` (``sum_i w_i x_i`` ideally)."""
        pad = self.row_tiles * self.config.rows - x.shape[1]
        return self._tile_outputs_t(F.pad(x.t(), (0, 0, 0, pad)) if pad else x.t().contiguous())

    def _tile_outputs_t(self, xt: torch.Tensor) -> torch.Tensor:
        """:meth:`tile_outputs` from transposed inputs (rt*rows, N), zero-padded."""
        cfg, R = self.config, self.config.rows
        kx, e, t0c, gc = self._jittered(self._wide())
        opts = self._opts(2) + (cfg.crosstalk, cfg.edge_order)
        xt = xt.view(self.row_tiles, R, -1)
        y = _TileBmm.apply(xt, self._jitter_currents(self._currents_t()), kx, e, t0c, gc, opts)
        return y / (self._i_scale_na * self._T_us)

    def _inputs(self, a: torch.Tensor) -> tuple[torch.Tensor, bool]:
        """Activations (any shape) -> pulse inputs; negative ones split (stacked on dim 0)."""
        neg = bool((a < 0).any())
        if neg:
            if self.config.signed_inputs == "error":
                raise ValueError(f"{type(self).__name__} got negative inputs (min {float(a.min()):g}); "
                                 "expected non-negative activations (or signed_inputs='split')")
            a = torch.cat([a.clamp_min(0.0), (-a).clamp_min(0.0)], dim=0)
        return self.pulse_inputs(a), neg

    def _outputs(self, x: torch.Tensor, neg: bool, transposed: bool = False) -> torch.Tensor:
        """(N, K) pulse inputs (or (rt*rows, N) with ``transposed``) -> (N, n) layer
        outputs before bias and ReLU, scaled back."""
        if self.measure is not None:
            xn = x[: self.in_rows].t() if transposed else x
        if self.measure is not None and not (torch.is_grad_enabled() and x.requires_grad or self.weight.requires_grad
                                             and torch.is_grad_enabled()):
            y = self.measure(self, xn.detach()).to(x.dtype)  # inference on chips: no model needed
        else:
            y = self._tile_outputs_t(x) if transposed else self.tile_outputs(x)
            if self.measure is not None:  # chip in the loop: measured value, model gradient
                y = y + (self.measure(self, xn.detach()).to(y.dtype) - y).detach()
        if neg:
            half = y.shape[0] // 2
            y = y[:half] - y[half:]
        return y * (self.output_scales() * self.input_scale)

    def _finish(self, y: torch.Tensor) -> torch.Tensor:
        if self.bias is not None:
            y = y + self.bias
        return torch.relu(y) if self.relu else y


class AnalogLinear(AnalogLayer):
    """``nn.Linear`` on analog tiles (same ``weight`` / ``bias`` parameters)."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, relu: bool = False,
                 config: AnalogConfig = AnalogConfig(), tiles=None):
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None
        nn.Linear.reset_parameters(self)
        self._setup(in_features, out_features, relu, config, tiles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        xq, neg = self._inputs(x.reshape(-1, self.in_features))
        return self._finish(self._outputs(xq, neg)).reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, relu={self.relu}, "
                f"tiles={self.row_tiles}x{self.col_tiles}")


class AnalogConv2d(AnalogLayer):
    """``nn.Conv2d`` (groups=1) on analog tiles: the input is unfolded into patches of
    ``in_channels * kh * kw`` rows (channel-major, as ``F.unfold``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 bias: bool = True, *, relu: bool = False, config: AnalogConfig = AnalogConfig(), tiles=None):
        super().__init__()
        pair = nn.modules.utils._pair
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride = pair(kernel_size), pair(stride)
        self.padding, self.dilation = pair(padding), pair(dilation)
        if isinstance(padding, str):
            raise ValueError(f"padding={padding!r}; AnalogConv2d expects numeric padding")
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, *self.kernel_size))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        nn.Conv2d.reset_parameters(self)
        k = in_channels * self.kernel_size[0] * self.kernel_size[1]
        self._setup(k, out_channels, relu, config, tiles)

    # nn.Conv2d.reset_parameters reads these
    groups = 1
    transposed = False

    def unfold(self, x: torch.Tensor, rows: int | None = None) -> tuple[torch.Tensor, tuple[int, int, int]]:
        """(B, C, H, W) -> patches (B*Ho*Wo, C*kh*kw) (channel-major like ``F.unfold``), or
        with ``rows`` transposed and zero-padded: (rows, B*Ho*Wo); and (B, Ho, Wo)."""
        (kh, kw), (sh, sw), (ph, pw), (dh, dw) = self.kernel_size, self.stride, self.padding, self.dilation
        B, C, H, W = x.shape
        Ho, Wo = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        args = ((kh, kw), (sh, sw), (ph, pw), (dh, dw), (Ho, Wo))
        if rows is None:  # (N, K), as F.unfold's columns
            return _UnfoldT.apply(x, *args, self.in_rows).t(), (B, Ho, Wo)
        return _UnfoldT.apply(x, *args, rows), (B, Ho, Wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"input has shape {tuple(x.shape)}; expected (B, {self.in_channels}, H, W)")
        xq, neg = self._inputs(x)  # quantize the map, not the (larger) patches
        patches_t, (B, Ho, Wo) = self.unfold(xq, self.row_tiles * self.config.rows)  # (rt*rows, N)
        y = self._finish(self._outputs(patches_t, neg, transposed=True))
        return y.reshape(-1, Ho, Wo, self.out_channels).permute(0, 3, 1, 2)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, relu={self.relu}, tiles={self.row_tiles}x{self.col_tiles}")


# ----------------------------------------------------------------------------- conversion


def _tile_list(tiles, n: int, config: AnalogConfig) -> list[TileParams]:
    """``n`` TileParams from a source: None (nominal), ChipSpread (sampled, seeds
    0..n-1), one TileParams / ArrayModel (for all), a sequence (exactly ``n``), or an
    iterator (takes ``n``)."""
    def is_model(t) -> bool:  # an ArrayModel (duck-typed: labkit.model is optional here)
        return all(hasattr(t, a) for a in ("eta_per_v", "crosstalk_c", "offset_s", "gain_s_per_c"))

    def one(t):
        if isinstance(t, TileParams):
            return t
        if is_model(t):
            return TileParams.from_model(t)
        raise ValueError(f"tile source {t!r}; expected TileParams or ArrayModel")

    if tiles is None:
        return [TileParams.nominal(config)] * n
    if isinstance(tiles, ChipSpread):
        return [tiles.sample(config, seed=i) for i in range(n)]
    if isinstance(tiles, TileParams) or is_model(tiles):
        return [one(tiles)] * n
    if isinstance(tiles, Iterator):
        out = []
        for _ in range(n):
            try:
                out.append(one(next(tiles)))
            except StopIteration:
                raise ValueError("tile source ran out of tiles") from None
        return out
    tiles = list(tiles)
    if len(tiles) != n:
        raise ValueError(f"{len(tiles)} tiles given for a layer of {n} tiles")
    return [one(t) for t in tiles]


def count_tiles(module: nn.Module, config: AnalogConfig = AnalogConfig()) -> int:
    """Tiles a Linear / Conv2d (or an analog layer) needs."""
    R, P = config.rows, config.outputs_per_tile
    if isinstance(module, AnalogLayer):
        return module.n_tiles
    if isinstance(module, nn.Linear):
        k, n = module.in_features, module.out_features
    elif isinstance(module, nn.Conv2d):
        k, n = module.in_channels * module.kernel_size[0] * module.kernel_size[1], module.out_channels
    else:
        raise ValueError(f"{type(module).__name__} is not a Linear or Conv2d layer")
    return -(-k // R) * -(-n // P)


def _convertible(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, m) for name, m in model.named_modules()
            if isinstance(m, (nn.Linear, nn.Conv2d, AnalogLayer)) and name]


def tile_plan(model: nn.Module, config: AnalogConfig = AnalogConfig()) -> list[tuple[str, int]]:
    """``(layer name, tiles)`` in network order: the order tiles (and chips) are assigned."""
    return [(name, count_tiles(m, config)) for name, m in _convertible(model)]


def _set_module(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def convert(model: nn.Module, tiles=None, config: AnalogConfig = AnalogConfig(),
            scales: dict[str, float] | None = None, fuse_relu: bool = True) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` / ``nn.Conv2d`` replaced by its analog
    counterpart (weights and biases copied).

    ``tiles``: the chip parameters of the tiles, in :func:`tile_plan` order: None
    (nominal datasheet values), a :class:`ChipSpread` (each tile sampled with its own
    seed), one :class:`TileParams` / ArrayModel for every tile, or a sequence with one
    per tile in network order. ``scales``: input scale per layer name (from
    :func:`input_scales`). ``fuse_relu``: a ReLU that directly follows a layer inside an
    ``nn.Sequential`` becomes that layer's time-domain ReLU (replaced by ``nn.Identity``
    so parameter names stay those of the original model).
    """
    new = copy.deepcopy(model)
    plan = _convertible(new)
    total = sum(count_tiles(m, config) for _, m in plan)
    if isinstance(tiles, (list, tuple)) and len(tiles) != total:
        raise ValueError(f"{len(tiles)} tiles given; the network needs {total} ({tile_plan(model, config)})")
    if isinstance(tiles, ChipSpread):
        spread = tiles
        tiles = iter([spread.sample(config, seed=i) for i in range(total)])
    elif isinstance(tiles, (list, tuple)):
        tiles = iter(tiles)
    for name, m in plan:
        if isinstance(m, AnalogLayer):
            continue
        relu = False
        parent_name, _, child = name.rpartition(".")
        parent = new.get_submodule(parent_name) if parent_name else new
        if fuse_relu and isinstance(parent, nn.Sequential):
            keys = list(parent._modules)
            i = keys.index(child)
            if i + 1 < len(keys) and isinstance(parent._modules[keys[i + 1]], nn.ReLU):
                relu = True
                parent._modules[keys[i + 1]] = nn.Identity()
        if isinstance(m, nn.Conv2d):
            if m.groups != 1 or isinstance(m.padding, str) or m.padding_mode != "zeros":
                raise ValueError(f"layer {name}: only groups=1 convolutions with numeric zero padding convert")
            a = AnalogConv2d(m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation,
                             m.bias is not None, relu=relu, config=config, tiles=tiles)
        else:
            a = AnalogLinear(m.in_features, m.out_features, m.bias is not None, relu=relu, config=config,
                             tiles=tiles)
        with torch.no_grad():
            a.weight.copy_(m.weight)
            if m.bias is not None:
                a.bias.copy_(m.bias)
        if scales and name in scales:
            a.input_scale.fill_(float(scales[name]))
        _set_module(new, name, a)
    return new


def analog_layers(model: nn.Module) -> list[tuple[str, AnalogLayer]]:
    """``(name, layer)`` of every analog layer, in network (tile) order."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, AnalogLayer)]


@torch.no_grad()
def input_scales(model: nn.Module, x: torch.Tensor, percentile: float = 99.9,
                 batch_size: int = 256) -> dict[str, float]:
    """Input scale per Linear / Conv2d (or analog) layer of ``model``: the ``percentile``
    of the absolute activations entering it over the examples ``x`` (a tensor batch)."""
    if not 0 < percentile <= 100:
        raise ValueError(f"percentile={percentile}; expected in (0, 100]")
    layers = _convertible(model)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n, _ in layers}
    hooks = []
    for name, m in layers:
        def hook(mod, inp, out, name=name):
            a = inp[0].detach().abs().flatten()
            if a.numel() > 200_000:
                a = a[torch.randint(0, a.numel(), (200_000,))]
            seen[name].append(a)
        hooks.append(m.register_forward_hook(hook))
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    out = {}
    for name, parts in seen.items():
        a = torch.cat(parts).float()
        v = float(torch.quantile(a[:1_000_000], percentile / 100.0)) if a.numel() else 1.0
        out[name] = v if v > 0 else 1.0
    return out


def set_noise(model: nn.Module, noise_std_s: float, relative: float | None = None) -> None:
    """Change the training readout noise (floor in s; the part relative to the output,
    unchanged when None) of every analog layer of ``model``."""
    for _, m in analog_layers(model):
        change = {"noise_std_s": float(noise_std_s)}
        if relative is not None:
            change["noise_relative"] = float(relative)
        m.config = dataclasses.replace(m.config, **change)


def resample_tiles(model: nn.Module, spread: ChipSpread, seed: int) -> None:
    """Give every tile of ``model`` new parameters drawn from ``spread`` (hardware-aware
    training for chips that are not calibrated: a new draw per epoch makes the network
    robust to the chip-to-chip spread instead of fitting one draw)."""
    i = 0
    for _, m in analog_layers(model):
        m.set_tiles([spread.sample(m.config, seed=int(seed) * 1_000_003 + i + k) for k in range(m.n_tiles)])
        i += m.n_tiles
