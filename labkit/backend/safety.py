"""SafeArray: the one choke point between labkit and any backend.

Every primitive and every capability is checked here against shapes and the
:class:`~labkit.backend.SafetyEnvelope` before the call reaches the backend; backends
and measurement routines do not re-validate. A capability is handed out as a guard
(see :mod:`labkit.backend.guards`); a capability without a guard is never handed out.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from labkit.backend.contract import ArrayBackend, VmmSettings
from labkit.errors import UsageError
from labkit.units import si
from labkit.validate import all_in_range, finite, in_range


class SafeArray:
    """The validated face of a backend: every call is checked here, once, for all backends.

    Bad shapes, NaN, unknown cells or values outside the SafetyEnvelope raise
    ``ValueError`` (or :class:`SafetyError`) naming the value, and nothing is applied.
    """

    def __init__(self, inner: ArrayBackend):
        self.inner = inner

    # identity and geometry pass through
    geometry = property(lambda self: self.inner.geometry)
    identity = property(lambda self: self.inner.identity)
    datasheet = property(lambda self: self.inner.datasheet)
    envelope = property(lambda self: self.inner.envelope)
    settings = property(lambda self: self.inner.settings)

    def capability(self, protocol: type) -> object | None:
        """A validating guard for ``protocol`` (e.g. TemperatureControl), or None if the
        backend lacks it. Requests through the guard are checked like the primitives."""
        from labkit.backend.guards import guard_for

        return guard_for(self, protocol) if isinstance(self.inner, protocol) else None

    def capabilities(self) -> list[str]:
        """Names of the capabilities this backend offers."""
        from labkit.backend.guards import GUARDS

        return [p.__name__ for p in GUARDS if isinstance(self.inner, p)]

    def provenance(self) -> dict:
        """Where data from this backend come from: URI, identity, operating point,
        datasheet, envelope, capabilities, temperature, and what the backend itself adds
        (``ArrayBackend.provenance``, e.g. a station file's text)."""
        b = self
        prov = {
            "backend_uri": b.identity.backend,
            "identity": dataclasses.asdict(b.identity),
            "geometry": {"rows": b.geometry.rows, "cols": b.geometry.cols,
                         "pairs": [list(p) for p in b.geometry.pairs]},
            "settings": dataclasses.asdict(b.settings),
            "datasheet": dataclasses.asdict(b.datasheet),
            "envelope": dataclasses.asdict(b.envelope),
            "capabilities": self.capabilities(),
            "temperature_k": b.temperature_k(),
        }
        return {**prov, **self.inner.provenance()}

    def configure(self, settings: VmmSettings | None = None, **changes) -> VmmSettings:
        """Change the operating point; keyword values may be pint Quantities."""
        units = {"integration_time_s": "s", "read_voltage_v": "V", "tdc_lsb_s": "s"}
        base = settings or self.inner.settings
        try:
            new = dataclasses.replace(
                base, **{k: si(v, units[k], k) if k in units else v for k, v in changes.items()}
            )
        except TypeError as exc:
            raise UsageError(f"unknown setting in {sorted(changes)}: {exc}") from None
        env = self.envelope
        in_range("integration_time_s", new.integration_time_s, env.integration_time_range_s, "s")
        in_range("read_voltage_v", new.read_voltage_v, env.read_voltage_range_v, "V")
        for name, lo, hi in (("input_bits", 1, 12), ("tdc_bits", 4, 16)):
            value = getattr(new, name)
            if not isinstance(value, (int, np.integer)) or not lo <= value <= hi:
                raise UsageError(f"{name}={value!r}; expected an integer in [{lo}, {hi}]")
        if not new.tdc_lsb_s > 0:
            raise UsageError(f"tdc_lsb_s={new.tdc_lsb_s}; expected > 0 s")
        self.inner.configure(new)
        return new

    def cells(self, cells=None) -> np.ndarray:
        """Validated ``(N, 2)`` int array; ``None`` means every cell in row-major order."""
        g = self.geometry
        if cells is None:
            r, c = np.divmod(np.arange(g.rows * g.cols), g.cols)
            return np.stack([r, c], axis=1)
        a = np.asarray(cells)
        if a.ndim == 1 and a.shape == (2,):
            a = a[None, :]
        if a.ndim != 2 or a.shape[1] != 2:
            raise UsageError(f"cells has shape {a.shape}; expected (N, 2) of (row, col)")
        if a.size and not np.issubdtype(a.dtype, np.integer):
            if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
                raise UsageError(f"cells must be integers, got {a.ravel()[:4]}")
            a = a.astype(int)
        bad = (a[:, 0] < 0) | (a[:, 0] >= g.rows) | (a[:, 1] < 0) | (a[:, 1] >= g.cols)
        if np.any(bad):
            raise UsageError(
                f"unknown cell {tuple(a[bad][0].tolist())}; expected row in [0, {g.rows}) and col in [0, {g.cols})"
            )
        return a.astype(np.int64)

    def read_currents(self, cells=None) -> np.ndarray:
        """Cell currents (A): ``(rows, cols)`` for all cells, ``(N,)`` for a list."""
        a = self.cells(cells)
        out = np.asarray(self.inner.read_currents(a), dtype=float)
        return out.reshape(self.geometry.rows, self.geometry.cols) if cells is None else out

    def program_pulses(self, cells, voltage_v, width_s) -> None:
        """One programming pulse per cell (voltages and widths broadcast over cells)."""
        a = self.cells(cells)
        v = np.broadcast_to(np.asarray(si(voltage_v, "V", "voltage_v"), dtype=float), (len(a),))
        w = np.broadcast_to(np.asarray(si(width_s, "s", "width_s"), dtype=float), (len(a),))
        env = self.envelope
        finite("voltage_v", v)
        finite("width_s", w)
        all_in_range("program voltage_v", v, (0.0, env.max_program_voltage_v), "V")
        all_in_range("program width_s", w, env.program_width_range_s, "s")
        if len(a):
            self.inner.program_pulses(a, v.copy(), w.copy())

    def erase_rows(self, rows, voltage_v, width_s) -> None:
        """One erase pulse on each listed row."""
        r = np.atleast_1d(np.asarray(rows))
        if r.ndim != 1 or (r.size and not np.issubdtype(r.dtype, np.integer)):
            raise UsageError(f"rows={rows!r}; expected a list of integer row indices")
        if np.any((r < 0) | (r >= self.geometry.rows)):
            raise UsageError(f"unknown row in {r.tolist()}; expected [0, {self.geometry.rows})")
        v = float(si(voltage_v, "V", "voltage_v"))
        w = float(si(width_s, "s", "width_s"))
        in_range("erase voltage_v", v, (0.0, self.envelope.max_erase_voltage_v), "V")
        in_range("erase width_s", w, self.envelope.erase_width_range_s, "s")
        if r.size:
            self.inner.erase_rows(r.astype(np.int64), v, w)

    def widths(self, widths_s, rows_only: bool = False) -> np.ndarray:
        """Validated pulse widths (s): ``(B, rows)`` (or ``(rows,)`` with ``rows_only``),
        finite and within ``[0, T]``."""
        w = np.asarray(si(widths_s, "s", "widths_s"), dtype=float)
        rows = self.geometry.rows
        ok = w.shape == (rows,) if rows_only else (w.ndim == 2 and w.shape[1] == rows)
        if not ok:
            raise UsageError(f"widths_s has shape {w.shape}; expected {(rows,) if rows_only else ('B', rows)}")
        finite("widths_s", w)
        all_in_range("pulse width", w, (0.0, self.settings.integration_time_s), "s")
        return np.ascontiguousarray(w)

    def vmm(self, widths_s) -> np.ndarray:
        """Crossing times (s), ``(B, cols)``, for pulse widths ``(B, rows)`` in s (or ``(rows,)``)."""
        w = np.asarray(si(widths_s, "s", "widths_s"), dtype=float)
        single = w.ndim == 1
        w2 = self.widths(w[None, :] if single else w)
        out = np.asarray(self.inner.vmm(w2), dtype=float)
        return out[0] if single else out

    def vmm_x(self, x) -> np.ndarray:
        """VMM from normalized inputs ``x`` in [0, 1] (pulse width = x * T)."""
        x = np.asarray(x, dtype=float)
        finite("x", x)
        all_in_range("input x", x, (0.0, 1.0), "")
        return self.vmm(x * self.settings.integration_time_s)

    def temperature_k(self) -> float | None:
        return self.inner.temperature_k()

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> "SafeArray":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
