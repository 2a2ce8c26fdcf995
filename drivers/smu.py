"""Keithley Series 2400 SourceMeter (2400/2401/2410) as a voltage source, current meter.

Command set from the *Series 2400 SourceMeter User's Manual* (Keithley 2400S-900-01),
section 18 "SCPI Command Reference": ``:SOURce:FUNCtion``, ``:SOURce:VOLTage:MODE``,
``:SOURce:VOLTage[:LEVel]``, ``:SOURce:VOLTage:RANGe``, ``:SOURce:LIST:VOLTage``,
``[:SENSe]:FUNCtion``, ``[:SENSe]:CURRent:PROTection`` (the current compliance),
``[:SENSe]:CURRent:PROTection:TRIPped?``, ``[:SENSe]:CURRent:NPLCycles``,
``[:SENSe]:CURRent:RANGe``, ``:FORMat:ELEMents``, ``:TRIGger:COUNt``, ``:OUTPut``,
``:READ?`` and ``:SYSTem:ERRor?``.

Wiring on the chip bench: the SMU forces the gate (word-line) voltage of the cell that
the test board has routed to its analog test port and measures that cell's drain
current. Compliance protects the cell: the output cannot be switched on until a
compliance within the station's limit has been set in this session.
"""

from __future__ import annotations

import numpy as np

from labkit.units import si

from .scpi import (
    Instrument,
    InstrumentError,
    boolean,
    fmt_number,
    fmt_onoff,
    in_range,
    one_of,
    parse_bool,
    parse_float_list,
    parse_text,
    setting,
    measurement,
)

#: The 2400's source-memory list holds at most 100 points per sweep.
LIST_MAX_POINTS = 100


class ComplianceError(ValueError):
    """Output requested without a compliance, or with one above the allowed limit."""


class Keithley2400(Instrument):
    """Keithley 2400: source voltage, measure current; SI floats, Quantities accepted."""

    source_function = setting(":SOUR:FUNC", "Source function: VOLTage or CURRent.",
                              validator=one_of("VOLT", "CURR"), fmt=str, parse=parse_text, safety=True)
    source_mode = setting(":SOUR:VOLT:MODE", "Voltage source mode: FIXed, LIST or SWEep.",
                          validator=one_of("FIX", "LIST", "SWE"), fmt=str, parse=parse_text)
    source_range_v = setting(":SOUR:VOLT:RANG", "Voltage source range (V).", unit="V",
                             validator=in_range(-210.0, 210.0, "V"), safety=True)
    source_v = setting(":SOUR:VOLT:LEV", "Fixed source level (V).", unit="V",
                       validator=in_range(-210.0, 210.0, "V"), safety=True)
    source_delay_s = setting(":SOUR:DEL", "Settling delay after each source step (s).", unit="s",
                             validator=in_range(0.0, 999.9999, "s"))
    sense_function = setting(":SENS:FUNC", 'Measure function, e.g. "CURR".',
                             validator=one_of("CURR", "VOLT", "RES"), fmt=lambda v: f'"{v}"', parse=parse_text)
    compliance_a = setting(":SENS:CURR:PROT", "Current compliance (A).", unit="A",
                           validator=in_range(1e-12, 1.05, "A"), safety=True)
    current_range_a = setting(":SENS:CURR:RANG", "Current measure range (A).", unit="A",
                              validator=in_range(1e-12, 1.05, "A"))
    current_autorange = setting(":SENS:CURR:RANG:AUTO", "Current auto-range on/off.",
                                validator=boolean, fmt=fmt_onoff, parse=parse_bool)
    nplc = setting(":SENS:CURR:NPLC", "Integration time in power-line cycles.",
                   validator=in_range(0.01, 10.0))
    elements = setting(":FORM:ELEM", "Reading elements returned by :READ?.",
                       validator=one_of("CURR", "VOLT", "VOLT,CURR"), fmt=str, parse=parse_text)
    trigger_count = setting(":TRIG:COUN", "Readings per :READ? (sweep points).",
                            validator=in_range(1, 2500), fmt=lambda v: str(int(v)), parse=lambda t: int(float(t)))
    output = setting(":OUTP", "Output relay on/off (needs a compliance first).",
                     validator=boolean, fmt=fmt_onoff, parse=parse_bool, safety=True)
    tripped = measurement(":SENS:CURR:PROT:TRIP?", "True while the output is in current compliance.",
                          parse=parse_bool)
    readings = measurement(":READ?", "Trigger and return the readings (A).", parse=parse_float_list)

    def __init__(self, resource, *, max_compliance_a: float = 10e-6, **kw):
        super().__init__(resource, **kw)
        self.max_compliance_a = float(max_compliance_a)
        self._compliance: float | None = None

    # -- safety state
    def _on_set(self, command: str, value) -> None:
        if command.startswith(":SENS:CURR:PROT"):
            self._compliance = float(value)

    def _on_reset(self) -> None:
        self._compliance = None

    def __setattr__(self, name, value):
        # guard the output and the compliance before the descriptor writes anything
        if name == "output" and boolean(value):
            if self._compliance is None:
                raise ComplianceError(f"{self.name}: set compliance_a before switching the output on")
        if name == "compliance_a":
            amps = si(value, "A", "compliance_a")
            if float(amps) > self.max_compliance_a:
                raise ComplianceError(
                    f"compliance_a={float(amps):g} A is above the allowed {self.max_compliance_a:g} A"
                )
        super().__setattr__(name, value)

    # -- procedures
    def configure_voltage_source(self, compliance_a, *, nplc: float = 1.0, source_range_v=None) -> None:
        """Source V / measure I, fixed mode, current-only readings, given compliance (A)."""
        self.output = False
        self.source_function = "VOLT"
        self.source_mode = "FIX"
        if source_range_v is not None:
            self.source_range_v = source_range_v
        self.sense_function = "CURR"
        self.compliance_a = compliance_a
        self.current_autorange = True
        self.nplc = nplc
        self.elements = "CURR"
        self.trigger_count = 1

    def measure_current(self, gate_v) -> float:
        """Drain current (A) with the source at ``gate_v`` (V); output must be on."""
        self.source_v = gate_v
        (value,) = self.readings
        return value

    def sweep(self, gate_v, compliance_a, *, nplc: float = 1.0) -> np.ndarray:
        """Id-Vg: currents (A) at each gate voltage (V), by source-memory list sweeps.

        The output is switched on for the sweep and off afterwards, also on error.
        """
        v = np.atleast_1d(np.asarray(si(gate_v, "V", "gate_v"), dtype=float))
        if v.ndim != 1 or v.size == 0 or not np.all(np.isfinite(v)):
            raise ValueError(f"gate_v={gate_v!r}; expected a non-empty 1-D array of finite volts")
        self.configure_voltage_source(compliance_a, nplc=nplc)
        out = np.empty_like(v)
        self.output = True
        try:
            for start in range(0, v.size, LIST_MAX_POINTS):
                chunk = v[start : start + LIST_MAX_POINTS]
                self.source_mode = "LIST"
                self.write(":SOUR:LIST:VOLT " + ",".join(fmt_number(x) for x in chunk))
                self.trigger_count = chunk.size
                self.check_errors(after=":SOUR:LIST:VOLT")
                got = self.readings
                if len(got) != chunk.size:
                    raise InstrumentError(self.name, [(0, f"{len(got)} readings for {chunk.size} points")], ":READ?")
                out[start : start + chunk.size] = got
        finally:
            self.output = False
            self.source_mode = "FIX"
            self.trigger_count = 1
        return out
