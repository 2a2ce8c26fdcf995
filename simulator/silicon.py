"""Second-order array physics the hardware-aware model does not mirror (docs/physics.md).

Bit-line to bit-line coupling, finite word-line slew, a shared source-line resistance,
TDC integral and differential non-linearity and the comparator's finite bandwidth. Each
is a switch of :class:`simulator.chip.Switches` (all off in ``preset=model``, all on in
``preset=silicon``). Their hidden parameters come from their own random stream, so
drawing them never moves another effect's numbers. All units SI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BL_COUPLING_FRACTION = 0.02  # C_BB / C: coupling between adjacent bit lines
WL_SLEW_S = 30e-9  # word-line 0-100 % rise and fall time
SOURCE_LINE_OHM = 2e3  # common source-line resistance
SOURCE_COUPLING = 0.1  # C_source / C_total of the floating gate
TDC_BOW_LSB = 1.0  # systematic INL bow of the TDC (all columns)
TDC_FINE_CODES = 32  # interpolator period of a coarse-counter + fine-delay-line TDC
TDC_FINE_DNL_LSB = 0.15  # rms DNL of the interpolator's delay cells


@dataclass
class SiliconParams:
    """Hidden truth of the second-order effects of one chip."""

    bl_coupling_f: np.ndarray  # (cols - 1,): capacitance between bit lines j and j + 1 (F)
    wl_rise_s: np.ndarray  # (rows,) 0-100 % word-line rise time
    wl_fall_s: np.ndarray  # (rows,) 0-100 % word-line fall time
    source_r_ohm: float  # common source-line resistance (Ohm)
    tdc_bow_lsb: float  # amplitude of the systematic INL bow (LSB)
    tdc_fine_dnl_lsb: np.ndarray  # (cols, TDC_FINE_CODES): DNL of each interpolator bin (LSB, zero mean)


def draw_silicon(seed: int, rows: int, cols: int, capacitance_f: np.ndarray, variability: bool) -> SiliconParams:
    """Draw the second-order parameters of chip ``seed`` (own stream: nothing else moves)."""
    rng = np.random.default_rng([seed, 0x5111])
    var = 1.0 if variability else 0.0
    c_pair = 0.5 * (capacitance_f[:-1] + capacitance_f[1:])
    dnl = np.clip(TDC_FINE_DNL_LSB * rng.standard_normal((cols, TDC_FINE_CODES)), -0.6, 0.6)
    dnl -= dnl.mean(axis=1, keepdims=True)
    return SiliconParams(
        bl_coupling_f=BL_COUPLING_FRACTION * c_pair * (1.0 + var * 0.1 * rng.standard_normal(cols - 1)),
        wl_rise_s=WL_SLEW_S * np.clip(1.0 + var * 0.1 * rng.standard_normal(rows), 0.7, 1.3),
        wl_fall_s=0.8 * WL_SLEW_S * np.clip(1.0 + var * 0.1 * rng.standard_normal(rows), 0.7, 1.3),
        source_r_ohm=SOURCE_LINE_OHM * (1.0 + var * 0.1 * rng.standard_normal()),
        tdc_bow_lsb=TDC_BOW_LSB * (1.0 + var * 0.2 * rng.standard_normal()),
        tdc_fine_dnl_lsb=dnl if variability else 0.0 * dnl,
    )


# ---------------------------------------------------------------- bit-line coupling
def capacitance_matrix(capacitance_f: np.ndarray, coupling_f: np.ndarray) -> np.ndarray:
    """Maxwell capacitance matrix (F) of the floating bit lines: ``Q = M V``."""
    m = np.diag(capacitance_f.astype(float))
    idx = np.arange(len(coupling_f))
    m[idx, idx] += coupling_f
    m[idx + 1, idx + 1] += coupling_f
    m[idx, idx + 1] -= coupling_f
    m[idx + 1, idx] -= coupling_f
    return m


# ---------------------------------------------------------------- word-line slew
def slew_time_constants(p: SiliconParams, slope_n: float, gate_coupling: float, ut: float,
                        read_v: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(tau_rise, tau_fall) per row (s) and Lambda = V_read / V_s.

    On a linear ramp the subthreshold current ``exp(-(V_read - V_WL) / V_s)``, with
    ``V_s = n U_T / kappa_gate``, conducts like a full-current interval of ``tau = t_ramp V_s / V_read``."""
    vs = slope_n * ut / gate_coupling
    lam = read_v / vs
    return p.wl_rise_s / lam, p.wl_fall_s / lam, lam


