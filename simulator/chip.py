"""Virtual silicon: the hidden physics of one emulated 16x16 floating-gate array.

Each seed draws a different chip (docs/physics.md): bit-line capacitances,
per-cell drain coefficients and subthreshold slopes, a layout-dependent crosstalk map
(systematic gradient, mirrored-row and shielded-column pattern, plus a random part),
comparator offsets and delays, programming efficiencies, retention and telegraph noise.
Nothing here is visible to labkit's model: it must learn the chip from measurements.

Integration of one VMM is the emulator's own event-driven computation: the pulse
widths are sorted, between two falling edges the active rows are constant and the
bit-line ODE ``C dV/dt = -sum_i I_ij(V) - I_leak`` is integrated by RK4 with per-cell
drain coefficients (a Taylor expansion of the per-cell spread around the column mean,
exact to ~1e-6); each falling edge couples its crosstalk step onto every bit line.
The second-order effects (``Switches.SECOND_ORDER``, docs/physics.md section 2) live in
``silicon.py`` and ``drift.py``; with any array effect on, the integration runs in C
(``integrate.c``). All units SI.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from labkit.backend import Datasheet, VmmSettings

from .drift import Drift
from .silicon import (SOURCE_COUPLING, capacitance_matrix, comparator_crossing_s, draw_silicon, effective_widths,
                      slew_time_constants, source_line_factor, tdc_codes, tdc_edges_lsb)

K_B_OVER_Q = 8.617333262e-5  # V/K
Q_E = 1.602176634e-19  # C
T_NOMINAL = 300.0  # K
READ_REFERENCE_V = 1.8  # gate voltage at which overdrive_v is defined


@dataclass(frozen=True)
class Switches:
    """Which non-idealities the chip has (docs/physics.md).

    The first eight are the model's own form (on by default); the rest are the
    second-order physics the model does not mirror (off by default, all on in
    ``preset=silicon``)."""

    noise: bool = True  # telegraph, shot, kT/C, comparator jitter
    crosstalk: bool = True
    droop: bool = True  # drain dependence of the cell current
    variability: bool = True  # cell-to-cell and column-to-column spreads
    program_noise: bool = True  # granular injection and cycle-to-cycle efficiency
    disturb: bool = True  # half-select disturb
    leakage: bool = True  # off-cell leakage
    retention: bool = True  # log-time drift of the floating gate
    bl_coupling: bool = False  # capacitance between adjacent bit lines
    wl_slew: bool = False  # finite word-line rise and fall times
    source_line: bool = False  # common source-line resistance (IR drop of the total current)
    tdc_inl: bool = False  # TDC integral and differential non-linearity
    comparator: bool = False  # finite comparator bandwidth: delay depends on the overdrive
    flicker: bool = False  # 1/f noise of the cells on the virtual clock
    relaxation: bool = False  # relaxation of trapped charge in the seconds-hours after programming

    SECOND_ORDER = ("bl_coupling", "wl_slew", "source_line", "tdc_inl", "comparator", "flicker", "relaxation")

    @classmethod
    def preset(cls, name: str) -> "Switches":
        """``default`` and ``silicon``: every effect on (the chip a ``sim://`` URI opens);
        ``model``: the model's own form (the second-order physics off); ``ideal``: none;
        ``quiet``: the model's form without noise; ``linear``: without droop or crosstalk."""
        presets = {
            "default": cls(**{name: True for name in cls.SECOND_ORDER}),
            "model": cls(),
            "silicon": cls(**{name: True for name in cls.SECOND_ORDER}),
            "ideal": cls(**{f.name: False for f in dataclasses.fields(cls)}),
            "quiet": cls(noise=False, program_noise=False),
            "linear": cls(crosstalk=False, droop=False),
        }
        if name not in presets:
            raise ValueError(f"unknown chip preset {name!r}; expected one of {sorted(presets)}")
        return presets[name]


@dataclass
class ChipParams:
    """Hidden truth of one chip (arrays are (rows, cols) unless noted)."""

    capacitance_f: np.ndarray  # (cols,)
    precharge_v: np.ndarray  # (cols,)
    eta_per_v: np.ndarray  # drain coefficient per cell
    slope_n: np.ndarray  # subthreshold slope factor per cell
    i_spec_a: np.ndarray  # specific current per cell
    coupling_f: np.ndarray  # WL->BL crosstalk capacitance per cell
    comparator_offset_v: np.ndarray  # (cols,)
    comparator_delay_s: np.ndarray  # (cols,)
    reference_current_a: np.ndarray  # (cols,)
    leakage_a: np.ndarray  # off-cell leakage per cell
    program_efficiency: np.ndarray  # relative injection efficiency per cell
    retention_v_per_decade: np.ndarray
    rtn_rel: np.ndarray  # relative telegraph-noise amplitude at 1 nA per cell
    gate_coupling: float = 0.7  # control gate -> floating gate
    erased_overdrive_v: float = 0.05
    comparator_jitter_v: float = 0.4e-3
    fg_capacitance_f: float = 4e-15
    disturb_fraction: float = 0.004  # half-selected cells move this fraction of the pulse step


def draw_params(seed: int, geometry_rows: int, geometry_cols: int, switches: Switches, sheet: Datasheet) -> ChipParams:
    """Draw one chip's hidden parameters from ``seed``."""
    rng = np.random.default_rng([seed, 0xC41])
    R, C = geometry_rows, geometry_cols
    var = 1.0 if switches.variability else 0.0
    rows = np.arange(R)[:, None] / (R - 1)
    cols = np.arange(C)[None, :] / (C - 1)

    def spread(shape, rel):
        return 1.0 + var * rel * rng.standard_normal(shape)

    eta_col = rng.uniform(0.35, 0.7, size=C) if var else np.full(C, 0.5)
    eta = eta_col[None, :] * np.clip(spread((R, C), 0.15), 0.5, 1.5)
    # Layout-dependent coupling: grows away from the WL drivers (along the row),
    # mirrored row pairs differ, every fourth column is shielded, plus a random part.
    base = rng.uniform(0.2, 0.35) * 1e-15
    gradient = 1.0 + 0.8 * cols + 0.3 * rows
    mirror = np.where(np.arange(R)[:, None] % 2 == 0, 1.15, 0.85)
    shield = np.where(np.arange(C)[None, :] % 4 == 3, 0.6, 1.0)
    coupling = base * gradient * mirror * shield * np.clip(1.0 + 0.1 * rng.standard_normal((R, C)), 0.7, 1.3)
    return ChipParams(
        capacitance_f=sheet.bitline_capacitance_f * spread(C, 0.05),
        precharge_v=sheet.precharge_v + var * 0.005 * rng.standard_normal(C),
        eta_per_v=eta,
        slope_n=np.clip(1.4 + var * 0.1 * rng.standard_normal((R, C)), 1.2, 1.6),
        i_spec_a=sheet.erased_current_a * np.clip(spread((R, C), 0.1), 0.6, 1.4),
        coupling_f=coupling,
        comparator_offset_v=var * 0.015 * rng.standard_normal(C),
        comparator_delay_s=(12e-9 + var * 4e-9 * rng.standard_normal(C)).clip(2e-9),
        reference_current_a=sheet.reference_current_a * spread(C, 0.02),
        leakage_a=2e-12 * rng.lognormal(0.0, 0.5 * var + 1e-9, size=(R, C)),
        program_efficiency=np.clip(rng.lognormal(0.0, 0.25 * var + 1e-9, size=(R, C)), 0.3, 3.0),
        retention_v_per_decade=1e-3 * np.clip(rng.lognormal(np.log(0.5), 0.5 * var + 1e-9, size=(R, C)), 0.1, 2.0),
        rtn_rel=0.14 * rng.lognormal(0.0, 0.4 * var + 1e-9, size=(R, C)),
    )


class VirtualChip:
    """State and physics of one emulated array (hidden truth + floating-gate state)."""

    def __init__(self, seed: int = 0, switches: Switches = Switches(), rows: int = 16, cols: int = 16,
                 datasheet: Datasheet = Datasheet()):
        self.seed, self.switches, self.rows, self.cols, self.sheet = seed, switches, rows, cols, datasheet
        self.params = draw_params(seed, rows, cols, switches, datasheet)
        self.si = draw_silicon(seed, rows, cols, self.params.capacitance_f, switches.variability)
        self.drift = Drift(seed, rows, cols, switches.variability)
        self.noise_rng = np.random.default_rng([seed, 0x5EED])
        init = np.random.default_rng([seed, 0x1A7])
        # As shipped: cells log-uniform in 3-15 nA at the nominal read point.
        # overdrive_v is V_FG - V_th (V) at 300 K and READ_REFERENCE_V.
        shipped_a = np.exp(init.uniform(np.log(3e-9), np.log(15e-9), size=(rows, cols)))
        ut = K_B_OVER_Q * T_NOMINAL
        self.overdrive_v = 2.0 * self.params.slope_n * ut * np.log(np.expm1(np.sqrt(shipped_a / self.params.i_spec_a)))
        self.time_s = 0.0  # virtual clock
        self.programmed_at_s = np.zeros((rows, cols))
        self.temperature_k = T_NOMINAL
        self.settings = VmmSettings()
        self.pulses_applied = 0
        self.substeps = 1  # RK4 steps per slot (error < 1e-5 of full scale, see the benchmark)
        self.native = True  # second-order integration in C where it builds (same physics as numpy)
        self._cache: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------ cell currents
    def _invalidate(self) -> None:
        self._cache.clear()

    def effective_overdrive_v(self, gate_v: float) -> np.ndarray:
        """Floating-gate overdrive (V) including read voltage, temperature and retention."""
        p, s = self.params, self.switches
        v = self.overdrive_v + p.gate_coupling * (gate_v - READ_REFERENCE_V)
        v = v + 1.5e-3 * (self.temperature_k - T_NOMINAL)  # V_th falls ~1.5 mV/K
        if s.retention:
            age = np.maximum(self.time_s - self.programmed_at_s, 0.0)
            hot = np.exp((self.temperature_k - T_NOMINAL) / 30.0)
            v = v - p.retention_v_per_decade * hot * np.log10(1.0 + age / 1.0)
        if s.flicker or s.relaxation:
            v = v + self.drift.shift_v(s.flicker, s.relaxation)
        return v

    def current_at_gate(self, gate_v: float) -> np.ndarray:
        """EKV drain current I0 (A) of every cell at gate voltage ``gate_v``, drain at V_D0."""
        p = self.params
        ut = K_B_OVER_Q * self.temperature_k
        x = self.effective_overdrive_v(gate_v) / (p.slope_n * ut)
        return p.i_spec_a * np.logaddexp(0.0, x / 2.0) ** 2

    def currents(self) -> np.ndarray:
        """I0 (A) of every cell at the configured read voltage (cached)."""
        if "i0" not in self._cache:
            self._cache["i0"] = self.current_at_gate(self.settings.read_voltage_v)
        return self._cache["i0"]

    def _drain(self, v: np.ndarray) -> np.ndarray:
        ut = K_B_OVER_Q * self.temperature_k
        return -np.expm1(-np.maximum(v, 0.0) / ut)

    def read_currents(self, cells: np.ndarray) -> np.ndarray:
        """Read currents (A) of cells at precharge drain voltage, with read noise."""
        i0 = self.currents()[cells[:, 0], cells[:, 1]]
        if self.switches.noise:
            rel = self.params.rtn_rel[cells[:, 0], cells[:, 1]] * np.sqrt(1e-9 / np.maximum(i0, 1e-12))
            i0 = i0 * (1.0 + np.clip(rel, 1e-3, 0.1) * 0.05 * self.noise_rng.standard_normal(len(i0)))
        return i0

    # ------------------------------------------------------------ VMM integration
    def _taylor_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(eta_mean per column, M (rows, 4*cols)): I0 * delta^k / k! for k = 0..3."""
        if "taylor" not in self._cache:
            i0 = self.currents()
            if self.switches.droop:
                eta = self.params.eta_per_v
                mean = eta.mean(axis=0)
                delta = eta - mean
            else:
                mean, delta = np.zeros(self.cols), np.zeros_like(i0)
            m = np.concatenate([i0 * delta**k / f for k, f in enumerate((1, 1, 2, 6))], axis=1)
            self._cache["taylor"] = (mean, m)
        return self._cache["taylor"]

    def _silicon_consts(self) -> dict:
        """Cached constants of the second-order array effects at the operating point."""
        if "silicon" not in self._cache:
            p, si, s, st = self.params, self.si, self.switches, self.settings
            ut = K_B_OVER_Q * self.temperature_k
            out: dict = {}
            m = capacitance_matrix(p.capacitance_f, si.bl_coupling_f if s.bl_coupling else 0.0 * si.bl_coupling_f)
            out["m_inv_t"] = np.linalg.inv(m).T  # rate (B, C) = -(I + leak) @ m_inv_t
            out["ramp_v_per_s"] = np.linalg.solve(m, p.reference_current_a)  # readout slopes (V/s)
            if s.wl_slew:
                n_row = p.slope_n.mean(axis=1)
                out["slew"] = slew_time_constants(si, n_row, p.gate_coupling, ut, st.read_voltage_v)
            out["source_a_per_v"] = (1.0 - SOURCE_COUPLING / p.slope_n.mean()) / ut
            self._cache["silicon"] = out
        return self._cache["silicon"]

    def integrate(self, widths_s: np.ndarray, record_col: int | None = None, substeps: int | None = None):
        """Bit-line voltages (V) at the end of integration, ``(B, cols)``.

        With ``record_col`` also returns (times, voltages) of that column for sample 0.
        With every second-order switch off this is exactly the model-form chip."""
        p, s, st = self.params, self.switches, self.settings
        T = st.integration_time_s
        clock = T / 2**st.input_bits
        d = np.clip(np.round(widths_s / clock) * clock, 0.0, T)
        B, R = d.shape
        second = s.bl_coupling or s.wl_slew or s.source_line
        sc = self._silicon_consts() if second else None
        edge_frac = None
        if s.wl_slew:
            tau_r, tau_f, lam = sc["slew"]
            d, edge_frac = effective_widths(d, self.si, tau_r, tau_f, lam)  # conduction time (s)
        n_sub = substeps or self.substeps
        if second and record_col is None and self.native:
            v = self._integrate_native(d, edge_frac, n_sub, sc)
            if v is not None:
                return v
        order = np.argsort(d, axis=1, kind="stable")
        ds = np.take_along_axis(d, order, axis=1)
        bounds = np.concatenate([np.zeros((B, 1)), ds, np.full((B, 1), T)], axis=1)  # (B, R+2)
        rank = np.argsort(order, axis=1)
        mask = (rank[:, None, :] >= np.arange(R + 1)[None, :, None]).astype(float)  # (B, R+1, R)
        eta_mean, m = self._taylor_matrix()
        coeff = (mask.reshape(-1, R) @ m).reshape(B, R + 1, 4, self.cols)
        cap = p.capacitance_f
        v0_nominal = self.sheet.precharge_v
        leak = p.leakage_a.sum(axis=0) if s.leakage else 0.0
        droop = s.droop
        m_inv_t = sc["m_inv_t"] if second and s.bl_coupling else None
        source = (self.si.source_r_ohm, sc["source_a_per_v"]) if second and s.source_line else None

        def rate(v, c):
            u = v - v0_nominal
            poly = c[:, 0] + u * (c[:, 1] + u * (c[:, 2] + u * c[:, 3]))
            i = poly * np.exp(eta_mean * u) * self._drain(v) if droop else poly
            if source is not None:
                i = i * source_line_factor(i.sum(axis=1, keepdims=True), *source)
            if m_inv_t is not None:
                return -(i + leak) @ m_inv_t
            return -(i + leak) / cap

        v = np.broadcast_to(p.precharge_v, (B, self.cols)).copy()
        if s.noise:
            v += np.sqrt(K_B_OVER_Q * Q_E * self.temperature_k / cap) * self.noise_rng.standard_normal(v.shape)
        step_v = None
        if s.crosstalk:
            step_v = p.coupling_f * st.read_voltage_v / cap  # (R, C)
            if m_inv_t is not None:
                step_v = (p.coupling_f * st.read_voltage_v) @ m_inv_t
        trace_t, trace_v = [0.0], [v[0, record_col]] if record_col is not None else None
        for k in range(R + 1):
            c = coeff[:, k]
            h = ((bounds[:, k + 1] - bounds[:, k]) / n_sub)[:, None]
            for _ in range(n_sub):
                k1 = rate(v, c)
                k2 = rate(v + 0.5 * h * k1, c)
                k3 = rate(v + 0.5 * h * k2, c)
                k4 = rate(v + h * k3, c)
                v = np.maximum(v + h / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4), 0.0)
                if record_col is not None:
                    trace_t.append(trace_t[-1] + h[0, 0])
                    trace_v.append(v[0, record_col])
            if k < R and step_v is not None:
                falling = order[:, k]
                pulsed = (ds[:, k] > 0)[:, None]
                if edge_frac is not None:  # the line fell from the level it reached
                    pulsed = pulsed * np.take_along_axis(edge_frac, falling[:, None], axis=1)
                v = np.maximum(v - pulsed * step_v[falling], 0.0)
                if record_col is not None:
                    trace_t.append(trace_t[-1])
                    trace_v.append(v[0, record_col])
        if s.noise:
            noise_q = self._charge_noise(d)
            v -= (noise_q @ m_inv_t) if m_inv_t is not None else noise_q / cap
        if record_col is not None:
            return v, (np.array(trace_t), np.array(trace_v))
        return v

    def _integrate_native(self, d, edge_frac, n_sub, sc):
        """:meth:`integrate` in C (same physics and random draws), or None without it."""
        from . import native_integrate

        if not native_integrate.available():
            return None
        p, s, st = self.params, self.switches, self.settings
        cap = p.capacitance_f
        B = d.shape[0]
        v = np.broadcast_to(p.precharge_v, (B, self.cols)).copy()
        if s.noise:
            v += np.sqrt(K_B_OVER_Q * Q_E * self.temperature_k / cap) * self.noise_rng.standard_normal(v.shape)
        eta_mean, m = self._taylor_matrix()
        m_inv_t = sc["m_inv_t"] if s.bl_coupling else None
        step_v = None
        if s.crosstalk:
            q = p.coupling_f * st.read_voltage_v
            step_v = q @ m_inv_t if m_inv_t is not None else q / cap
        leak = p.leakage_a.sum(axis=0) if s.leakage else np.zeros(self.cols)
        src_r = self.si.source_r_ohm if s.source_line else 0.0
        v = native_integrate.integrate(v, d, edge_frac, st.integration_time_s, n_sub, m, eta_mean,
                                       self.sheet.precharge_v, K_B_OVER_Q * self.temperature_k, s.droop, leak,
                                       m_inv_t, cap, step_v, src_r, sc["source_a_per_v"])
        if v is not None and s.noise:
            noise_q = self._charge_noise(d)
            v -= (noise_q @ m_inv_t) if m_inv_t is not None else noise_q / cap
        return v

    def _charge_noise(self, d: np.ndarray) -> np.ndarray:
        """Telegraph and shot noise of the integrated charge (C), ``(B, cols)``."""
        i0 = self.currents()
        rel = np.clip(self.params.rtn_rel * np.sqrt(1e-9 / np.maximum(i0, 1e-12)), 1e-3, 0.1)
        var = (d**2) @ (i0 * rel) ** 2 + Q_E * (d @ i0)
        return np.sqrt(var) * self.noise_rng.standard_normal(var.shape)

    def readout_slope_v_per_s(self) -> np.ndarray:
        """Readout ramp rate (V/s) of every bit line (all reference currents run)."""
        p = self.params
        if self.switches.bl_coupling:
            return self._silicon_consts()["ramp_v_per_s"]
        return p.reference_current_a / p.capacitance_f

    def readout_s(self, v: np.ndarray) -> np.ndarray:
        """Comparator crossing times (s) on the TDC grid for bit-line voltages ``v``."""
        p, st, s = self.params, self.settings, self.switches
        threshold = self.sheet.threshold_v + p.comparator_offset_v
        if s.noise:
            threshold = threshold + p.comparator_jitter_v * self.noise_rng.standard_normal(v.shape)
        if not (s.bl_coupling or s.comparator or s.tdc_inl):
            t = np.maximum(v - threshold, 0.0) * p.capacitance_f / p.reference_current_a + p.comparator_delay_s
            counts = np.clip(np.floor(t / st.tdc_lsb_s), 0, 2**st.tdc_bits - 1)
            return counts * st.tdc_lsb_s
        slope = self.readout_slope_v_per_s()
        if s.comparator:
            t = comparator_crossing_s(v - threshold, slope, p.comparator_delay_s)
        else:
            t = np.maximum(v - threshold, 0.0) / slope + p.comparator_delay_s
        if s.tdc_inl:
            key = f"tdc{st.tdc_bits}"
            if key not in self._cache:
                self._cache[key] = tdc_edges_lsb(self.si, st.tdc_bits, self.cols)
            counts = tdc_codes(t / st.tdc_lsb_s, self._cache[key])
        else:
            counts = np.clip(np.floor(t / st.tdc_lsb_s), 0, 2**st.tdc_bits - 1)
        return counts * st.tdc_lsb_s

    def vmm(self, widths_s: np.ndarray, chunk: int = 1024) -> np.ndarray:
        out = np.empty((len(widths_s), self.cols))
        for a in range(0, len(widths_s), chunk):
            out[a : a + chunk] = self.readout_s(self.integrate(widths_s[a : a + chunk]))
        return out

    # ------------------------------------------------------------ programming
    def program(self, cells: np.ndarray, voltage_v: np.ndarray, width_s: np.ndarray) -> None:
        """Hot-electron injection pulses, one per cell, in order."""
        p, s = self.params, self.switches
        for (r, c), vp, w in zip(cells, voltage_v, width_s):
            sat = np.exp(min(self.overdrive_v[r, c] - p.erased_overdrive_v, 0.0) / 0.4)
            mean = 10e-3 * p.program_efficiency[r, c] * np.exp((vp - 5.0) / 0.35) * np.log1p(w / 100e-9) / np.log(11.0) * sat
            dv = mean
            if s.program_noise:
                dv *= 1.0 + 0.05 * self.noise_rng.standard_normal()
                electrons = max(dv, 0.0) * p.fg_capacitance_f / Q_E
                dv = self.noise_rng.poisson(electrons) * Q_E / p.fg_capacitance_f
            self.overdrive_v[r, c] -= dv
            if s.relaxation:
                self.drift.programmed(r, c, dv)
            self.programmed_at_s[r, c] = self.time_s
            if s.disturb:
                hit = p.disturb_fraction * dv
                self.overdrive_v[r, :] -= hit
                self.overdrive_v[:, c] -= hit
                self.overdrive_v[r, c] += 2 * hit
            self.pulses_applied += 1
        self._invalidate()

    def erase(self, rows: np.ndarray, voltage_v: float, width_s: float) -> None:
        """Fowler-Nordheim erase of whole rows: relax toward the erased state."""
        rate = 1e3 * np.exp((voltage_v - 12.0) / 0.6)  # 1/s
        keep = np.exp(-rate * width_s)
        top = self.params.erased_overdrive_v
        for r in rows:
            if self.switches.relaxation:
                self.overdrive_v[r] += self.drift.erased(r)
            v = self.overdrive_v[r]
            v[:] = top - (top - v) * keep
            if self.switches.program_noise:
                v += 1e-3 * self.noise_rng.standard_normal(self.cols) * (1 - keep)
            self.programmed_at_s[r] = self.time_s
            self.pulses_applied += 1
        self._invalidate()

    # ------------------------------------------------------------ environment
    def set_temperature_k(self, kelvin: float) -> None:
        self.temperature_k = float(kelvin)
        self._invalidate()

    def advance_time_s(self, seconds: float) -> None:
        self.time_s += float(seconds)
        self.drift.advance(float(seconds), self.switches.flicker, self.switches.relaxation)
        self._invalidate()

    def configure(self, settings: VmmSettings) -> None:
        self.settings = settings
        self._invalidate()
