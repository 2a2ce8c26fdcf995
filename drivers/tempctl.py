"""Lake Shore Model 335/336 cryogenic temperature controller: set point and reading.

Command set from the *Model 336 Temperature Controller User's Manual* (Lake Shore),
chapter 6 "Remote Operation", command summary: ``KRDG?``, ``SETP``/``SETP?``,
``RANGE``/``RANGE?``, ``RAMP``/``RAMP?``, ``OUTMODE``, ``HTR?``, ``RDGST?``,
``*IDN?``, ``*RST``, ``*CLS`` and ``*ESR?``. The 335/336 has no SCPI error queue:
command, execution and query errors set bits of the standard event status register,
read (and cleared) by ``*ESR?``. Its Ethernet port serves these commands on a TCP
socket (port 7777).

Wiring on the chip bench: sensor input ``input`` sits on the chip socket; heater
output ``loop`` (1 or 2) heats it in closed-loop PID control.
"""

from __future__ import annotations

import time

from .scpi import Instrument, InstrumentError, in_range, integer, parse_text, setting, measurement

#: *ESR? bits -> meaning (Model 336 manual, standard event status register).
ESR_ERRORS = {2: (-400, "Query error"), 4: (-200, "Execution error"), 5: (-100, "Command error")}
HEATER_RANGES = {"off": 0, "low": 1, "medium": 2, "high": 3}


def _setpoint_ramp(text: str) -> tuple[bool, float]:
    on, rate = text.split(",")
    return bool(int(on)), float(rate)


class LakeShore336(Instrument):
    """Lake Shore 335/336: kelvin in, kelvin out."""

    loop = 1  # heater output / control loop used by the settings below
    input = "A"  # sensor input on the chip

    setpoint_k = setting("SETP {loop},{value}", "Control set point (K).", query="SETP? {loop}",
                         unit="K", validator=in_range(0.0, 500.0, "K"))
    heater_range = setting("RANGE {loop},{value}", "Heater range: 0 off, 1 low, 2 medium, 3 high.",
                           query="RANGE? {loop}", validator=integer(0, 3), fmt=str, parse=int, safety=True)
    control_mode = setting("OUTMODE {loop},{value}", "Output mode, control input, power-up enable "
                           "(e.g. '1,1,0': closed-loop PID on input A).", query="OUTMODE? {loop}",
                           fmt=str, parse=parse_text, safety=True)
    ramp = setting("RAMP {loop},{value}", "Set-point ramp: 'on,rate' with rate in K/min.",
                   query="RAMP? {loop}", fmt=str, parse=_setpoint_ramp)
    temperature_k = measurement("KRDG? {input}", "Sensor reading (K).")
    heater_percent = measurement("HTR? {loop}", "Heater output (% of range).")
    reading_status = measurement("RDGST? {input}", "Sensor status bits (0 = valid reading).", parse=int)

    def errors(self) -> list[tuple[int, str]]:
        """The 336 reports errors as *ESR? bits (reading clears them)."""
        esr = int(self.query("*ESR?"))
        return [ESR_ERRORS[bit] for bit in sorted(ESR_ERRORS) if esr & (1 << bit)]

    def regulate(self, kelvin, *, heater_range: str = "medium") -> None:
        """Closed-loop control of the chip at ``kelvin`` (K) on input ``input``."""
        if heater_range not in HEATER_RANGES:
            raise ValueError(f"heater_range={heater_range!r}; expected one of {sorted(HEATER_RANGES)}")
        channel = "ABCD".index(self.input) + 1
        self.control_mode = f"1,{channel},0"
        self.setpoint_k = kelvin
        self.heater_range = HEATER_RANGES[heater_range]
        self.check_errors(after="SETP")

    def wait_stable(self, tolerance_k: float = 0.1, timeout_s: float = 600.0, poll_s: float = 1.0) -> float:
        """Poll until the reading is within ``tolerance_k`` of the set point; returns K."""
        target = self.setpoint_k
        deadline = time.monotonic() + timeout_s
        while True:
            t = self.temperature_k
            if abs(t - target) <= tolerance_k:
                return t
            if time.monotonic() > deadline:
                raise InstrumentError(self.name, [(0, f"{t:g} K after {timeout_s:g} s, set point {target:g} K")],
                                      "wait_stable")
            time.sleep(poll_s)