def effective_widths(d: np.ndarray, p: SiliconParams, tau_r: np.ndarray, tau_f: np.ndarray,
                     lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Full-current-equivalent conduction time (s) of pulses of digital width ``d`` (s),
    ``(B, rows)``, and the fraction of V_read the word line reached (its falling-edge
    coupling scales with it).

    ``d >= t_rise``: ``g = d - t_rise + tau_r (1 - e^-Lambda) + tau_f (1 - e^-Lambda)``.
    ``d < t_rise`` (the line turns round at ``p = d / t_rise`` of V_read):
    ``g = (tau_r + tau_f) e^{-(1 - p) Lambda} (1 - e^{-p Lambda})``: nearly nothing."""
    rise = p.wl_rise_s
    frac = np.minimum(d / rise, 1.0)
    edge = 1.0 - np.exp(-lam)
    long = d - rise + (tau_r + tau_f) * edge
    short = (tau_r + tau_f) * np.exp(-(1.0 - frac) * lam) * -np.expm1(-frac * lam)
    return np.where(d >= rise, long, short), frac


# ---------------------------------------------------------------- source line
def source_line_factor(i_total_a: np.ndarray, r_ohm: float, a_per_v: float) -> np.ndarray:
    """Current factor ``s`` of every cell for an undegenerated total current (A).

    The source rises to ``V_S = R s I_total``, every cell's current falls by
    ``exp(-a V_S)``: ``s = exp(-y s)`` with ``y = a R I_total`` (two Newton steps from
    ``1 / (1 + y)``, error < 1e-9 for y < 0.5)."""
    y = a_per_v * r_ohm * i_total_a
    s = 1.0 / (1.0 + y)
    for _ in range(2):
        e = np.exp(-y * s)
        s = s - (s - e) / (1.0 + y * e)
    return s


# ---------------------------------------------------------------- comparator
def comparator_crossing_s(overdrive_v: np.ndarray, slope_v_per_s: np.ndarray, tau_s: np.ndarray) -> np.ndarray:
    """Crossing time (s) of a single-pole comparator (time constant ``tau``) settled at
    the end of integration, whose input then ramps down at ``slope`` from ``overdrive``
    above threshold: ``S t - S tau (1 - e^{-t/tau}) = overdrive``.

    Large overdrive: ``t = overdrive / S + tau`` (the constant delay of the model form);
    small overdrive: ``t ~ sqrt(2 tau overdrive / S)``, shorter than that."""
    D = np.maximum(overdrive_v, 0.0) / (slope_v_per_s * tau_s)
    u = np.where(D < 1.5, np.sqrt(2.0 * D), D + 1.0)
    for _ in range(4):
        e = np.exp(-u)
        f = u - 1.0 + e - D
        u = np.maximum(u - f / np.maximum(1.0 - e, 1e-12), 0.0)
    return u * tau_s


# ---------------------------------------------------------------- TDC
def tdc_edges_lsb(p: SiliconParams, bits: int, cols: int) -> np.ndarray:
    """Lower edge (in LSB) of codes 1 .. 2**bits - 1 per column, ``(cols, 2**bits - 1)``.

    Edge ``k`` sits at ``k + INL_k``: a systematic bow ``A sin(pi k / N)`` plus the
    repeating pattern of a ``TDC_FINE_CODES``-code interpolator whose bins are
    ``1 + DNL_m`` LSB wide."""
    n = 2**bits
    k = np.arange(1, n)
    bow = p.tdc_bow_lsb * np.sin(np.pi * k / n)
    fine = np.broadcast_to(np.asarray(p.tdc_fine_dnl_lsb, dtype=float), (cols, TDC_FINE_CODES))
    inl_fine = np.cumsum(fine, axis=1)  # INL at the upper edge of interpolator bin m
    periodic = np.concatenate([np.zeros((cols, 1)), inl_fine[:, :-1]], axis=1)  # lower edge of bin m
    return k[None, :] + bow[None, :] + periodic[:, k % TDC_FINE_CODES]


def tdc_codes(t_lsb: np.ndarray, edges_lsb: np.ndarray) -> np.ndarray:
    """TDC codes of times ``(B, cols)`` given in LSB, for per-column code edges."""
    cols, m = edges_lsb.shape
    span = m + 8.0  # edges of column j are shifted by j * span: one sorted array
    shift = np.arange(cols) * span
    flat = (edges_lsb + shift[:, None]).ravel()
    t = np.clip(t_lsb, -1.0, m + 4.0) + shift[None, :]
    return np.searchsorted(flat, t, side="right") - np.arange(cols)[None, :] * m
