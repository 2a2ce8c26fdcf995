"""Emulated bench instruments coupled to one emulated chip (pure command handlers).

- :class:`Keithley2400Emulator`: source V / measure I on the cell the test board has
  routed to its analog test port (``Wiring.smu_cell``); the reading is that cell's
  drain current at the sourced gate voltage (``EmulatedArray.id_vg``), clipped at the
  programmed compliance, so it follows programming and erasing of the chip.
- :class:`InfiniiVisionEmulator`: a single acquisition armed by ``:SINGle`` is
  triggered by the next VMM the chip runs (the board's integration-start output on the
  external trigger) and records the bit-line waveform of the column each channel
  probes (``Wiring.scope_columns``), via ``EmulatedArray.capture_bitline``.
- :class:`LakeShore336Emulator`: ``KRDG?`` reads the chip temperature; closed-loop
  control with the heater on settles the chip at the set point at once (a cooled stage
  with a heater: set points below ambient are reachable within the chip's 200-420 K;
  others are an execution error); heater off returns it to ambient.

Each handles lines of its instrument's real command set (see the drivers in
``drivers/``) through :class:`simulator.scpi_device.ScpiDevice`; unknown commands and
bad values land in the error queue as on the instrument.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass, field

import numpy as np

from .scpi_device import (
    DATA_OUT_OF_RANGE,
    ILLEGAL_VALUE,
    SETTINGS_CONFLICT,
    Call,
    ScpiDevice,
    ScpiError,
    ieee_block,
)


@dataclass
class Wiring:
    """How the instruments meet the chip; ``smu_cell`` is switched by the test board."""

    smu_cell: tuple[int, int] | None = None  # cell on the analog test port, None: open
    scope_columns: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 1, 3: 2, 4: 3})


# ---------------------------------------------------------------- Keithley 2400

OUTPUT_DISABLED = (803, "Output disabled")
OVERFLOW_READING = 9.91e37  # the 2400's "no value" for unmeasured elements


class Keithley2400Emulator(ScpiDevice):
    """Keithley 2400 SourceMeter, voltage source / current measure subset."""

    idn = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,EMU0001,C33 labkit-emulator"
    sense_choices = {"CURRent[:DC]": "CURR", "VOLTage[:DC]": "VOLT", "RESistance": "RES"}
    element_order = ("VOLT", "CURR", "RES", "TIME", "STAT")
    list_max = 100

    def __init__(self, array, wiring: Wiring):
        super().__init__()
        self.array, self.wiring = array, wiring
        self.enable_error_queue()
        self.t0 = time.monotonic()
        c = self.command
        c("SOURce#:FUNCtion[:MODE]", self._source_function)
        c("SOURce#:VOLTage:MODE", self._volt_mode)
        c("SOURce#:VOLTage:RANGe[:UPPer]", self._volt_range)
        c("SOURce#:VOLTage[:LEVel][:IMMediate][:AMPLitude]", self._volt_level)
        c("SOURce#:LIST:VOLTage", self._list_volt)
        c("SOURce#:DELay", lambda k: self._number(k, "delay_s", 0.0, 999.9999))
        c("[SENSe#]:FUNCtion[:ON]", self._sense_function)
        c("[SENSe#]:CURRent[:DC]:PROTection:TRIPped", self._tripped)
        c("[SENSe#]:CURRent[:DC]:PROTection[:LEVel]", lambda k: self._number(k, "compliance_a", 1e-12, 1.05))
        c("[SENSe#]:CURRent[:DC]:RANGe[:UPPer]", lambda k: self._number(k, "range_a", 1e-12, 1.05))
        c("[SENSe#]:CURRent[:DC]:RANGe:AUTO", lambda k: self._flag(k, "autorange"))
        c("[SENSe#]:CURRent[:DC]:NPLCycles", lambda k: self._number(k, "nplc", 0.01, 10.0))
        c("FORMat:ELEMents[:SENSe#]", self._elements)
        c("TRIGger:COUNt", self._trigger_count)
        c("OUTPut#[:STATe]", self._output)
        c("READ", self._read)
        self.reset()

    def reset(self) -> None:
        self.function, self.mode, self.sense = "VOLT", "FIX", "CURR"
        self.level_v, self.range_v, self.delay_s = 0.0, 21.0, 0.0
        self.sweep_list: list[float] = []
        self.compliance_a, self.range_a, self.autorange, self.nplc = 105e-6, 105e-6, True, 1.0
        self.elements = list(self.element_order)
        self.count, self.output, self.in_compliance = 1, False, False

    # -- generic handlers
    def _number(self, call: Call, attr: str, lo: float, hi: float):
        if call.query:
            return f"{getattr(self, attr):.6E}"
        setattr(self, attr, call.number(0, lo, hi))

    def _flag(self, call: Call, attr: str):
        if call.query:
            return "1" if getattr(self, attr) else "0"
        setattr(self, attr, call.boolean())

    # -- source
    def _source_function(self, call: Call):
        if call.query:
            return self.function
        self.function = call.choice({"VOLTage": "VOLT", "CURRent": "CURR", "MEMory": "MEM"})
        if self.function != "VOLT":  # only the voltage source is wired on this bench
            self.function = "VOLT"
            raise ScpiError(*SETTINGS_CONFLICT)

    def _volt_mode(self, call: Call):
        if call.query:
            return self.mode
        self.mode = call.choice({"FIXed": "FIX", "LIST": "LIST", "SWEep": "SWE"})

    def _volt_range(self, call: Call):
        if call.query:
            return f"{self.range_v:.6E}"
        self.range_v = 21.0 if abs(call.number(0, -210.0, 210.0)) <= 21.0 else 210.0

    def _volt_level(self, call: Call):
        if call.query:
            return f"{self.level_v:.6E}"
        v = call.number(0, -210.0, 210.0)
        if abs(v) > self.range_v * 1.05:
            raise ScpiError(*DATA_OUT_OF_RANGE)
        self.level_v = v

    def _list_volt(self, call: Call):
        if call.query:
            return ",".join(f"{v:.6E}" for v in self.sweep_list)
        values = [call.number(i, -210.0, 210.0) for i in range(len(call.args))]
        if not values or len(values) > self.list_max:
            raise ScpiError(*ILLEGAL_VALUE)
        self.sweep_list = values

    # -- sense
    def _sense_function(self, call: Call):
        if call.query:
            return f'"{self.sense}:DC"'
        self.sense = call.choice(self.sense_choices)

    def _tripped(self, call: Call):
        if not call.query:
            raise ScpiError(-113, "Undefined header")
        return "1" if self.in_compliance else "0"

    def _elements(self, call: Call):
        if call.query:
            return ",".join(self.elements)
        names = {"VOLTage": "VOLT", "CURRent": "CURR", "RESistance": "RES", "TIME": "TIME", "STATus": "STAT"}
        chosen = [call.choice(names, i)
                  for i in range(len(call.args))]
        if not chosen:
            raise ScpiError(-109, "Missing parameter")
        self.elements = [e for e in self.element_order if e in chosen]

    def _trigger_count(self, call: Call):
        if call.query:
            return f"{self.count:d}"
        self.count = int(call.number(0, 1, 2500))

    def _output(self, call: Call):
        if call.query:
            return "1" if self.output else "0"
        self.output = call.boolean()
        if not self.output:
            self.in_compliance = False

    # -- the measurement
    def _read(self, call: Call):
        if not call.query:
            raise ScpiError(-113, "Undefined header")
        if not self.output:
            raise ScpiError(*OUTPUT_DISABLED)
        if self.mode == "LIST":
            if len(self.sweep_list) != self.count:
                raise ScpiError(*SETTINGS_CONFLICT)
            levels = list(self.sweep_list)
        else:
            levels = [self.level_v] * self.count
        currents = self._currents(np.asarray(levels))
        self.in_compliance = bool(np.any(np.abs(currents) >= self.compliance_a))
        values = []
        for v, i in zip(levels, currents):
            item = {"VOLT": v, "CURR": i, "RES": OVERFLOW_READING,
                    "TIME": time.monotonic() - self.t0, "STAT": 8.0 if abs(i) >= self.compliance_a else 0.0}
            values.extend(item[e] for e in self.elements)
        return ",".join(f"{x:+.6E}" for x in values)

    def _currents(self, gate_v: np.ndarray) -> np.ndarray:
        cell = self.wiring.smu_cell
        if cell is None:  # open test port: fixture leakage only
            return np.full(gate_v.shape, 2e-13)
        return np.asarray(self.array.id_vg(tuple(cell), gate_v, self.compliance_a), dtype=float)


# ---------------------------------------------------------------- Keysight InfiniiVision


class InfiniiVisionEmulator(ScpiDevice):
    """Keysight InfiniiVision 3000 X (DSOX3024T): timebase, channels, edge trigger,
    single acquisition and waveform transfer (BYTE/WORD, IEEE 488.2 blocks)."""

    idn = "KEYSIGHT TECHNOLOGIES,DSOX3024T,EMU0002,07.50.2021102830"
    error_format = '{code:+d},"{message}"'
    divisions_x, divisions_y = 10, 8
    record_points = 4000

    def __init__(self, array, wiring: Wiring):
        super().__init__()
        self.array, self.wiring = array, wiring
        self.enable_error_queue()
        c = self.command
        c("TIMebase:SCALe", lambda k: self._num(k, "t_scale", 1e-9, 50.0))
        c("TIMebase:POSition", lambda k: self._num(k, "t_pos", -500.0, 500.0))
        c("TIMebase:REFerence", lambda k: self._enum(k, "t_ref", {"LEFT": "LEFT", "CENTer": "CENT", "RIGHt": "RIGH"}))
        c("CHANnel#:SCALe", lambda k: self._chan_num(k, "scale", 1e-3, 5.0))
        c("CHANnel#:OFFSet", lambda k: self._chan_num(k, "offset", -40.0, 40.0))
        c("TRIGger:MODE", lambda k: self._enum(k, "trig_mode", {"EDGE": "EDGE"}))
        c("TRIGger[:EDGE]:SOURce", lambda k: self._enum(k, "trig_source", self._sources(external=True)))
        c("TRIGger[:EDGE]:LEVel", lambda k: self._num(k, "trig_level", -40.0, 40.0))
        c("TRIGger[:EDGE]:SLOPe", lambda k: self._enum(k, "trig_slope", {"POSitive": "POS", "NEGative": "NEG"}))
        c("SINGle", self._single)
        c("RUN", self._run_stop)
        c("STOP", self._run_stop)
        c("WAVeform:SOURce", lambda k: self._enum(k, "wav_source", self._sources(external=False)))
        c("WAVeform:FORMat", lambda k: self._enum(k, "wav_format", {"BYTE": "BYTE", "WORD": "WORD", "ASCii": "ASC"}))
        c("WAVeform:POINts", lambda k: self._num(k, "wav_points", 100, 8_000_000, integer=True))
        c("WAVeform:BYTeorder", lambda k: self._enum(k, "byteorder", {"LSBFirst": "LSBF", "MSBFirst": "MSBF"}))
        c("WAVeform:UNSigned", lambda k: self._num(k, "unsigned", 0, 1, integer=True))
        c("WAVeform:PREamble", self._preamble)
        c("WAVeform:DATA", self._data)
        c("OPERegister:CONDition", lambda k: str(32 if self.armed else 0))  # bit 5: waiting for trigger
        self.reset()

    def reset(self) -> None:
        self.t_scale, self.t_pos, self.t_ref = 100e-6, 0.0, "CENT"
        self.channels = {n: {"scale": 1.0, "offset": 0.0} for n in range(1, 5)}
        self.trig_mode, self.trig_source, self.trig_level, self.trig_slope = "EDGE", "CHAN1", 0.0, "POS"
        self.wav_source, self.wav_format, self.wav_points = "CHAN1", "BYTE", 1000
        self.byteorder, self.unsigned = "MSBF", 1
        self.armed = False
        self.acquired: dict[int, np.ndarray] = {}  # channel -> volts on the record grid
        self.acquired_grid: tuple[float, float] | None = None  # (x_origin, x_increment)

    @staticmethod
    def _sources(external: bool) -> dict[str, str]:
        d = {f"CHANnel{n}": f"CHAN{n}" for n in range(1, 5)}
        if external:
            d["EXTernal"] = "EXT"
        return d

    def _num(self, call: Call, attr: str, lo: float, hi: float, integer: bool = False):
        if call.query:
            v = getattr(self, attr)
            return f"{v:d}" if integer else f"{v:+.6E}"
        v = call.number(0, lo, hi)
        setattr(self, attr, int(v) if integer else v)

    def _enum(self, call: Call, attr: str, choices: dict[str, str]):
        if call.query:
            return getattr(self, attr)
        setattr(self, attr, call.choice(choices))

    def _chan_num(self, call: Call, key: str, lo: float, hi: float):
        n = call.suffix(0)
        if n not in self.channels:
            raise ScpiError(-114, "Header suffix out of range")
        if call.query:
            return f"{self.channels[n][key]:+.6E}"
        self.channels[n][key] = call.number(0, lo, hi)

    def _single(self, call: Call):
        self.armed = True
        self.acquired = {}

    def _run_stop(self, call: Call):
        self.armed = False

    # -- acquisition window
    def _window(self) -> tuple[float, float]:
        span = self.t_scale * self.divisions_x
        start = {"LEFT": 0.0, "CENT": -span / 2, "RIGH": -span}[self.t_ref] + self.t_pos
        return start, span / self.record_points

    def trigger(self, widths_s: np.ndarray) -> None:
        """The board started a VMM with ``widths_s`` (first vector): capture if armed."""
        with self.lock:
            if not (self.armed and self.trig_source == "EXT" and self.trig_slope == "POS" and self.trig_level < 3.3):
                return
            x0, dx = self._window()
            grid = x0 + dx * np.arange(self.record_points)
            self.acquired = {}
            for ch, col in self.wiring.scope_columns.items():
                t, v = self.array.capture_bitline(np.asarray(widths_s, dtype=float), int(col))
                self.acquired[ch] = np.interp(grid, t, v, left=v[0], right=v[-1])
            self.acquired_grid = (x0, dx)
            self.armed = False

    # -- transfer
    def _decimation(self) -> int:
        return max(1, self.record_points // max(1, min(self.wav_points, self.record_points)))

    def _y(self, ch: int) -> tuple[float, float, float, int]:
        """(y_increment, y_origin, y_reference, full-scale codes) of the source channel."""
        scale, offset = self.channels[ch]["scale"], self.channels[ch]["offset"]
        codes = 256 if self.wav_format == "BYTE" else 65536
        return scale * self.divisions_y / codes, offset, codes // 2, codes

    def _source_channel(self) -> int:
        return int(self.wav_source[-1])

    def _preamble(self, call: Call):
        if not call.query:
            raise ScpiError(-113, "Undefined header")
        ch = self._source_channel()
        dec = self._decimation()
        x0, dx = self.acquired_grid or self._window()
        yinc, yorg, yref, _ = self._y(ch)
        n = len(self.acquired.get(ch, ())[::dec]) if ch in self.acquired else 0
        fmt = {"BYTE": 0, "WORD": 1, "ASC": 4}[self.wav_format]
        return f"{fmt:+d},+0,{n:+d},+1,{dx * dec:+.6E},{x0:+.6E},+0,{yinc:+.6E},{yorg:+.6E},{yref:+d}"

    def _data(self, call: Call):
        if not call.query:
            raise ScpiError(-113, "Undefined header")
        ch = self._source_channel()
        if ch not in self.acquired:
            raise ScpiError(-230, "Data corrupt or stale")  # nothing acquired on that channel
        volts = self.acquired[ch][:: self._decimation()]
        yinc, yorg, yref, full = self._y(ch)
        codes = np.clip(np.round((volts - yorg) / yinc + yref), 0, full - 1).astype(np.int64)
        if self.wav_format == "ASC":
            return ieee_block(",".join(f"{v:+.6E}" for v in volts).encode())
        if not self.unsigned:
            codes = codes - full // 2
        if self.wav_format == "BYTE":
            data = struct.pack(f"{len(codes)}{'B' if self.unsigned else 'b'}", *codes.tolist())
        else:
            order = "<" if self.byteorder == "LSBF" else ">"
            data = struct.pack(f"{order}{len(codes)}{'H' if self.unsigned else 'h'}", *codes.tolist())
        return ieee_block(data)


# ---------------------------------------------------------------- Lake Shore 336


class LakeShore336Emulator(ScpiDevice):
    """Lake Shore 336: input A on the chip, output 1 heating it (no SCPI error queue:
    errors set *ESR? bits, as on the instrument)."""

    idn = "LSCI,MODEL336,EMU0003/0000000,2.9"

    def __init__(self, array, wiring: Wiring | None = None, ambient_k: float | None = None):
        super().__init__()
        self.array = array
        self.ambient_k = float(ambient_k if ambient_k is not None else array.temperature_k())
        c = self.command
        c("KRDG", self._krdg)
        c("SETP", self._setp)
        c("RANGE", self._range)
        c("RAMP", self._ramp)
        c("OUTMODE", self._outmode)
        c("HTR", self._htr)
        c("RDGST", self._rdgst)
        self.reset()

    def reset(self) -> None:
        self.setpoint = {1: 0.0, 2: 0.0}
        self.heater = {1: 0, 2: 0}
        self.ramp = {1: (0, 0.1), 2: (0, 0.1)}
        self.outmode = {1: (1, 1, 0), 2: (1, 2, 0)}  # closed-loop PID on inputs A / B
        self._apply()

    @staticmethod
    def _output(call: Call) -> int:
        n = call.number(0, 1, 4)
        if n not in (1, 2):
            raise ScpiError(*ILLEGAL_VALUE)
        return int(n)

    @staticmethod
    def _input(call: Call) -> str:
        name = call.arg(0).upper() if call.args else "A"
        if name not in ("A", "B", "C", "D", "0"):
            raise ScpiError(*ILLEGAL_VALUE)
        return name

    def _controls_chip(self, out: int) -> bool:
        mode, inp, _ = self.outmode[out]
        return mode == 1 and inp == 1 and self.heater[out] > 0

    def _apply(self) -> None:
        """Settle the chip: at the set point of the loop controlling input A, else ambient."""
        target = self.ambient_k
        for out in (1, 2):
            if self._controls_chip(out):
                target = self.setpoint[out]  # a stage that heats and cools (cryostat + heater)
        if abs(target - self.array.temperature_k()) > 1e-9:
            try:
                self.array.set_temperature_k(target)
            except ValueError:
                raise ScpiError(*DATA_OUT_OF_RANGE) from None

    def _change(self, table: dict, out: int, value) -> None:
        """Set ``table[out]`` and settle the chip; a refused temperature leaves it unchanged."""
        previous, table[out] = table[out], value
        try:
            self._apply()
        except ScpiError:
            table[out] = previous
            raise

    def _krdg(self, call: Call):
        if not call.query:
            raise ScpiError(-100, "Command error")
        if self._input(call) != "A":
            return "+000.000"  # no sensor on inputs B-D
        return f"+{self.array.temperature_k():.3f}"

    def _setp(self, call: Call):
        out = self._output(call)
        if call.query:
            return f"+{self.setpoint[out]:.3f}"
        self._change(self.setpoint, out, call.number(1, 0.0, 1500.0))

    def _range(self, call: Call):
        out = self._output(call)
        if call.query:
            return str(self.heater[out])
        self._change(self.heater, out, int(call.number(1, 0, 3)))

    def _ramp(self, call: Call):
        out = self._output(call)
        if call.query:
            on, rate = self.ramp[out]
            return f"{on},{rate:.1f}"
        self.ramp[out] = (int(call.number(1, 0, 1)), call.number(2, 0.0, 100.0))

    def _outmode(self, call: Call):
        out = self._output(call)
        if call.query:
            return ",".join(str(x) for x in self.outmode[out])
        self._change(self.outmode, out, (int(call.number(1, 0, 5)), int(call.number(2, 0, 4)), int(call.number(3, 0, 1))))

    def _htr(self, call: Call):
        out = self._output(call)
        if not self._controls_chip(out):
            return "+000.00"
        rise = self.array.temperature_k() - self.ambient_k
        return f"+{min(100.0, max(0.0, 5.0 + rise * 1.5 / self.heater[out])):06.2f}"

    def _rdgst(self, call: Call):
        return "000" if self._input(call) == "A" else "128"  # 128: sensor units overrange
