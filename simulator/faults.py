"""Link and board faults injected by the board firmware emulator, seeded for reproducibility.

Configured from a dict of strings (a station file section, or the query of a
``labkitemu://`` URL): ``corrupt``, ``drop``, ``drop_request``, ``busy``, ``hw_fault`` and
``delay_p`` are probabilities in [0, 1]; ``delay`` is seconds; ``disconnect_after`` is a
frame count (0: never); ``fault_seed`` seeds the fault generator.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class FaultConfig:
    corrupt: float = 0.0  # per frame and direction: one byte flipped
    drop: float = 0.0  # an executed command's reply is lost (the command did happen)
    drop_request: float = 0.0  # a request is lost before the board sees it
    busy: float = 0.0  # the board answers BUSY and executes nothing
    hw_fault: float = 0.0  # the board answers HARDWARE_FAULT and executes nothing
    delay: float = 0.0  # s by which a reply is held back ...
    delay_p: float = 1.0  # ... with this probability (when delay > 0)
    disconnect_after: int = 0  # the link goes away after this many frames (0: never)
    fault_seed: int = 0

    PROBABILITIES = ("corrupt", "drop", "drop_request", "busy", "hw_fault", "delay_p")

    def __post_init__(self):
        for name in self.PROBABILITIES:
            p = getattr(self, name)
            if not (isinstance(p, (int, float)) and 0.0 <= p <= 1.0):
                raise ValueError(f"fault {name}={p!r}; expected a probability in [0, 1]")
        if not (isinstance(self.delay, (int, float)) and math.isfinite(self.delay) and self.delay >= 0):
            raise ValueError(f"fault delay={self.delay!r}; expected seconds >= 0")
        if not isinstance(self.disconnect_after, int) or self.disconnect_after < 0:
            raise ValueError(f"fault disconnect_after={self.disconnect_after!r}; expected a frame count >= 0")

    @classmethod
    def keys(cls) -> frozenset[str]:
        return frozenset(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_options(cls, options: Mapping[str, object] | None) -> "FaultConfig":
        """From strings or numbers (``{"drop": "0.1", "fault_seed": "3"}``); unknown keys
        are a ``ValueError``."""
        options = dict(options or {})
        unknown = set(options) - cls.keys()
        if unknown:
            raise ValueError(f"unknown fault option(s) {sorted(unknown)}; known: {sorted(cls.keys())}")
        values = {}
        for f in dataclasses.fields(cls):
            if f.name in options:
                raw = options[f.name]
                try:
                    values[f.name] = int(raw) if f.type in (int, "int") else float(raw)
                except (TypeError, ValueError):
                    raise ValueError(f"fault {f.name}={raw!r}; expected a number") from None
        return cls(**values)

    @classmethod
    def coerce(cls, faults) -> "FaultConfig":
        if faults is None:
            return cls()
        if isinstance(faults, cls):
            return faults
        return cls.from_options(faults)

    @property
    def active(self) -> bool:
        return self != FaultConfig(fault_seed=self.fault_seed)


class FaultInjector:
    """Draws the faults of one board; ``stats`` counts what was injected."""

    def __init__(self, config: FaultConfig):
        self.config = config
        self.rng = random.Random(config.fault_seed)
        self.stats: Counter[str] = Counter()

    def happens(self, name: str) -> bool:
        p = getattr(self.config, name)
        if p <= 0.0:
            return False
        hit = self.rng.random() < p
        if hit:
            self.stats[name] += 1
        return hit

    def maybe_corrupt(self, data: bytes) -> bytes:
        """``data`` with one byte flipped, with probability ``corrupt``."""
        if not data or not self.happens("corrupt"):
            return data
        i = self.rng.randrange(len(data))
        out = bytearray(data)
        out[i] ^= self.rng.randrange(1, 256)
        return bytes(out)

    def reply_delay(self) -> float:
        if self.config.delay > 0 and self.happens("delay_p"):
            return self.config.delay
        return 0.0
