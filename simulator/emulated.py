"""EmulatedArray: an in-process ArrayBackend over a VirtualChip, and the ``sim://`` scheme.

``sim://?seed=3&preset=quiet&crosstalk=0`` opens chip 3 with the ``quiet`` preset and
crosstalk switched off. Options, each at most once: ``seed`` (non-negative int),
``preset`` (``default`` = ``silicon``: every second-order effect on; ``model``: the
model's own form; ``ideal``, ``quiet``, ``linear``: variants of the model's form) and one switch per
non-ideality, 0 or 1: the model's form (``noise``, ``crosstalk``, ``droop``,
``variability``, ``program_noise``, ``disturb``, ``leakage``, ``retention``) and the
second-order physics (``bl_coupling``, ``wl_slew``, ``source_line``, ``tdc_inl``,
``comparator``, ``flicker``, ``relaxation``). The physics: docs/physics.md.
"""

from __future__ import annotations

import dataclasses
from urllib.parse import unquote_plus, urlencode

import numpy as np

from labkit.backend import Datasheet, Geometry, Identity, SafetyEnvelope, VmmSettings

from .chip import Switches, VirtualChip


class EmulatedArray:
    """Raw ArrayBackend of the emulated chip (SafeArray validates in front of it).

    Also offers TemperatureControl, VirtualClock, GateSweep and WaveformCapture.
    ``chip`` is the hidden truth: for tests, never for labkit.
    """

    def __init__(self, chip: VirtualChip, uri: str = "sim://"):
        self.chip = chip
        self.geometry = Geometry(rows=chip.rows, cols=chip.cols)
        self.datasheet: Datasheet = chip.sheet
        self.envelope = SafetyEnvelope()
        self.identity = Identity(chip_id=f"EMU-{chip.seed:04d}", firmware="emulator-1.0", backend=uri,
                                 board_serial="virtual")

    @property
    def settings(self) -> VmmSettings:
        return self.chip.settings

    def configure(self, settings: VmmSettings) -> None:
        self.chip.configure(settings)

    def read_currents(self, cells: np.ndarray) -> np.ndarray:
        return self.chip.read_currents(cells)

    def program_pulses(self, cells: np.ndarray, voltage_v: np.ndarray, width_s: np.ndarray) -> None:
        self.chip.program(cells, voltage_v, width_s)

    def erase_rows(self, rows: np.ndarray, voltage_v: float, width_s: float) -> None:
        self.chip.erase(rows, voltage_v, width_s)

    def vmm(self, widths_s: np.ndarray) -> np.ndarray:
        return self.chip.vmm(widths_s)

    def temperature_k(self) -> float:
        return self.chip.temperature_k

    def set_temperature_k(self, kelvin: float) -> None:
        if not 200.0 <= kelvin <= 420.0:  # what the emulated stage can reach
            raise ValueError(f"temperature {kelvin} K is outside the emulator's 200-420 K")
        self.chip.set_temperature_k(kelvin)

    def advance_time_s(self, seconds: float) -> None:
        self.chip.advance_time_s(seconds)

    def provenance(self) -> dict:
        return {}

    def id_vg(self, cell: tuple[int, int], gate_v: np.ndarray, compliance_a: float) -> np.ndarray:
        """Drain current (A) of one cell over gate voltages (V), clipped at compliance."""
        r, c = cell
        i = np.array([self.chip.current_at_gate(float(g))[r, c] for g in np.atleast_1d(gate_v)])
        return np.minimum(i, compliance_a)

    def capture_bitline(self, widths_s: np.ndarray, col: int) -> tuple[np.ndarray, np.ndarray]:
        """Bit-line voltage of ``col`` during one VMM (integration, then readout ramp)."""
        w = np.asarray(widths_s, dtype=float).reshape(1, -1)
        v_end, (t, v) = self.chip.integrate(w, record_col=col, substeps=8)
        T = self.chip.settings.integration_time_s
        ramp_t = np.linspace(0.0, self.chip.settings.tdc_full_scale_s, 64)
        ramp_v = np.maximum(v_end[0, col] - self.chip.readout_slope_v_per_s()[col] * ramp_t, 0.0)
        return np.concatenate([t, T + ramp_t]), np.concatenate([v, ramp_v])

    def close(self) -> None:
        pass


FORMS = "'sim://' or 'sim://?seed=N&preset=NAME&SWITCH=0|1'"
_BOOL = {"0": False, "1": True, "false": False, "true": True, "off": False, "on": True}


def chip_from_options(opts: dict[str, str]) -> VirtualChip:
    """Build a VirtualChip from sim:// query options (ValueError naming the value on an
    unknown option, a bad seed, preset or switch value)."""
    opts = dict(opts)
    raw_seed = str(opts.pop("seed", "0"))
    try:
        seed = int(raw_seed)
        if seed < 0:
            raise ValueError
    except ValueError:
        raise ValueError(f"sim:// option seed={raw_seed!r}; expected a non-negative integer, as in {FORMS}") from None
    switches = Switches.preset(opts.pop("preset", "default"))
    names = [f.name for f in dataclasses.fields(Switches)]
    changes = {}
    for key, value in opts.items():
        if key not in names:
            raise ValueError(f"unknown sim:// option {key!r}; expected seed, preset or one of {names}")
        if str(value).lower() not in _BOOL:
            raise ValueError(f"sim:// option {key}={value!r}; expected 0 or 1")
        changes[key] = _BOOL[str(value).lower()]
    return VirtualChip(seed=seed, switches=dataclasses.replace(switches, **changes))


def parse_sim_uri(uri: str) -> dict[str, str]:
    """Query options of a ``sim://`` URI, strictly: nothing between ``sim://`` and ``?``,
    no fragment, every option ``key=value`` once (ValueError naming the URI otherwise)."""
    if not isinstance(uri, str) or not uri.startswith("sim://"):
        raise ValueError(f"backend URI {uri!r}; expected {FORMS}")
    rest = uri[len("sim://"):]
    if "#" in rest or (rest and not rest.startswith("?")):
        raise ValueError(f"backend URI {uri!r}; expected {FORMS}")
    query = rest[1:]
    if not query:
        return {}
    opts: dict[str, str] = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        if not key or not eq or not value:
            raise ValueError(f"backend URI {uri!r}: option {item!r} is not key=value; expected {FORMS}")
        if unquote_plus(key) in opts:
            raise ValueError(f"backend URI {uri!r} gives option {key!r} twice; "
                             f"expected each option once, as in {FORMS}")
        opts[unquote_plus(key)] = unquote_plus(value)
    return opts


def open_sim(uri: str, opts: dict[str, str]) -> EmulatedArray:
    """Opener of the ``sim`` scheme. The URI is parsed again here, strictly; ``opts``
    (already parsed, duplicates lost) are used as given only with a bare ``sim://``."""
    parsed = parse_sim_uri(uri)
    return EmulatedArray(chip_from_options(parsed or opts), uri=uri)


def expand_sim(uri: str, n: int) -> list[str]:
    """``n`` distinct emulated chips from one ``sim://`` URI: seeds N, N+1, ... (N = its
    seed, default 0), the other options kept."""
    opts = parse_sim_uri(uri)
    seed = chip_from_options(opts).seed  # validates every option
    opts.pop("seed", None)
    base = uri.split("?", 1)[0]
    return [f"{base}?{urlencode({'seed': seed + i, **opts})}" for i in range(n)]


open_sim.expand = expand_sim
