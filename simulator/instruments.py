"""Emulated bench instruments coupled to one emulated chip (pure command handlers).

Three instruments, each with the command set its programming manual documents for what
it does on this bench, parsed by :class:`simulator.scpi_device.ScpiDevice` (short and
long forms, optional leading colon, ``;`` chaining, quoted strings, MIN/MAX/DEF,
IEEE 488.2 common commands and status registers). The class docstrings list what is
implemented; anything else queues ``-113,"Undefined header"`` (or sets the command
error bit of ``*ESR?`` on the Lake Shore, which has no error queue), as on the real one.

Noise follows the instruments' specifications and is on when the chip's ``noise``
switch is (``noise=`` overrides), so a quiet chip gives exact readings in tests.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np

from .scpi_device import (
    DATA_OUT_OF_RANGE,
    DATA_STALE,
    EXECUTION_ERROR,
    ILLEGAL_VALUE,
    SETTINGS_CONFLICT,
    SUFFIX_OUT_OF_RANGE,
    TOO_MUCH_DATA,
    UNDEFINED_HEADER,
    Call,
    ScpiDevice,
    ScpiError,
    StatusRegister,
    ieee_block,
)


@dataclass
class Wiring:
    """How the instruments meet the chip; ``smu_cell`` is switched by the test board."""

    smu_cell: tuple[int, int] | None = None  # cell on the analog test port, None: open
    scope_columns: dict[int, int] = field(default_factory=lambda: {1: 0, 2: 1, 3: 2, 4: 3})


def _noise_on(array, noise: bool | None) -> bool:
    if noise is not None:
        return bool(noise)
    chip = getattr(array, "chip", None)
    switches = getattr(chip, "switches", None)
    return bool(getattr(switches, "noise", False))


def _e(v: float) -> str:
    return f"{v:+.6E}"


# ---------------------------------------------------------------- Keithley 2400

OUTPUT_DISABLED = (803, "Output disabled")
OVERFLOW_READING = 9.91e37  # the 2400's "no value" for unmeasured elements
CURRENT_RANGES = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
VOLTAGE_RANGES = (0.2, 2.0, 21.0, 210.0)
#: rms measurement noise at 1 PLC as a fraction of the range (the 2400's resolution,
#: e.g. 10 pA on its 1 uA range); it grows as 1/sqrt(NPLC) towards 0.01 PLC.
NOISE_OF_RANGE = 1e-5
ELEMENTS = ("VOLT", "CURR", "RES", "TIME", "STAT")


def _range_for(value: float, ranges: tuple[float, ...]) -> float:
    for r in ranges:
        if abs(value) <= 1.05 * r:
            return r
    return ranges[-1]


class Keithley2400Emulator(ScpiDevice):
    """Keithley 2400 SourceMeter (Series 2400 User's Manual, section 18, SCPI reference).

    Wiring: HI forces the gate of the cell the test board routed to the analog test
    port (``Wiring.smu_cell``) and measures its drain current, so the reading is that
    cell's I(V) (``EmulatedArray.id_vg``), clipped at compliance. Sourcing current
    (``:SOUR:FUNC CURR``) forces that current through the same cell: the measured
    voltage is the gate voltage where the cell conducts it (clipped at the voltage
    compliance).

    Implemented:

    - source: ``:SOURce:FUNCtion[:MODE]`` VOLT/CURR; ``:SOURce:VOLTage|CURRent``
      ``[:LEVel][:IMMediate][:AMPLitude]``, ``:MODE`` FIX/LIST/SWE, ``:RANGe[:UPPer]``,
      ``:RANGe:AUTO``, ``:STARt``, ``:STOP``, ``:STEP``, ``:CENTer``, ``:SPAN``;
      ``:SOURce:SWEep:POINts|SPACing|DIRection|RANGing``; ``:SOURce:LIST:VOLTage|
      CURRent`` (up to 100 points, more is -223), ``:POINts?``; ``:SOURce:DELay``,
      ``:DELay:AUTO``; ``:SOURce:CLEar[:IMMediate]``, ``:CLEar:AUTO``;
    - sense: ``[:SENSe]:FUNCtion[:ON]`` (quoted list), ``:OFF``, ``:ALL``, ``:OFF:ALL``,
      ``:CONCurrent``, ``:STATe?``; ``[:SENSe]:CURRent|VOLTage[:DC]:PROTection[:LEVel]``,
      ``:TRIPped?``, ``:RANGe[:UPPer]``, ``:RANGe:AUTO``, ``:NPLCycles``;
      ``[:SENSe]:RESistance:MODE|RANGe|RANGe:AUTO|NPLCycles``; ``[:SENSe]:AVERage
      [:STATe]|:TCONtrol|:COUNt`` (the filter averages its readings);
    - measuring: ``:INITiate``, ``:ABORt``, ``:FETCh?``, ``:READ?``, ``:MEASure[:CURR|
      VOLT|RES]?``, ``:CONFigure[:CURR|VOLT|RES]``, ``:FORMat:ELEMents[:SENSe]``,
      ``:FORMat:DATA`` (ASCii), ``:FORMat:SREGister``;
    - trigger model: ``:ARM[:SEQuence]:COUNt|SOURce|TIMer|ILINe|OLINe|OUTPut``,
      ``:TRIGger[:SEQuence]:COUNt|DELay|SOURce|ILINe|OLINe|OUTPut``, ``:TRIGger:CLEar``,
      ``*TRG`` (with ``ARM:SOUR BUS`` an ``:INIT`` waits for it);
    - buffer: ``:TRACe:POINts``, ``:POINts:ACTual?``, ``:FEED``, ``:FEED:CONTrol``,
      ``:DATA?``, ``:CLEar``, ``:FREE?``; ``:CALCulate3:FORMat`` MEAN/SDEV/MAX/MIN/PKPK,
      ``:CALCulate3:DATA?``; buffer full sets bit 9 of the measurement event register;
    - output and system: ``:OUTPut[:STATe]``, ``:OUTPut:SMODe``, ``:ROUTe:TERMinals``,
      ``:SYSTem:RSENse``, ``:SYSTem:AZERo[:STATe]`` (and ONCE), ``:SYSTem:LFRequency``,
      ``:LFRequency:AUTO``, ``:SYSTem:BEEPer[:IMMediate]``, ``:BEEPer:STATe``,
      ``:SYSTem:PRESet``, ``:SYSTem:TIME?``, ``:SYSTem:TIME:RESet``, ``:DISPlay:ENABle``;
    - status: ``:STATus:MEASurement|OPERation|QUEStionable[:EVENt]?|:CONDition?|
      :ENABle``, ``:STATus:PRESet``, ``:STATus:QUEue[:NEXT]?``, the SCPI error queue and
      IEEE 488.2 common commands (``*STB?`` bit 0 is the measurement summary).

    Noise: rms ``1e-5`` of the measure range at 1 PLC, times ``1/sqrt(NPLC)``, on
    current and voltage readings (auto-range picks the range as the instrument does).

    Not emulated: ``:FORMat:DATA REAL|SREAL`` (binary readings), ``:CALCulate1|2``
    (math and limit tests), ``:SOURce2`` (digital output), ``:DISPlay:WINDow:TEXT``
    (front-panel text), reading-rate timing (readings return at once), the trigger link
    (``TLINk`` sources act as immediate).
    """

    idn = "KEITHLEY INSTRUMENTS INC.,MODEL 2400,EMU0001,C33 labkit-emulator"
    list_max = 100
    buffer_max = 2500

    def __init__(self, array, wiring: Wiring, *, noise: bool | None = None, seed: int = 2400):
        super().__init__()
        self.array, self.wiring = array, wiring
        self.noise = _noise_on(array, noise)
        self.rng = np.random.default_rng(seed)
        self.enable_error_queue()
        self.t0 = time.monotonic()
        self.meas_reg, self.oper_reg, self.ques_reg = StatusRegister(), StatusRegister(), StatusRegister()
        self.meas_reg.add_commands(self, "MEASurement")
        self.oper_reg.add_commands(self, "OPERation")
        self.ques_reg.add_commands(self, "QUEStionable")
        c = self.command
        c("STATus:PRESet", lambda k: self._set_only(k) or self._status_preset())
        c("STATus:QUEue[:NEXT]", lambda k: self._next_error() if self._query_only(k) else None)
        # source
        c("SOURce#:FUNCtion[:MODE]", self._source_function)
        for fn, name in (("VOLT", "VOLTage"), ("CURR", "CURRent")):
            c(f"SOURce#:{name}:MODE", lambda k, f=fn: self._src_choice(k, f, "mode",
                                                                        {"FIXed": "FIX", "LIST": "LIST", "SWEep": "SWE"}))
            c(f"SOURce#:{name}:RANGe:AUTO", lambda k, f=fn: self._src_flag(k, f, "auto"))
            c(f"SOURce#:{name}:RANGe[:UPPer]", lambda k, f=fn: self._src_range(k, f))
            for key, node in (("start", "STARt"), ("stop", "STOP"), ("step", "STEP")):
                c(f"SOURce#:{name}:{node}", lambda k, f=fn, key=key: self._src_num(k, f, key))
            c(f"SOURce#:{name}:CENTer", lambda k, f=fn: self._src_center(k, f))
            c(f"SOURce#:{name}:SPAN", lambda k, f=fn: self._src_span(k, f))
            c(f"SOURce#:{name}[:LEVel][:IMMediate][:AMPLitude]", lambda k, f=fn: self._src_level(k, f))
            c(f"SOURce#:{name}[:LEVel]:TRIGgered[:AMPLitude]", lambda k, f=fn: self._src_level(k, f))
            c(f"SOURce#:LIST:{name}:POINts", lambda k, f=fn: str(len(self.src[f]["list"])) if self._query_only(k)
              else None)
            c(f"SOURce#:LIST:{name}", lambda k, f=fn: self._src_list(k, f))
        c("SOURce#:SWEep:POINts", self._sweep_points)
        c("SOURce#:SWEep:SPACing", lambda k: self._enum(k, "sweep_spacing", {"LINear": "LIN", "LOGarithmic": "LOG"}))
        c("SOURce#:SWEep:DIRection", lambda k: self._enum(k, "sweep_direction", {"UP": "UP", "DOWN": "DOWN"}))
        c("SOURce#:SWEep:RANGing", lambda k: self._enum(k, "sweep_ranging",
                                                         {"BEST": "BEST", "AUTO": "AUTO", "FIXed": "FIX"}))
        c("SOURce#:DELay:AUTO", lambda k: self._flag(k, "delay_auto"))
        c("SOURce#:DELay", lambda k: self._number(k, "delay_s", 0.0, 999.9999, 0.0, "S"))
        c("SOURce#:CLEar:AUTO:MODE", lambda k: self._enum(k, "clear_auto_mode", {"ALWays": "ALW", "TCOunt": "TCO"}))
        c("SOURce#:CLEar:AUTO", lambda k: self._flag(k, "clear_auto"))
        c("SOURce#:CLEar[:IMMediate]", lambda k: self._set_only(k) or self._set_output(False))
        # sense
        c("[SENSe#]:FUNCtion:CONCurrent", lambda k: self._flag(k, "concurrent"))
        c("[SENSe#]:FUNCtion:OFF:ALL", lambda k: self._set_only(k) or self.functions.clear())
        c("[SENSe#]:FUNCtion:OFF", lambda k: self._sense_off(k))
        c("[SENSe#]:FUNCtion:ALL", lambda k: self._set_only(k) or self.functions.update({"VOLT", "CURR", "RES"}))
        c("[SENSe#]:FUNCtion:STATe", self._sense_state)
        c("[SENSe#]:FUNCtion[:ON]", self._sense_function)
        for fn, name, unit in (("CURR", "CURRent", "A"), ("VOLT", "VOLTage", "V")):
            c(f"[SENSe#]:{name}[:DC]:PROTection:TRIPped", lambda k, f=fn: self._tripped(k, f))
            c(f"[SENSe#]:{name}[:DC]:PROTection:RSYNchronize", lambda k: self._flag(k, "rsync"))
            c(f"[SENSe#]:{name}[:DC]:PROTection[:LEVel]", lambda k, f=fn, u=unit: self._protection(k, f, u))
            c(f"[SENSe#]:{name}[:DC]:RANGe:AUTO", lambda k, f=fn: self._sense_flag(k, f, "auto"))
            c(f"[SENSe#]:{name}[:DC]:RANGe[:UPPer]", lambda k, f=fn, u=unit: self._sense_range(k, f, u))
            c(f"[SENSe#]:{name}[:DC]:NPLCycles", lambda k, f=fn: self._nplc(k, f))
        c("[SENSe#]:RESistance:MODE", lambda k: self._enum(k, "res_mode", {"MANual": "MAN", "AUTO": "AUTO"}))
        c("[SENSe#]:RESistance:RANGe:AUTO", lambda k: self._sense_flag(k, "RES", "auto"))
        c("[SENSe#]:RESistance:RANGe[:UPPer]", lambda k: self._sense_range(k, "RES", "OHM"))
        c("[SENSe#]:RESistance:NPLCycles", lambda k: self._nplc(k, "RES"))
        c("[SENSe#]:AVERage:TCONtrol", lambda k: self._enum(k, "filter_type", {"REPeat": "REP", "MOVing": "MOV"}))
        c("[SENSe#]:AVERage:COUNt", lambda k: self._int(k, "filter_count", 1, 100, 10))
        c("[SENSe#]:AVERage[:STATe]", lambda k: self._flag(k, "filter_on"))
        # measuring
        c("INITiate[:IMMediate]", lambda k: self._set_only(k) or self._initiate())
        c("ABORt", lambda k: self._set_only(k) or self._abort())
        c("FETCh", self._fetch)
        c("READ", self._read)
        c("MEASure[:SCALar]", lambda k: self._measure(k, None))
        c("CONFigure[:SCALar]", lambda k: self._configure(k, None))
        for fn, name in (("CURR", "CURRent[:DC]"), ("VOLT", "VOLTage[:DC]"), ("RES", "RESistance")):
            c(f"MEASure[:SCALar]:{name}", lambda k, f=fn: self._measure(k, f))
            c(f"CONFigure[:SCALar]:{name}", lambda k, f=fn: self._configure(k, f))
        c("FORMat:ELEMents[:SENSe#]", self._elements)
        c("FORMat[:DATA]", self._format_data)
        c("FORMat:SREGister", lambda k: self._enum(k, "sreg_format", {"ASCii": "ASC", "HEXadecimal": "HEX",
                                                                       "OCTal": "OCT", "BINary": "BIN"}))
        # trigger model
        for layer, node in (("arm", "ARM[:SEQuence#][:LAYer#]"), ("trig", "TRIGger[:SEQuence#]")):
            c(f"{node}:COUNt", lambda k, L=layer: self._count(k, L))
            c(f"{node}:ILINe", lambda k, L=layer: self._int(k, f"{L}_iline", 1, 4, 1))
            c(f"{node}:OLINe", lambda k, L=layer: self._int(k, f"{L}_oline", 1, 4, 2))
        c("ARM[:SEQuence#][:LAYer#]:SOURce", lambda k: self._enum(k, "arm_source", {
            "IMMediate": "IMM", "TIMer": "TIM", "MANual": "MAN", "BUS": "BUS", "TLINk": "TLIN",
            "NSTest": "NST", "PSTest": "PST", "BSTest": "BST"}))
        c("ARM[:SEQuence#][:LAYer#]:TIMer", lambda k: self._number(k, "arm_timer", 0.001, 99999.99, 0.1, "S"))
        c("ARM[:SEQuence#][:LAYer#][:TCONfigure]:OUTPut", lambda k: self._enum(k, "arm_output", {
            "TENTer": "TENT", "TEXit": "TEX", "NONE": "NONE"}))
        c("TRIGger[:SEQuence#]:SOURce", lambda k: self._enum(k, "trig_source", {"IMMediate": "IMM", "TLINk": "TLIN"}))
        c("TRIGger[:SEQuence#]:DELay", lambda k: self._number(k, "trig_delay", 0.0, 999.9999, 0.0, "S"))
        c("TRIGger[:SEQuence#][:TCONfigure]:OUTPut", self._trig_output)
        c("TRIGger[:SEQuence#]:CLEar", lambda k: self._set_only(k))
        # buffer
        for root in ("TRACe", "DATA"):
            c(f"{root}:POINts:ACTual", lambda k: str(len(self.buffer)) if self._query_only(k) else None)
            c(f"{root}:POINts", lambda k: self._int(k, "buffer_points", 1, self.buffer_max, 100))
            c(f"{root}:FEED:CONTrol", lambda k: self._enum(k, "feed_control", {"NEXT": "NEXT", "NEVer": "NEV"}))
            c(f"{root}:FEED", lambda k: self._enum(k, "feed", {"SENSe[1]": "SENS", "CALCulate[1]": "CALC1",
                                                               "CALCulate2": "CALC2", "NONE": "NONE"}))
            c(f"{root}:DATA", self._trace_data)
            c(f"{root}:CLEar", lambda k: self._set_only(k) or self.buffer.clear())
            c(f"{root}:FREE", lambda k: f"{(self.buffer_max - len(self.buffer)) * 40},{len(self.buffer) * 40}"
              if self._query_only(k) else None)
        c("CALCulate3:FORMat", lambda k: self._enum(k, "calc3_format", {
            "MEAN": "MEAN", "SDEViation": "SDEV", "MAXimum": "MAX", "MINimum": "MIN", "PKPK": "PKPK"}))
        c("CALCulate3:DATA", self._calc3_data)
        # output and system
        c("OUTPut#[:STATe]", self._output)
        c("OUTPut#:SMODe", lambda k: self._enum(k, "off_mode", {"HIMPedance": "HIMP", "NORMal": "NORM",
                                                                 "ZERO": "ZERO", "GUARd": "GUAR"}))
        c("OUTPut#:ENABle[:STATe]", lambda k: self._flag(k, "interlock"))
        c("OUTPut#:ENABle:TRIPped", lambda k: "0" if self._query_only(k) else None)
        c("OUTPut#:INTerlock:TRIPped", lambda k: "0" if self._query_only(k) else None)
        c("ROUTe:TERMinals", lambda k: self._enum(k, "terminals", {"FRONt": "FRON", "REAR": "REAR"}))
        c("SYSTem:RSENse", lambda k: self._flag(k, "remote_sense"))
        c("SYSTem:AZERo[:STATe]", self._autozero)
        c("SYSTem:AZERo:CACHing[:STATe]", lambda k: self._flag(k, "az_caching"))
        c("SYSTem:LFRequency:AUTO", lambda k: self._flag(k, "lfreq_auto"))
        c("SYSTem:LFRequency", lambda k: self._line_frequency(k))
        c("SYSTem:BEEPer[:IMMediate]", self._beep)
        c("SYSTem:BEEPer:STATe", lambda k: self._flag(k, "beeper"))
        c("SYSTem:PRESet", lambda k: self._set_only(k) or self.reset())
        c("SYSTem:TIME:RESet", lambda k: self._set_only(k) or setattr(self, "t0", time.monotonic()))
        c("SYSTem:TIME", lambda k: _e(time.monotonic() - self.t0) if self._query_only(k) else None)
        c("SYSTem:GUARd", lambda k: self._enum(k, "guard", {"OHMS": "OHMS", "CABLe": "CABL"}))
        c("SYSTem:RCMode", lambda k: self._enum(k, "rc_mode", {"SINGle": "SING", "MULTiple": "MULT"}))
        c("DISPlay:ENABle", lambda k: self._flag(k, "display"))
        c("DISPlay:DIGits", lambda k: self._int(k, "digits", 4, 7, 6))
        self.reset()

    def reset(self) -> None:
        self.function = "VOLT"
        self.src = {
            "VOLT": dict(mode="FIX", level=0.0, range=21.0, auto=True, start=0.0, stop=0.0, step=0.0, list=[0.0]),
            "CURR": dict(mode="FIX", level=0.0, range=1e-4, auto=True, start=0.0, stop=0.0, step=0.0, list=[0.0]),
        }
        self.sweep_points_n, self.sweep_spacing, self.sweep_direction, self.sweep_ranging = 2500, "LIN", "UP", "BEST"
        self.delay_s, self.delay_auto, self.clear_auto, self.clear_auto_mode = 0.0, True, False, "ALW"
        self.functions, self.concurrent = {"CURR"}, True
        self.protection = {"CURR": 105e-6, "VOLT": 21.0}
        self.sense = {"CURR": dict(range=1.05e-4, auto=True, nplc=1.0), "VOLT": dict(range=21.0, auto=True, nplc=1.0),
                      "RES": dict(range=2.1e5, auto=True, nplc=1.0)}
        self.res_mode, self.rsync = "MAN", False
        self.filter_on, self.filter_type, self.filter_count = False, "REP", 10
        self.elements = list(ELEMENTS)
        self.data_format, self.sreg_format = "ASC", "ASC"
        self.arm_count, self.trig_count = 1, 1
        self.arm_source, self.arm_timer, self.arm_output = "IMM", 0.1, "NONE"
        self.trig_source, self.trig_delay, self.trig_outputs = "IMM", 0.0, ["NONE"]
        self.arm_iline, self.arm_oline, self.trig_iline, self.trig_oline = 1, 2, 1, 2
        self.buffer: list[list[float]] = []
        self.buffer_points, self.feed, self.feed_control, self.calc3_format = 100, "SENS", "NEV", "MEAN"
        self.readings: list[list[float]] | None = None
        self.output, self.in_compliance, self.waiting_bus = False, False, False
        self.off_mode, self.interlock, self.terminals, self.remote_sense = "NORM", False, "FRON", False
        self.autozero, self.az_caching, self.lfreq, self.lfreq_auto = "ON", True, 60, False
        self.beeper, self.display, self.digits, self.guard, self.rc_mode = True, True, 6, "CABL", "SING"

    # -- status
    def summary_bits(self) -> int:
        return (1 if self.meas_reg.summary else 0) | (8 if self.ques_reg.summary else 0) | \
            (128 if self.oper_reg.summary else 0)

    def _status_preset(self) -> None:
        for reg in (self.meas_reg, self.oper_reg, self.ques_reg):
            reg.enable = 0

    def clear_status(self) -> None:
        for reg in (self.meas_reg, self.oper_reg, self.ques_reg):
            reg.event = 0

    def bus_trigger(self) -> None:
        if self.waiting_bus:
            self.waiting_bus = False
            self._run_trigger_model()

    # -- generic handlers
    def _number(self, call: Call, attr: str, lo: float, hi: float, default: float | None = None, unit: str = ""):
        if call.query:
            return _e(self._query_limit(call, lo, hi, default, getattr(self, attr)))
        setattr(self, attr, call.number(0, lo, hi, default, unit))

    @staticmethod
    def _query_limit(call: Call, lo, hi, default, current):
        """``X? MIN|MAX|DEF`` asks for a limit; plain ``X?`` for the present value."""
        if call.has(0):
            return call.number(0, lo, hi, default)
        return current

    def _int(self, call: Call, attr: str, lo: int, hi: int, default: int):
        if call.query:
            return str(int(self._query_limit(call, lo, hi, default, getattr(self, attr))))
        setattr(self, attr, call.integer(0, lo, hi, default))

    # -- source
    def _source_function(self, call: Call):
        if call.query:
            return self.function
        fn = call.choice({"VOLTage": "VOLT", "CURRent": "CURR", "MEMory": "MEM"})
        if fn == "MEM":
            raise ScpiError(*SETTINGS_CONFLICT)  # source memory sweeps are not emulated
        self.function = fn

    def _limits(self, fn: str) -> tuple[float, float]:
        return (-210.0, 210.0) if fn == "VOLT" else (-1.05, 1.05)

    def _unit(self, fn: str) -> str:
        return "V" if fn == "VOLT" else "A"

    def _src_choice(self, call: Call, fn: str, key: str, choices: dict[str, str]):
        if call.query:
            return self.src[fn][key]
        self.src[fn][key] = call.choice(choices)

    def _src_flag(self, call: Call, fn: str, key: str):
        if call.query:
            return "1" if self.src[fn][key] else "0"
        self.src[fn][key] = call.boolean()

    def _src_range(self, call: Call, fn: str):
        lo, hi = self._limits(fn)
        ranges = VOLTAGE_RANGES if fn == "VOLT" else CURRENT_RANGES
        if call.query:
            return _e(self._query_limit(call, 0.0, hi, ranges[2 if fn == "VOLT" else 2], self.src[fn]["range"]))
        if call.arg(0).upper() in ("UP", "DOWN"):
            i = ranges.index(self.src[fn]["range"]) + (1 if call.arg(0).upper() == "UP" else -1)
            self.src[fn]["range"] = ranges[min(max(i, 0), len(ranges) - 1)]
        else:
            self.src[fn]["range"] = _range_for(call.number(0, lo, hi, ranges[2], self._unit(fn)), ranges)
        self.src[fn]["auto"] = False

    def _src_level(self, call: Call, fn: str):
        lo, hi = self._limits(fn)
        s = self.src[fn]
        if call.query:
            return _e(self._query_limit(call, -1.05 * s["range"], 1.05 * s["range"], 0.0, s["level"]))
        v = call.number(0, -1.05 * s["range"] if not s["auto"] else lo, 1.05 * s["range"] if not s["auto"] else hi,
                        0.0, self._unit(fn))
        if s["auto"]:
            s["range"] = _range_for(v, VOLTAGE_RANGES if fn == "VOLT" else CURRENT_RANGES)
        s["level"] = v

    def _src_num(self, call: Call, fn: str, key: str):
        lo, hi = self._limits(fn)
        if call.query:
            return _e(self.src[fn][key])
        self.src[fn][key] = call.number(0, lo if key != "step" else -2 * hi, hi if key != "step" else 2 * hi,
                                        0.0, self._unit(fn))

    def _src_center(self, call: Call, fn: str):
        s = self.src[fn]
        if call.query:
            return _e((s["start"] + s["stop"]) / 2)
        half = (s["stop"] - s["start"]) / 2
        c = call.number(0, *self._limits(fn), 0.0, self._unit(fn))
        s["start"], s["stop"] = c - half, c + half

    def _src_span(self, call: Call, fn: str):
        s = self.src[fn]
        if call.query:
            return _e(s["stop"] - s["start"])
        lo, hi = self._limits(fn)
        c, span = (s["start"] + s["stop"]) / 2, call.number(0, -2 * hi, 2 * hi, 0.0, self._unit(fn))
        s["start"], s["stop"] = c - span / 2, c + span / 2

    def _sweep_points(self, call: Call):
        if call.query:
            return str(self.sweep_points_n)
        self.sweep_points_n = call.integer(0, 1, 2500, 2500)

    def _src_list(self, call: Call, fn: str):
        if call.query:
            return ",".join(_e(v) for v in self.src[fn]["list"])
        args = call.args
        if not args:
            raise ScpiError(-109, "Missing parameter")
        if len(args) > self.list_max:
            raise ScpiError(*TOO_MUCH_DATA)
        lo, hi = self._limits(fn)
        self.src[fn]["list"] = [call.number(i, lo, hi, 0.0, self._unit(fn)) for i in range(len(args))]

    # -- sense
    _sense_names = {"CURRent[:DC]": "CURR", "VOLTage[:DC]": "VOLT", "RESistance": "RES"}

    def _sense_function(self, call: Call):
        if call.query:
            order = [f for f in ("VOLT", "CURR", "RES") if f in self.functions]
            return ",".join(f'"{f}:DC"' if f != "RES" else '"RES"' for f in order) or '""'
        chosen = {call.choice(self._sense_names, i) for i in range(len(call.args))}
        if not chosen:
            raise ScpiError(-109, "Missing parameter")
        if not self.concurrent:
            if len(chosen) > 1:
                raise ScpiError(*SETTINGS_CONFLICT)
            self.functions = set(chosen)
        else:
            self.functions |= chosen

    def _sense_off(self, call: Call):
        if call.query:
            order = [f for f in ("VOLT", "CURR", "RES") if f not in self.functions]
            return ",".join(f'"{f}:DC"' if f != "RES" else '"RES"' for f in order) or '""'
        for i in range(len(call.args)):
            self.functions.discard(call.choice(self._sense_names, i))

    def _sense_state(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return "1" if call.choice(self._sense_names) in self.functions else "0"

    def _tripped(self, call: Call, fn: str):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        measured = "CURR" if self.function == "VOLT" else "VOLT"
        return "1" if self.in_compliance and fn == measured else "0"

    def _protection(self, call: Call, fn: str, unit: str):
        lo, hi = (1e-12, 1.05) if fn == "CURR" else (-210.0, 210.0)
        default = 105e-6 if fn == "CURR" else 21.0
        if call.query:
            return _e(self._query_limit(call, lo, hi, default, self.protection[fn]))
        self.protection[fn] = abs(call.number(0, lo, hi, default, unit))

    def _sense_flag(self, call: Call, fn: str, key: str):
        if call.query:
            return "1" if self.sense[fn][key] else "0"
        self.sense[fn][key] = call.boolean()

    def _sense_range(self, call: Call, fn: str, unit: str):
        hi = {"CURR": 1.05, "VOLT": 210.0, "RES": 2.1e8}[fn]
        default = {"CURR": 1.05e-4, "VOLT": 21.0, "RES": 2.1e5}[fn]
        if call.query:
            return _e(self._query_limit(call, 0.0, hi, default, self.sense[fn]["range"]))
        self.sense[fn]["range"] = abs(call.number(0, -hi, hi, default, unit))
        self.sense[fn]["auto"] = False

    def _nplc(self, call: Call, fn: str):
        if call.query:
            return _e(self._query_limit(call, 0.01, 10.0, 1.0, self.sense[fn]["nplc"]))
        value = call.number(0, 0.01, 10.0, 1.0)
        for f in self.sense:  # one integration time for all functions, as on the 2400
            self.sense[f]["nplc"] = value

    @property
    def nplc(self) -> float:
        return self.sense["CURR"]["nplc"]

    @property
    def compliance_a(self) -> float:
        return self.protection["CURR"]

    @compliance_a.setter
    def compliance_a(self, value: float) -> None:
        self.protection["CURR"] = float(value)

    @property
    def level_v(self) -> float:
        return self.src["VOLT"]["level"]

    @property
    def mode(self) -> str:
        return self.src[self.function]["mode"]

    def _elements(self, call: Call):
        if call.query:
            return ",".join(self.elements)
        names = {"VOLTage": "VOLT", "CURRent": "CURR", "RESistance": "RES", "TIME": "TIME", "STATus": "STAT"}
        chosen = {call.choice(names, i) for i in range(len(call.args))}
        if not chosen:
            raise ScpiError(-109, "Missing parameter")
        self.elements = [e for e in ELEMENTS if e in chosen]

    def _format_data(self, call: Call):
        if call.query:
            return "ASC"
        kind = call.choice({"ASCii": "ASC", "REAL": "REAL", "SREal": "SRE"})
        if kind != "ASC":
            raise ScpiError(*SETTINGS_CONFLICT)  # binary reading formats are not emulated

    def _count(self, call: Call, layer: str):
        attr = f"{layer}_count"
        hi = 2500
        if call.query:
            return str(int(self._query_limit(call, 1, hi, 1, getattr(self, attr))))
        text = call.arg(0).upper()
        if text in ("INF", "INFINITE"):
            raise ScpiError(*SETTINGS_CONFLICT)  # infinite arming needs the front panel to stop
        setattr(self, attr, call.integer(0, 1, hi, 1))
        if self.arm_count * self.trig_count > self.buffer_max:
            setattr(self, attr, 1)
            raise ScpiError(*SETTINGS_CONFLICT)

    def _trig_output(self, call: Call):
        if call.query:
            return ",".join(self.trig_outputs)
        names = {"SOURce": "SOUR", "DELay": "DEL", "SENSe": "SENS", "NONE": "NONE"}
        self.trig_outputs = [call.choice(names, i) for i in range(len(call.args))] or ["NONE"]

    def _output(self, call: Call):
        if call.query:
            return "1" if self.output else "0"
        self._set_output(call.boolean())

    def _set_output(self, on: bool) -> None:
        self.output = on
        if not on:
            self.in_compliance = False

    def _autozero(self, call: Call):
        if call.query:
            return "1" if self.autozero == "ON" else "0"
        if call.arg(0).upper() == "ONCE":
            return None
        self.autozero = "ON" if call.boolean() else "OFF"

    def _line_frequency(self, call: Call):
        if call.query:
            return str(self.lfreq)
        f = call.integer(0, 50, 60, 60)
        if f not in (50, 60):
            raise ScpiError(*ILLEGAL_VALUE)
        self.lfreq = f

    def _beep(self, call: Call):
        if call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        call.number(0, 65.0, 2e6, unit="HZ")
        call.number(1, 0.0, 7.9, unit="S")

    # -- the measurement
    def _levels(self) -> list[float]:
        s = self.src[self.function]
        n = self.arm_count * self.trig_count
        if s["mode"] == "FIX":
            return [s["level"]] * n
        if s["mode"] == "LIST":
            pts = s["list"]
        else:
            pts = self._sweep_values(s)
        return [pts[i % len(pts)] for i in range(n)]

    def _sweep_values(self, s: dict) -> list[float]:
        n = self.sweep_points_n
        if self.sweep_spacing == "LOG":
            if s["start"] <= 0 or s["stop"] <= 0:
                raise ScpiError(*SETTINGS_CONFLICT)
            v = np.geomspace(s["start"], s["stop"], n)
        else:
            v = np.linspace(s["start"], s["stop"], n)
        return (v[::-1] if self.sweep_direction == "DOWN" else v).tolist()

    def _run_trigger_model(self) -> None:
        """Run arm count x trigger count source-measure cycles; store the readings."""
        if not self.output:
            raise ScpiError(*OUTPUT_DISABLED)
        levels = np.asarray(self._levels(), dtype=float)
        v, i, comp = self._source_measure(levels)
        self.in_compliance = bool(np.any(comp))
        now = time.monotonic() - self.t0
        dt = max(self.trig_delay, 0.0) + self.nplc / self.lfreq
        rows = []
        for k in range(len(levels)):
            res = v[k] / i[k] if "RES" in self.functions and i[k] != 0 else OVERFLOW_READING
            volt = v[k] if ("VOLT" in self.functions or self.function == "VOLT") else OVERFLOW_READING
            curr = i[k] if ("CURR" in self.functions or self.function == "CURR") else OVERFLOW_READING
            stat = (8 if comp[k] else 0) | (1 << 6 if self.filter_on else 0)
            rows.append([volt, curr, res, now + k * dt, float(stat)])
        self.readings = rows
        if self.feed != "NONE" and self.feed_control == "NEXT":
            room = self.buffer_points - len(self.buffer)
            self.buffer.extend(rows[:room])
            if len(self.buffer) >= self.buffer_points:
                self.feed_control = "NEV"
                self.meas_reg.set(1 << 9)  # buffer full
        self.meas_reg.set(1 << 5)  # reading available
        if self.clear_auto:
            self._set_output(False)

    def _source_measure(self, levels: np.ndarray):
        """(volts, amps, in-compliance flags) for each source level."""
        cell = self.wiring.smu_cell
        if self.function == "VOLT":
            comp_a = self.protection["CURR"]
            if cell is None:
                i = np.full(levels.shape, 2e-13)  # open test port: fixture leakage only
            else:
                i = np.asarray(self.array.id_vg(tuple(cell), levels, comp_a), dtype=float)
            v = levels.copy()
            compliance = np.abs(i) >= comp_a * (1 - 1e-9)
        else:
            comp_v = self.protection["VOLT"]
            i = levels.copy()
            v = self._voltage_for_current(cell, levels, comp_v)
            compliance = np.abs(v) >= comp_v * (1 - 1e-9)
            if np.any(compliance):
                actual = self._currents_at(cell, np.where(compliance, np.sign(levels) * comp_v, 0.0), 1.05)
                i = np.where(compliance, actual, i)
        if self.noise:
            i = i + self._noise("CURR", i)
            v = v + self._noise("VOLT", v)
        fixed = self.sense["CURR"]
        if not fixed["auto"]:
            i = np.where(np.abs(i) > 1.05 * fixed["range"], OVERFLOW_READING, i)
        return v, i, compliance

    def _currents_at(self, cell, gate_v: np.ndarray, compliance: float) -> np.ndarray:
        if cell is None:
            return np.full(np.shape(gate_v), 2e-13)
        return np.asarray(self.array.id_vg(tuple(cell), np.asarray(gate_v, dtype=float), compliance), dtype=float)

    def _voltage_for_current(self, cell, amps: np.ndarray, comp_v: float) -> np.ndarray:
        """Gate voltage at which the cell conducts each current (clipped at compliance)."""
        grid = np.linspace(0.0, max(comp_v, 1e-3), 401)
        i_grid = np.maximum.accumulate(self._currents_at(cell, grid, 1.05))
        out = np.empty_like(amps)
        for k, a in enumerate(amps):
            mag = abs(a)
            if mag > i_grid[-1]:
                out[k] = comp_v
            elif mag <= i_grid[0]:
                out[k] = 0.0
            else:
                j = int(np.searchsorted(i_grid, mag))
                lo_i, hi_i = np.log(max(i_grid[j - 1], 1e-30)), np.log(max(i_grid[j], 1e-30))
                f = 0.0 if hi_i == lo_i else (np.log(mag) - lo_i) / (hi_i - lo_i)
                out[k] = grid[j - 1] + f * (grid[j] - grid[j - 1])
            out[k] *= 1.0 if a >= 0 else -1.0
        return out

    def _noise(self, fn: str, values: np.ndarray) -> np.ndarray:
        s = self.sense[fn]
        ranges = CURRENT_RANGES if fn == "CURR" else VOLTAGE_RANGES
        if s["auto"]:
            rng_ = np.array([_range_for(x, ranges) for x in values])
        else:
            rng_ = np.full(values.shape, s["range"])
        sigma = NOISE_OF_RANGE * rng_ / math.sqrt(s["nplc"])
        if self.filter_on:
            sigma = sigma / math.sqrt(self.filter_count)
        return sigma * self.rng.standard_normal(values.shape)

    def _format(self, rows) -> str:
        idx = [ELEMENTS.index(e) for e in self.elements]
        return ",".join(_e(row[j]) for row in rows for j in idx)

    def _initiate(self) -> None:
        if self.arm_source == "BUS":
            if not self.output:
                raise ScpiError(*OUTPUT_DISABLED)
            self.waiting_bus = True
            return
        self._run_trigger_model()

    def _abort(self) -> None:
        self.waiting_bus = False

    def _fetch(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        if self.readings is None:
            raise ScpiError(*DATA_STALE)
        return self._format(self.readings)

    def _read(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        if self.waiting_bus:
            raise ScpiError(-213, "Init ignored")
        self._run_trigger_model()
        return self._format(self.readings)

    def _configure(self, call: Call, fn: str | None):
        if call.query:
            order = [f for f in ("VOLT", "CURR", "RES") if f in self.functions]
            return '"' + ",".join(f"{f}:DC" if f != "RES" else f for f in order) + '"'
        if fn is not None:
            self.functions = {fn}
        self.arm_count = self.trig_count = 1
        self.arm_source = self.trig_source = "IMM"
        self.sense[fn or "CURR"]["auto"] = True

    def _measure(self, call: Call, fn: str | None):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        if fn is not None:
            self.functions = {fn}
        self.arm_count = self.trig_count = 1
        self._set_output(True)  # :MEASure? turns the output on (the 2400 does)
        self._run_trigger_model()
        return self._format(self.readings)

    def _trace_data(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        if not self.buffer:
            return ""
        return self._format(self.buffer)

    def _calc3_data(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        if not self.buffer:
            raise ScpiError(*DATA_STALE)
        a = np.asarray(self.buffer)[:, :3]
        f = {"MEAN": np.mean, "SDEV": lambda x, axis: np.std(x, axis=axis, ddof=1) if len(x) > 1 else np.zeros(3),
             "MAX": np.max, "MIN": np.min, "PKPK": np.ptp}[self.calc3_format]
        return ",".join(_e(v) for v in f(a, axis=0))


# ---------------------------------------------------------------- Keysight InfiniiVision

MAX_SAMPLE_RATE = 5e9  # Sa/s, one channel of a pair (interleaved)
MAX_MEMORY = 4_000_000  # points, one channel of a pair (interleaved)
NORMAL_POINTS_MAX = 62_500


def _round_rate(rate: float) -> float:
    """Round a sample rate down to the 1-2-2.5-4-5 steps a scope uses."""
    if rate <= 0:
        return 1.0
    decade = 10 ** math.floor(math.log10(rate))
    for step in (5.0, 4.0, 2.5, 2.0, 1.0):
        if step * decade <= rate * (1 + 1e-9):
            return step * decade
    return decade


class InfiniiVisionEmulator(ScpiDevice):
    """Keysight InfiniiVision 3000 X DSOX3024T (3000 X-Series Programmer's Guide).

    Wiring: channels probe bit lines (``Wiring.scope_columns``); the board's
    integration-start output drives the EXTernal trigger, so a single acquisition armed
    by ``:SINGle`` or ``:DIGitize`` records the bit lines of the next VMM
    (``EmulatedArray.capture_bitline``). Every channel records, displayed or not.

    Implemented:

    - ``:TIMebase:SCALe|RANGe|POSition|DELay|REFerence|MODE``, ``:TIMebase?``;
    - ``:CHANnel<n>:SCALe|RANGe|OFFSet|COUPling|IMPedance|DISPlay|BWLimit|INVert|LABel|
      PROBe|UNITs``, ``:CHANnel<n>?``; ``:VIEW``/``:BLANk`` <source>;
    - ``:ACQuire:TYPE|MODE|COUNt``, ``:ACQuire:POINts?`` (record length) and
      ``:ACQuire:SRATe?`` (sample rate), both set by the time base as on the scope:
      5 GSa/s and 4 Mpts with one channel of each pair on, 2.5 GSa/s and 2 Mpts with
      both; the rate drops (1-2-2.5-4-5 steps) when the record would not fit the window;
    - ``:TRIGger:MODE`` EDGE, ``:TRIGger:SWEep`` AUTO/NORMal, ``:TRIGger[:EDGE]:SOURce|
      LEVel|SLOPe|COUPling``; ``:RUN``, ``:STOP``, ``:SINGle``, ``:DIGitize [src,...]``,
      ``:AUToscale``, ``:TER?``, ``:AER?``, ``:OPERegister:CONDition?``,
      ``:OPERegister[:EVENt]?``;
    - ``:WAVeform:SOURce|FORMat|POINts|POINts:MODE|BYTeorder|UNSigned|PREamble?|DATA?|
      XINCrement?|XORigin?|XREFerence?|YINCrement?|YORigin?|YREFerence?|COUNt?|TYPE?``;
      blocks with the ``#8`` header and eight length digits, BYTE, WORD and ASCii;
    - ``:SYSTem:PRESet``, ``:SYSTem:ERRor?`` and IEEE 488.2 common commands.

    Noise: 0.5 % of a division rms plus 100 uV (as the 3000 X's baseline noise) on
    every sample, divided by sqrt(count) in AVERage mode.

    Not emulated: ``:MEASure`` (automatic measurements), ``:DISPlay:DATA?`` (screen
    image), ``:SYSTem:SETup`` (binary setup blob), math/FFT, serial decode, segmented
    memory, digital channels, and trigger types other than edge.
    """

    idn = "KEYSIGHT TECHNOLOGIES,DSOX3024T,EMU0002,07.50.2021102830"
    error_format = '{code:+d},"{message}"'
    divisions_x, divisions_y = 10, 8

    def __init__(self, array, wiring: Wiring, *, noise: bool | None = None, seed: int = 3024):
        super().__init__()
        self.array, self.wiring = array, wiring
        self.noise = _noise_on(array, noise)
        self.rng = np.random.default_rng(seed)
        self.enable_error_queue()
        c = self.command
        c("TIMebase[:MAIN]:SCALe", lambda k: self._tnum(k, "t_scale", 1e-9 / 2, 50.0))
        c("TIMebase[:MAIN]:RANGe", self._t_range)
        c("TIMebase[:MAIN]:POSition", lambda k: self._tnum(k, "t_pos", -500.0, 500.0))
        c("TIMebase:DELay", lambda k: self._tnum(k, "t_pos", -500.0, 500.0))
        c("TIMebase:REFerence", lambda k: self._enum(k, "t_ref", {"LEFT": "LEFT", "CENTer": "CENT", "RIGHt": "RIGH"}))
        c("TIMebase:MODE", lambda k: self._enum(k, "t_mode", {"MAIN": "MAIN", "WINDow": "WIND", "XY": "XY",
                                                               "ROLL": "ROLL"}))
        c("TIMebase", self._timebase_summary)
        c("CHANnel#:SCALe", lambda k: self._chan_num(k, "scale", 1e-3, 5.0, "V"))
        c("CHANnel#:RANGe", self._chan_range)
        c("CHANnel#:OFFSet", lambda k: self._chan_num(k, "offset", -40.0, 40.0, "V"))
        c("CHANnel#:PROBe", lambda k: self._chan_num(k, "probe", 0.1, 10000.0, ""))
        c("CHANnel#:COUPling", lambda k: self._chan_enum(k, "coupling", {"AC": "AC", "DC": "DC"}))
        c("CHANnel#:IMPedance", lambda k: self._chan_enum(k, "impedance", {"ONEMeg": "ONEM", "FIFTy": "FIFT"}))
        c("CHANnel#:UNITs", lambda k: self._chan_enum(k, "units", {"VOLT": "VOLT", "AMPere": "AMP"}))
        c("CHANnel#:DISPlay", lambda k: self._chan_flag(k, "display"))
        c("CHANnel#:BWLimit", lambda k: self._chan_flag(k, "bwlimit"))
        c("CHANnel#:INVert", lambda k: self._chan_flag(k, "invert"))
        c("CHANnel#:LABel", self._chan_label)
        c("CHANnel#", self._chan_summary)
        c("VIEW", lambda k: self._view(k, True))
        c("BLANk", lambda k: self._view(k, False))
        c("ACQuire:TYPE", lambda k: self._enum(k, "acq_type", {"NORMal": "NORM", "AVERage": "AVER",
                                                                "HRESolution": "HRES", "PEAK": "PEAK"}))
        c("ACQuire:MODE", lambda k: self._enum(k, "acq_mode", {"RTIMe": "RTIM", "SEGMented": "SEGM"}))
        c("ACQuire:COUNt", lambda k: self._int(k, "acq_count", 2, 65536))
        c("ACQuire:POINts[:ANALog]", lambda k: str(self.record_points()) if self._query_only(k) else None)
        c("ACQuire:SRATe[:ANALog]", lambda k: _e(self.sample_rate()) if self._query_only(k) else None)
        c("TRIGger:MODE", lambda k: self._enum(k, "trig_mode", {"EDGE": "EDGE"}))
        c("TRIGger:SWEep", lambda k: self._enum(k, "trig_sweep", {"AUTO": "AUTO", "NORMal": "NORM"}))
        c("TRIGger[:EDGE]:SOURce", lambda k: self._enum(k, "trig_source", self._sources(external=True)))
        c("TRIGger[:EDGE]:LEVel", lambda k: self._tnum(k, "trig_level", -40.0, 40.0, "V"))
        c("TRIGger[:EDGE]:SLOPe", lambda k: self._enum(k, "trig_slope", {"POSitive": "POS", "NEGative": "NEG",
                                                                         "EITHer": "EITH", "ALTernate": "ALT"}))
        c("TRIGger[:EDGE]:COUPling", lambda k: self._enum(k, "trig_coupling", {"AC": "AC", "DC": "DC",
                                                                               "LFReject": "LFR"}))
        c("SINGle", lambda k: self._set_only(k) or self._arm())
        c("DIGitize", self._digitize)
        c("RUN", lambda k: self._set_only(k) or self._run())
        c("STOP", lambda k: self._set_only(k) or self._stop())
        c("AUToscale", lambda k: self._set_only(k) or self._autoscale())
        c("TER", lambda k: self._read_flag("ter") if self._query_only(k) else None)
        c("AER", lambda k: self._read_flag("aer") if self._query_only(k) else None)
        c("OPERegister:CONDition", lambda k: str(self._oper_condition()) if self._query_only(k) else None)
        c("OPERegister[:EVENt]", lambda k: str(self._oper_condition()) if self._query_only(k) else None)
        c("SYSTem:PRESet", lambda k: self._set_only(k) or self.reset())
        c("WAVeform:SOURce", lambda k: self._enum(k, "wav_source", self._sources(external=False)))
        c("WAVeform:FORMat", lambda k: self._enum(k, "wav_format", {"BYTE": "BYTE", "WORD": "WORD", "ASCii": "ASC"}))
        c("WAVeform:POINts:MODE", lambda k: self._enum(k, "wav_points_mode", {"NORMal": "NORM", "MAXimum": "MAX",
                                                                               "RAW": "RAW"}))
        c("WAVeform:POINts", self._wav_points)
        c("WAVeform:BYTeorder", lambda k: self._enum(k, "byteorder", {"LSBFirst": "LSBF", "MSBFirst": "MSBF"}))
        c("WAVeform:UNSigned", lambda k: self._flag(k, "unsigned"))
        c("WAVeform:PREamble", self._preamble)
        c("WAVeform:DATA", self._data)
        for i, name in enumerate(("XINCrement", "XORigin", "XREFerence", "YINCrement", "YORigin", "YREFerence")):
            c(f"WAVeform:{name}", lambda k, i=i: self._preamble_field(k, 4 + i))
        c("WAVeform:COUNt", lambda k: self._preamble_field(k, 3))
        c("WAVeform:TYPE", lambda k: {"NORM": "NORM", "AVER": "AVER", "HRES": "HRES", "PEAK": "PEAK"}[self.acq_type]
          if self._query_only(k) else None)
        self.reset()

    def reset(self) -> None:
        self.t_scale, self.t_pos, self.t_ref, self.t_mode = 100e-6, 0.0, "CENT", "MAIN"
        self.channels = {n: {"scale": 1.0, "offset": 0.0, "probe": 1.0, "coupling": "DC", "impedance": "ONEM",
                             "units": "VOLT", "display": n == 1, "bwlimit": False, "invert": False,
                             "label": str(n)} for n in range(1, 5)}
        self.acq_type, self.acq_mode, self.acq_count = "NORM", "RTIM", 8
        self.trig_mode, self.trig_source, self.trig_level, self.trig_slope = "EDGE", "CHAN1", 0.0, "POS"
        self.trig_sweep, self.trig_coupling = "AUTO", "DC"
        self.wav_source, self.wav_format, self.wav_points, self.wav_points_mode = "CHAN1", "BYTE", 1000, "NORM"
        self.byteorder, self.unsigned = "MSBF", True
        self.armed, self.running, self.ter, self.aer = False, True, False, False
        self.acquired: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # channel -> (t, v) of the bit line
        self.acquired_grid: tuple[float, float, int] | None = None  # (x_origin, sample interval, record points)
        self.acquired_avg = 1

    @staticmethod
    def _sources(external: bool) -> dict[str, str]:
        d = {f"CHANnel{n}": f"CHAN{n}" for n in range(1, 5)}
        if external:
            d["EXTernal"] = "EXT"
            d["LINE"] = "LINE"
        return d

    # -- generic handlers
    def _tnum(self, call: Call, attr: str, lo: float, hi: float, unit: str = "S"):
        if call.query:
            return _e(getattr(self, attr))
        setattr(self, attr, call.number(0, lo, hi, None, unit))

    def _t_range(self, call: Call):
        if call.query:
            return _e(self.t_scale * self.divisions_x)
        self.t_scale = call.number(0, 5e-9, 500.0, None, "S") / self.divisions_x

    def _int(self, call: Call, attr: str, lo: int, hi: int):
        if call.query:
            return str(getattr(self, attr))
        setattr(self, attr, call.integer(0, lo, hi))

    def _chan(self, call: Call) -> dict:
        n = call.suffix(0)
        if n not in self.channels:
            raise ScpiError(*SUFFIX_OUT_OF_RANGE)
        return self.channels[n]

    def _chan_num(self, call: Call, key: str, lo: float, hi: float, unit: str):
        ch = self._chan(call)
        if call.query:
            return _e(ch[key])
        ch[key] = call.number(0, lo, hi, None, unit)

    def _chan_range(self, call: Call):
        ch = self._chan(call)
        if call.query:
            return _e(ch["scale"] * self.divisions_y)
        ch["scale"] = call.number(0, 8e-3, 40.0, None, "V") / self.divisions_y

    def _chan_enum(self, call: Call, key: str, choices: dict[str, str]):
        ch = self._chan(call)
        if call.query:
            return ch[key]
        ch[key] = call.choice(choices)

    def _chan_flag(self, call: Call, key: str):
        ch = self._chan(call)
        if call.query:
            return "1" if ch[key] else "0"
        ch[key] = call.boolean()

    def _chan_label(self, call: Call):
        ch = self._chan(call)
        if call.query:
            return '"' + ch["label"].replace('"', '""') + '"'
        ch["label"] = call.string(0)[:10].upper()

    def _chan_summary(self, call: Call):
        n = call.suffix(0)
        ch = self._chan(call)
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return (f":CHAN{n}:RANG {ch['scale'] * self.divisions_y:+.2E};OFFS {ch['offset']:+.5E};"
                f"COUP {ch['coupling']};IMP {ch['impedance']};DISP {int(ch['display'])};BWL {int(ch['bwlimit'])};"
                f"INV {int(ch['invert'])};LAB \"{ch['label']}\";UNIT {ch['units']};PROB {ch['probe']:+.2E};"
                f"PROB:SKEW +0.00E+00;STYP SING")

    def _timebase_summary(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return (f":TIM:MODE {self.t_mode};REF {self.t_ref};MAIN:RANG {self.t_scale * self.divisions_x:+.2E};"
                f"POS {self.t_pos:+.1E}")

    def _view(self, call: Call, on: bool):
        if call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        name = call.choice(self._sources(external=False))
        self.channels[int(name[-1])]["display"] = on

    # -- acquisition: record length and sample rate follow the time base
    def _interleaved(self) -> bool:
        on = {n for n, ch in self.channels.items() if ch["display"]}
        return not ({1, 2} <= on or {3, 4} <= on)

    def sample_rate(self) -> float:
        max_rate = MAX_SAMPLE_RATE if self._interleaved() else MAX_SAMPLE_RATE / 2
        memory = MAX_MEMORY if self._interleaved() else MAX_MEMORY // 2
        span = self.t_scale * self.divisions_x
        return min(max_rate, _round_rate(memory / span))

    def record_points(self) -> int:
        span = self.t_scale * self.divisions_x
        memory = MAX_MEMORY if self._interleaved() else MAX_MEMORY // 2
        return int(min(memory, max(1, round(self.sample_rate() * span))))

    def _window(self) -> tuple[float, float, int]:
        span = self.t_scale * self.divisions_x
        start = {"LEFT": 0.0, "CENT": -span / 2, "RIGH": -span}[self.t_ref] + self.t_pos
        n = self.record_points()
        return start, span / n, n

    def _arm(self) -> None:
        """Arm one acquisition. Its trigger is the board's integration start on EXTernal;
        with a channel as the source the idle bit lines give no edge, so in AUTO sweep
        the scope auto-triggers at once (NORMal waits)."""
        self.armed, self.running, self.aer = True, False, True
        self.acquired = {}
        if self.trig_source != "EXT" and self.trig_sweep == "AUTO":
            self._capture(None)

    def _run(self) -> None:
        self.running, self.armed = True, False

    def _stop(self) -> None:
        self.running, self.armed = False, False

    def _digitize(self, call: Call):
        if call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        for i in range(len(call.args)):
            name = call.choice(self._sources(external=False), i)
            self.channels[int(name[-1])]["display"] = True
        self._arm()

    def _autoscale(self) -> None:
        v0 = float(getattr(getattr(self.array, "datasheet", None), "precharge_v", 0.8))
        for ch in self.channels.values():
            ch["scale"], ch["offset"], ch["coupling"] = max(0.01, 1.25 * v0 / 8), v0 / 2, "DC"
        self.t_scale, self.t_ref, self.t_pos = 1e-6, "CENT", 0.0
        self.trig_sweep, self.running = "AUTO", True

    def _read_flag(self, attr: str) -> str:
        value = getattr(self, attr)
        setattr(self, attr, False)
        return "+1" if value else "+0"

    def _oper_condition(self) -> int:
        return (8 if self.running else 0) | (32 if self.armed else 0)  # bit 3 Run, bit 5 Wait Trig

    def trigger(self, widths_s: np.ndarray) -> None:
        """The board started a VMM with ``widths_s`` (first vector): capture if armed."""
        with self.lock:
            if not (self.armed and self.trig_source == "EXT" and self.trig_slope in ("POS", "EITH", "ALT")
                    and self.trig_level < 3.3):
                return
            self._capture(np.asarray(widths_s, dtype=float))

    def _capture(self, widths_s: np.ndarray | None) -> None:
        """Record every probed bit line over the window (None: the idle line)."""
        self.acquired = {}
        for ch, col in self.wiring.scope_columns.items():
            if widths_s is None:
                t, v = self.array.capture_bitline(np.zeros(self._rows()), int(col))
                v = np.full_like(v, v[0])
            else:
                t, v = self.array.capture_bitline(widths_s, int(col))
            self.acquired[ch] = (np.asarray(t, dtype=float), np.asarray(v, dtype=float))
        self.acquired_grid = self._window()
        self.acquired_avg = self.acq_count if self.acq_type == "AVER" else 1
        self.armed, self.ter = False, True

    def _rows(self) -> int:
        geometry = getattr(self.array, "geometry", None)
        return int(getattr(geometry, "rows", 16))

    # -- transfer
    def _wav_points(self, call: Call):
        if call.query:
            return str(self._points_out())
        text = call.arg(0).upper()
        if text in ("MAX", "MAXIMUM"):
            self.wav_points = MAX_MEMORY
            return None
        self.wav_points = call.integer(0, 100, 8_000_000)

    def _available(self) -> int:
        record = (self.acquired_grid or self._window())[2]
        if self.wav_points_mode == "NORM":
            return min(record, NORMAL_POINTS_MAX)
        return record

    def _points_out(self) -> int:
        return max(1, min(self.wav_points, self._available()))

    def _y(self, ch: int) -> tuple[float, float, float, int]:
        """(y_increment, y_origin, y_reference, full-scale codes) of the source channel."""
        c = self.channels[ch]
        scale, offset = c["scale"], c["offset"]
        codes = 256 if self.wav_format == "BYTE" else 65536
        if self.wav_format == "ASC":
            codes = 65536
        return scale * self.divisions_y / codes, offset, codes // 2, codes

    def _source_channel(self) -> int:
        return int(self.wav_source[-1])

    def _preamble_values(self) -> list:
        ch = self._source_channel()
        x0, dx, record = self.acquired_grid or self._window()
        n = self._points_out() if ch in self.acquired else 0
        step = record * dx / max(n, 1)
        yinc, yorg, yref, _ = self._y(ch)
        fmt = {"BYTE": 0, "WORD": 1, "ASC": 4}[self.wav_format]
        kind = {"NORM": 0, "PEAK": 1, "AVER": 2, "HRES": 3}[self.acq_type]
        return [fmt, kind, n, self.acquired_avg, step, x0, 0, yinc, yorg, yref]

    def _preamble(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        f = self._preamble_values()
        return (f"{f[0]:+d},{f[1]:+d},{f[2]:+d},{f[3]:+d},{f[4]:+.6E},{f[5]:+.6E},{f[6]:+d},"
                f"{f[7]:+.6E},{f[8]:+.6E},{f[9]:+d}")

    def _preamble_field(self, call: Call, i: int):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        v = self._preamble_values()[i]
        return f"{v:+d}" if isinstance(v, int) else _e(v)

    def _volts(self, ch: int) -> np.ndarray:
        t, v = self.acquired[ch]
        x0, dx, record = self.acquired_grid
        n = self._points_out()
        grid = x0 + (record * dx / n) * np.arange(n)
        volts = np.interp(grid, t, v, left=v[0], right=v[-1])
        c = self.channels[ch]
        if c["invert"]:
            volts = -volts
        if self.noise:
            sigma = (0.005 * c["scale"] + 1e-4) / math.sqrt(self.acquired_avg)
            volts = volts + sigma * self.rng.standard_normal(n)
        return volts

    def _data(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        ch = self._source_channel()
        if ch not in self.acquired:
            raise ScpiError(*DATA_STALE)  # nothing acquired on that channel
        volts = self._volts(ch)
        if self.wav_format == "ASC":
            return ieee_block(",".join(f"{v:+.6E}" for v in volts).encode(), digits=8)
        yinc, yorg, yref, full = self._y(ch)
        codes = np.clip(np.round((volts - yorg) / yinc + yref), 0, full - 1).astype(np.int64)
        if not self.unsigned:
            codes = codes - full // 2
        if self.wav_format == "BYTE":
            data = codes.astype(np.uint8 if self.unsigned else np.int8).tobytes()
        else:
            dtype = np.dtype(np.uint16 if self.unsigned else np.int16).newbyteorder(
                "<" if self.byteorder == "LSBF" else ">")
            data = codes.astype(dtype).tobytes()
        return ieee_block(data, digits=8)


# ---------------------------------------------------------------- Lake Shore 336

#: Seconds of the closed loop's settling time constant on the chip stage by default (a
#: small heated stage on a cold plate under a tuned PID: tens of seconds).
THERMAL_TIME_CONSTANT_S = 20.0
#: rms temperature-reading noise (K) of a platinum RTD input at this temperature.
SENSOR_NOISE_K = 0.002
CURVES = {6: ("PT-100", "STANDARD", 3, 800.0, 2), 1: ("DT-470", "STANDARD", 2, 475.0, 1),
          7: ("PT-1000", "STANDARD", 3, 800.0, 2)}


class LakeShore336Emulator(ScpiDevice):
    """Lake Shore Model 336 temperature controller (User's Manual, chapter 6, Remote
    Operation), input A on the chip socket (a PT-100), outputs 1 and 2 heat the stage.

    The 336 has no SCPI error queue: errors set ``*ESR?`` bits (command error for an
    unknown command, execution error for a refused value). Replies end in CR LF.

    Thermal model: the stage follows its loop's target with a first-order time constant
    ``time_constant_s`` (default 20 s): closed-loop PID (``OUTMODE`` mode 1) on input A
    with the heater range on drives it to the set point, ramped at the ``RAMP`` rate
    when ramping is on; open loop (mode 3) to ambient plus ``MOUT`` power; everything
    off returns it to ambient. Set points of outputs 1 and 2 outside the chip socket's
    200-420 K are refused (execution error); the stage never leaves that range. The reading has 2 mK rms
    noise when the chip's noise is on.

    Implemented: ``KRDG?``, ``CRDG?``, ``SRDG?`` (A-D, 0 for all four), ``RDGST?``,
    ``TEMP?``, ``INTYPE``, ``INCRV``, ``CRVHDR?``, ``INNAME``, ``FILTER``, ``TLIMIT``,
    ``SETP``, ``RANGE``, ``RAMP``, ``RAMPST?``, ``OUTMODE``, ``PID``, ``MOUT``,
    ``HTRSET``, ``HTR?``, ``HTRST?``, ``AOUT?``, ``ANALOG``, ``WARMUP``, ``ATUNE``,
    ``TUNEST?``, ``ZONE``, ``MODE``, ``LOCK``, ``OPST?``, ``OPSTE``, ``OPSTR?``,
    ``MNMXRST``, ``MDAT?``, and ``*IDN?``, ``*RST``, ``*CLS``, ``*ESE``, ``*ESR?``,
    ``*SRE``, ``*STB?``, ``*OPC``, ``*WAI``, ``*TST?``.

    Not emulated: ``DISPLAY``/``DISPFLD``/``BRIGT``/``LEDS`` (front panel), ``ALARM``/
    ``RELAY`` (no alarm wiring on this bench), ``CRVPT``/``CRVDEL`` (user curve
    tables), ``IEEE``/``NET``/``WEBLOG`` (interface set-up), ``DFLT`` (factory reset).
    """

    idn = "LSCI,MODEL336,EMU0003/0000000,2.9"
    terminator = b"\r\n"
    inputs = ("A", "B", "C", "D")

    def __init__(self, array, wiring: Wiring | None = None, ambient_k: float | None = None, *,
                 time_constant_s: float = THERMAL_TIME_CONSTANT_S, noise: bool | None = None,
                 seed: int = 336, clock=time.monotonic):
        super().__init__()
        keep = [i for i, pat in enumerate(self.patterns) if pat not in ("*OPT", "*TRG")]  # not 336 commands
        self._table = [self._table[i] for i in keep]
        self.patterns = [self.patterns[i] for i in keep]
        self.array = array
        self.ambient_k = float(ambient_k if ambient_k is not None else array.temperature_k())
        self.time_constant_s = float(time_constant_s)
        if not self.time_constant_s >= 0:
            raise ValueError(f"time_constant_s={time_constant_s!r}; expected >= 0")
        self.noise = _noise_on(array, noise)
        self.rng = np.random.default_rng(seed)
        self.clock = clock
        self.stage_k = self._chip_k = float(array.temperature_k())
        self.last_t = clock()
        c = self.command
        c("KRDG", lambda k: self._reading(k, "K"))
        c("CRDG", lambda k: self._reading(k, "C"))
        c("SRDG", lambda k: self._reading(k, "S"))
        c("RDGST", self._rdgst)
        c("TEMP", lambda k: "+300.000" if self._query_only(k) else None)
        c("INTYPE", self._intype)
        c("INCRV", self._incrv)
        c("CRVHDR", self._crvhdr)
        c("INNAME", self._inname)
        c("FILTER", self._filter)
        c("TLIMIT", self._tlimit)
        c("SETP", self._setp)
        c("RANGE", self._range)
        c("RAMP", self._ramp)
        c("RAMPST", self._rampst)
        c("OUTMODE", self._outmode)
        c("PID", self._pid)
        c("MOUT", self._mout)
        c("HTRSET", self._htrset)
        c("HTR", self._htr)
        c("HTRST", self._htrst)
        c("AOUT", self._aout)
        c("ANALOG", self._analog)
        c("WARMUP", self._warmup)
        c("ATUNE", self._atune)
        c("TUNEST", lambda k: "0,0,0,000" if self._query_only(k) else None)
        c("ZONE", self._zone)
        c("MODE", lambda k: self._simple(k, "remote_mode", 0, 2))
        c("LOCK", self._lock)
        c("OPST", lambda k: str(self._opst()) if self._query_only(k) else None)
        c("OPSTE", lambda k: self._simple(k, "opste", 0, 255))
        c("OPSTR", lambda k: str(self._opst()) if self._query_only(k) else None)
        c("MNMXRST", lambda k: self._set_only(k) or self._minmax_reset())
        c("MDAT", self._mdat)
        self.reset()

    def reset(self) -> None:
        self.setpoint = {n: 0.0 for n in range(1, 5)}
        self.heater = {n: 0 for n in range(1, 5)}
        self.ramp = {n: (0, 0.1) for n in range(1, 5)}
        self.ramp_sp = {n: None for n in range(1, 5)}  # the ramping set point, None: not ramping
        self.outmode = {1: (1, 1, 0), 2: (1, 2, 0), 3: (0, 3, 0), 4: (0, 4, 0)}
        self.pid = {n: (50.0, 20.0, 0.0) for n in range(1, 5)}
        self.mout = {n: 0.0 for n in range(1, 5)}
        self.htrset = {1: (1, 2, 0.0, 1), 2: (1, 2, 0.0, 1)}
        self.intype = {n: (2, 1, 0, 1, 1) for n in self.inputs}  # PTC RTD, autorange, 0, compensation, kelvin
        self.curve = {n: 6 for n in self.inputs}
        self.names = {n: f"Input {n}" for n in self.inputs}
        self.filters = {n: (0, 10, 2) for n in self.inputs}
        self.tlimit = {n: 0.0 for n in self.inputs}
        self.analog = {3: (0, 1, 1, 100.0, 0.0, 0), 4: (0, 1, 1, 100.0, 0.0, 0)}
        self.warmup = {3: (0, 0.0), 4: (0, 0.0)}
        self.zones: dict = {}
        self.remote_mode, self.opste, self.lock_state = 1, 0, (0, 0)
        self.minmax = None
        self._advance()

    # -- the thermal model
    def _controls_chip(self, out: int) -> bool:
        mode, inp, _ = self.outmode[out]
        return out in (1, 2) and mode in (1, 2) and inp == 1 and self.heater[out] > 0

    def _target(self, now_sp: dict | None = None) -> float:
        target = self.ambient_k
        sp = now_sp or self._ramped()
        for out in (1, 2):
            mode, inp, _ = self.outmode[out]
            if self._controls_chip(out):
                target = sp[out]
            elif out in (1, 2) and mode == 3 and self.heater[out] > 0:
                target = self.ambient_k + 0.5 * self.mout[out] * self.heater[out]
        return target

    def _ramped(self) -> dict:
        return {n: (self.ramp_sp[n] if self.ramp_sp[n] is not None else self.setpoint[n]) for n in self.setpoint}

    def _advance(self) -> None:
        """Integrate the stage temperature up to now and put the chip there."""
        now = self.clock()
        dt, self.last_t = max(0.0, now - self.last_t), now
        steps = max(1, min(1000, int(dt / max(self.time_constant_s / 10, 1e-3)) + 1)) if dt > 0 else 0
        h = dt / steps if steps else 0.0
        for _ in range(steps):
            for out in (1, 2, 3, 4):  # set-point ramps move at their rate
                if self.ramp_sp[out] is not None:
                    rate = self.ramp[out][1] / 60.0
                    goal, cur = self.setpoint[out], self.ramp_sp[out]
                    cur = min(goal, cur + rate * h) if goal > cur else max(goal, cur - rate * h)
                    self.ramp_sp[out] = None if cur == goal else cur
            target = self._target()
            if self.time_constant_s > 0:
                self.stage_k = target + (self.stage_k - target) * math.exp(-h / self.time_constant_s)
            else:
                self.stage_k = target
        if self.time_constant_s == 0:
            self.stage_k = self._target()
        kelvin = min(max(self.stage_k, 200.0), 420.0)
        if kelvin != self._chip_k:
            self._chip_k = kelvin
            self.array.set_temperature_k(kelvin)

    def advance(self) -> None:
        """Bring the stage temperature up to now (the bench calls it before the chip is used)."""
        with self.lock:
            self._advance()

    def _change(self, table: dict, out, value) -> None:
        """Set ``table[out]`` after bringing the stage up to now (so time before counts)."""
        self._advance()
        table[out] = value

    # -- argument helpers
    @staticmethod
    def _out(call: Call, allowed=(1, 2, 3, 4), i: int = 0) -> int:
        n = call.integer(i, 0, 99)
        if n not in allowed:
            raise ScpiError(*ILLEGAL_VALUE)
        return n

    def _inp(self, call: Call, i: int = 0, allow_all: bool = False) -> str:
        name = call.arg(i).upper() if call.has(i) else "A"
        if name == "0" and allow_all:
            return "0"
        if name not in self.inputs:
            raise ScpiError(*ILLEGAL_VALUE)
        return name

    def _simple(self, call: Call, attr: str, lo: int, hi: int):
        if call.query:
            return str(getattr(self, attr))
        setattr(self, attr, call.integer(0, lo, hi))

    # -- inputs
    def _kelvin(self, name: str) -> float | None:
        if name != "A":
            return None  # no sensor on inputs B-D
        self._advance()
        t = self.stage_k
        if self.noise:
            t += SENSOR_NOISE_K * float(self.rng.standard_normal())
        if self.minmax is not None:
            self.minmax = (min(self.minmax[0], t), max(self.minmax[1], t))
        return t

    def _reading(self, call: Call, unit: str):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        name = self._inp(call, allow_all=True)
        names = self.inputs if name == "0" else (name,)
        out = []
        for n in names:
            t = self._kelvin(n)
            if t is None:
                out.append("+0.0000" if unit == "S" else "+000.000")
            elif unit == "K":
                out.append(f"+{t:.3f}")
            elif unit == "C":
                out.append(f"{t - 273.15:+.3f}")
            else:  # a PT-100: ohms (Callendar-Van Dusen, above 0 degC; linear below)
                tc = t - 273.15
                r = 100.0 * (1 + 3.9083e-3 * tc - 5.775e-7 * tc * tc)
                out.append(f"+{r:.4f}")
        return ",".join(out)

    def _rdgst(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return "000" if self._inp(call) == "A" else "128"  # 128: sensor units overrange

    def _intype(self, call: Call):
        name = self._inp(call)
        if call.query:
            return ",".join(str(x) for x in self.intype[name])
        vals = tuple(call.integer(i, 0, 8) for i in range(1, 6))
        if vals[0] > 5 or vals[4] not in (1, 2, 3):
            raise ScpiError(*ILLEGAL_VALUE)
        self.intype[name] = vals

    def _incrv(self, call: Call):
        name = self._inp(call)
        if call.query:
            return f"{self.curve[name]:02d}"
        self.curve[name] = call.integer(1, 0, 59)

    def _crvhdr(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)  # CRVHDR set writes user curves: not emulated
        n = call.integer(0, 1, 59)
        name, serial, fmt, limit, coeff = CURVES.get(n, ("User Curve", "", 3, 375.0, 1))
        return f"{name:<15},{serial:<10},{fmt},{limit:+.3f},{coeff}"

    def _inname(self, call: Call):
        name = self._inp(call)
        if call.query:
            return f"{self.names[name]:<15}"
        self.names[name] = call.string(1)[:15]

    def _filter(self, call: Call):
        name = self._inp(call)
        if call.query:
            on, pts, win = self.filters[name]
            return f"{on},{pts},{win}"
        self.filters[name] = (call.integer(1, 0, 1), call.integer(2, 2, 64), call.integer(3, 1, 10))

    def _tlimit(self, call: Call):
        name = self._inp(call)
        if call.query:
            return f"+{self.tlimit[name]:.4f}"
        self.tlimit[name] = call.number(1, 0.0, 2000.0)

    # -- outputs
    def _setp(self, call: Call):
        out = self._out(call)
        if call.query:
            return f"+{self.setpoint[out]:.3f}"
        value = call.number(1, 0.0, 1500.0)
        if out in (1, 2) and not 200.0 <= value <= 420.0:
            raise ScpiError(*DATA_OUT_OF_RANGE)  # the stage heaters: the chip socket's 200-420 K
        self._advance()
        # a ramp starts from the present set point while the loop runs, else from the stage
        start = self._ramped()[out]
        if not (self._controls_chip(out) and 200.0 <= start <= 420.0):
            start = self.stage_k
        self._change(self.setpoint, out, value)
        if self.ramp[out][0] and self.ramp[out][1] > 0 and start != value:
            self.ramp_sp[out] = start
        else:
            self.ramp_sp[out] = None

    def _range(self, call: Call):
        out = self._out(call)
        if call.query:
            return str(self.heater[out])
        value = call.integer(1, 0, 5)
        if value > (3 if out in (1, 2) else 1):
            raise ScpiError(*ILLEGAL_VALUE)
        was_off = self.heater[out] == 0
        self._change(self.heater, out, value)
        if was_off and value and self.ramp[out][0] and self.ramp[out][1] > 0:
            self.ramp_sp[out] = self.stage_k  # switched on: the ramp starts from the reading

    def _ramp(self, call: Call):
        out = self._out(call)
        if call.query:
            on, rate = self.ramp[out]
            return f"{on},{rate:+.1f}"
        self._advance()
        self.ramp[out] = (call.integer(1, 0, 1), call.number(2, 0.0, 100.0))
        if not self.ramp[out][0]:
            self.ramp_sp[out] = None

    def _rampst(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        out = self._out(call)
        self._advance()
        return "1" if self.ramp_sp[out] is not None else "0"

    def _outmode(self, call: Call):
        out = self._out(call)
        if call.query:
            return ",".join(str(x) for x in self.outmode[out])
        mode, inp, powerup = call.integer(1, 0, 5), call.integer(2, 0, 4), call.integer(3, 0, 1)
        if mode > (3 if out in (1, 2) else 5):
            raise ScpiError(*ILLEGAL_VALUE)
        self._change(self.outmode, out, (mode, inp, powerup))

    def _pid(self, call: Call):
        out = self._out(call, (1, 2))
        if call.query:
            return ",".join(f"{x:+07.1f}" for x in self.pid[out])
        self.pid[out] = (call.number(1, 0.1, 1000.0), call.number(2, 0.1, 1000.0), call.number(3, 0.0, 200.0))

    def _mout(self, call: Call):
        out = self._out(call)
        if call.query:
            return f"{self.mout[out]:+.2f}"
        self._change(self.mout, out, call.number(1, 0.0, 100.0))

    def _htrset(self, call: Call):
        out = self._out(call, (1, 2))
        if call.query:
            t, cur, user, disp = self.htrset[out]
            return f"{t},{cur},{user:+.3f},{disp}"
        first = 2 if len(call.args) == 6 else 1  # the Model 335's form has an output type first
        if first == 2 and call.integer(1, 0, 1) != 0:
            raise ScpiError(*ILLEGAL_VALUE)  # outputs 1 and 2 of the 336 are current outputs
        self.htrset[out] = (call.integer(first, 1, 2), call.integer(first + 1, 0, 4),
                            call.number(first + 2, 0.0, 2.0), call.integer(first + 3, 1, 2))

    def _output_percent(self, out: int) -> float:
        self._advance()
        mode = self.outmode[out][0]
        if self.heater[out] == 0 or mode == 0:
            return 0.0
        if mode == 3:
            return self.mout[out]
        if not self._controls_chip(out):
            return 0.0
        p = self.pid[out][0]
        err = self._ramped()[out] - self.stage_k
        hold = 5.0 + 1.5 * max(0.0, self.stage_k - self.ambient_k + 20.0) / self.heater[out]
        return min(100.0, max(0.0, hold + p * err * 0.1))

    def _htr(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return f"+{self._output_percent(self._out(call, (1, 2))):06.2f}"

    def _htrst(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        self._out(call, (1, 2))
        return "0"  # no heater open/short fault

    def _aout(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        return f"+{self._output_percent(self._out(call, (3, 4))):06.2f}"

    def _analog(self, call: Call):
        out = self._out(call, (3, 4))
        if call.query:
            a = self.analog[out]
            return f"{a[0]},{a[1]},{a[2]},{a[3]:+.3f},{a[4]:+.3f},{a[5]}"
        self.analog[out] = (call.integer(1, 0, 8), call.integer(2, 0, 4), call.integer(3, 1, 3),
                            call.number(4, -9999.0, 9999.0), call.number(5, -9999.0, 9999.0), call.integer(6, 0, 1))

    def _warmup(self, call: Call):
        out = self._out(call, (3, 4))
        if call.query:
            return f"{self.warmup[out][0]},{self.warmup[out][1]:+.2f}"
        self.warmup[out] = (call.integer(1, 0, 1), call.number(2, 0.0, 100.0))

    def _atune(self, call: Call):
        if call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        out = self._out(call, (1, 2))
        call.integer(1, 0, 2)
        if not self._controls_chip(out):
            raise ScpiError(*EXECUTION_ERROR)
        # the tuned loop this emulator assumes (settling at the time constant)
        self.pid[out] = (50.0, 20.0, 0.0)

    def _zone(self, call: Call):
        out = self._out(call, (1, 2))
        zone = call.integer(1, 1, 10)
        if call.query:
            return self.zones.get((out, zone), "+0000.000,+0050.0,+0020.0,+0000.0,+0000.00,0,0,+0000.0")
        fields = [call.arg(i) for i in range(2, 10)]
        self.zones[(out, zone)] = ",".join(fields)

    def _lock(self, call: Call):
        if call.query:
            return f"{self.lock_state[0]},{self.lock_state[1]:03d}"
        self.lock_state = (call.integer(0, 0, 1), call.integer(1, 0, 999))

    def _opst(self) -> int:
        self._advance()
        ramp_done = 0 if any(v is not None for v in self.ramp_sp.values()) else 0
        return ramp_done

    def _minmax_reset(self) -> None:
        t = self._kelvin("A")
        self.minmax = (t, t)

    def _mdat(self, call: Call):
        if not call.query:
            raise ScpiError(*UNDEFINED_HEADER)
        self._inp(call)
        lo, hi = self.minmax or (self.stage_k, self.stage_k)
        return f"+{lo:.3f},+{hi:.3f}"
