"""Keysight InfiniiVision 2000/3000 X-Series oscilloscope: bit-line waveform capture.

Command set from the *Keysight InfiniiVision 3000 X-Series Oscilloscopes Programmer's
Guide*: ``:TIMebase:SCALe``, ``:TIMebase:POSition``, ``:TIMebase:REFerence``,
``:CHANnel<n>:SCALe``, ``:CHANnel<n>:OFFSet``, ``:TRIGger:MODE``,
``:TRIGger:EDGE:SOURce``, ``:TRIGger:EDGE:LEVel``, ``:TRIGger:EDGE:SLOPe``,
``:SINGle``, ``:WAVeform:SOURce``, ``:WAVeform:FORMat``, ``:WAVeform:POINts``,
``:WAVeform:BYTeorder``, ``:WAVeform:UNSigned``, ``:WAVeform:PREamble?``,
``:WAVeform:DATA?`` and ``:SYSTem:ERRor?``.

Wiring on the chip bench: scope channels probe chosen bit lines (the station file says
which column each channel sees); the board's integration-start output drives the
external trigger, so one armed single acquisition captures the next VMM.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .scpi import Instrument, InstrumentError, in_range, integer, one_of, parse_text, setting


@dataclass(frozen=True)
class Preamble:
    """``:WAVeform:PREamble?``: how to turn codes into seconds and volts."""

    format: int  # 0 BYTE, 1 WORD, 4 ASCii
    type: int  # 0 NORMal, 1 PEAK, 2 AVERage, 3 HRESolution
    points: int
    count: int
    x_increment: float
    x_origin: float
    x_reference: float
    y_increment: float
    y_origin: float
    y_reference: float

    @classmethod
    def parse(cls, text: str) -> "Preamble":
        f = text.strip().split(",")
        if len(f) != 10:
            raise ValueError(f"waveform preamble {text!r}; expected 10 comma-separated fields")
        return cls(int(f[0]), int(f[1]), int(f[2]), int(f[3]), *(float(x) for x in f[4:]))

    def times(self, n: int) -> np.ndarray:
        return (np.arange(n) - self.x_reference) * self.x_increment + self.x_origin

    def volts(self, codes: np.ndarray) -> np.ndarray:
        return (np.asarray(codes, dtype=float) - self.y_reference) * self.y_increment + self.y_origin


class KeysightInfiniiVision(Instrument):
    """InfiniiVision X-Series: channel ``channel`` (1-4) is the one set and read."""

    channel = 1  # template field of the per-channel settings below

    timebase_scale_s = setting(":TIM:SCAL", "Horizontal scale (s/div).", unit="s",
                               validator=in_range(1e-9, 50.0, "s"))
    timebase_position_s = setting(":TIM:POS", "Trigger-to-reference delay (s).", unit="s",
                                  validator=in_range(-500.0, 500.0, "s"))
    timebase_reference = setting(":TIM:REF", "Reference point: LEFT, CENTer or RIGHt.",
                                 validator=one_of("LEFT", "CENT", "RIGH"), fmt=str, parse=parse_text)
    channel_scale_v = setting(":CHAN{channel}:SCAL", "Vertical scale (V/div).", unit="V",
                              validator=in_range(1e-3, 5.0, "V"))
    channel_offset_v = setting(":CHAN{channel}:OFFS", "Vertical offset (V).", unit="V",
                               validator=in_range(-40.0, 40.0, "V"))
    trigger_mode = setting(":TRIG:MODE", "Trigger type (EDGE).", validator=one_of("EDGE"), fmt=str, parse=parse_text)
    trigger_source = setting(":TRIG:EDGE:SOUR", "Edge trigger source, e.g. EXTernal.",
                             validator=one_of("EXT", "CHAN1", "CHAN2", "CHAN3", "CHAN4"), fmt=str, parse=parse_text)
    trigger_level_v = setting(":TRIG:EDGE:LEV", "Trigger level (V).", unit="V", validator=in_range(-40.0, 40.0, "V"))
    trigger_slope = setting(":TRIG:EDGE:SLOP", "Trigger slope: POSitive or NEGative.",
                            validator=one_of("POS", "NEG"), fmt=str, parse=parse_text)
    waveform_source = setting(":WAV:SOUR", "Channel read by :WAV:DATA?.",
                              validator=one_of("CHAN1", "CHAN2", "CHAN3", "CHAN4"), fmt=str, parse=parse_text)
    waveform_format = setting(":WAV:FORM", "Data format: BYTE or WORD.",
                              validator=one_of("BYTE", "WORD"), fmt=str, parse=parse_text)
    waveform_points = setting(":WAV:POIN", "Points returned by :WAV:DATA?.",
                              validator=integer(100, 8_000_000), fmt=str, parse=lambda t: int(float(t)))
    waveform_byteorder = setting(":WAV:BYT", "WORD byte order: LSBFirst or MSBFirst.",
                                 validator=one_of("LSBF", "MSBF"), fmt=str, parse=parse_text)
    waveform_unsigned = setting(":WAV:UNS", "Unsigned data codes (1) or signed (0).",
                                validator=integer(0, 1), fmt=str, parse=lambda t: int(float(t)))

    def arm_single(self, channel: int, *, window_s: float, volts_per_div: float = 0.1,
                   offset_v: float = 0.7, trigger_level_v: float = 1.0) -> None:
        """Set up ``channel`` and the time base to capture ``window_s`` after an
        external rising trigger, then arm one acquisition (``:SINGle``)."""
        self.channel = integer(1, 4)(channel)
        self.timebase_reference = "LEFT"
        self.timebase_scale_s = window_s / 10.0
        self.timebase_position_s = 0.0
        self.channel_scale_v = volts_per_div
        self.channel_offset_v = offset_v
        self.trigger_mode = "EDGE"
        self.trigger_source = "EXT"
        self.trigger_slope = "POS"
        self.trigger_level_v = trigger_level_v
        self.write(":SING")
        self.check_errors(after=":SING")

    def fetch(self, channel: int, *, points: int = 1000) -> tuple[np.ndarray, np.ndarray]:
        """The acquired waveform of ``channel``: ``(times_s, volts)``, 16-bit words."""
        self.waveform_source = f"CHAN{integer(1, 4)(channel)}"
        self.waveform_format = "WORD"
        self.waveform_byteorder = "LSBF"
        self.waveform_unsigned = 1
        self.waveform_points = points
        pre = Preamble.parse(self.query(":WAV:PRE?"))
        if pre.points == 0:
            raise InstrumentError(self.name, [(0, "no acquired waveform (no trigger?)")], ":WAV:PRE?")
        codes = np.asarray(self.query_block(":WAV:DATA?", datatype="H"), dtype=float)
        self.check_errors(after=":WAV:DATA?")
        if codes.size == 0:
            raise InstrumentError(self.name, [(0, "empty waveform (no trigger?)")], ":WAV:DATA?")
        return pre.times(codes.size), pre.volts(codes)
