"""In-process pyserial URL handler: the board firmware emulator behind a serial port.

``serial.serial_for_url("labkitemu://?seed=3&drop=0.1&baud=921600")`` opens a port whose
other end is a :class:`~simulator.firmware.BoardFirmware` over a fresh emulated chip:

- chip options as for ``sim://`` (``seed``, ``preset``, non-ideality switches);
- fault options of :class:`~simulator.faults.FaultConfig` (``drop``, ``corrupt``, ...);
- ``baud=N``: pace the link like an 8N1 UART at N baud (both directions, full duplex;
  the board answers a frame after its last byte arrived plus its compute time);
- ``max_payload=N``: the board's frame limit.

``labkitemu://NAME`` connects to a firmware registered with :func:`attach` (tests use it
to keep hold of the firmware and its chip); its query may only carry ``baud``.

Importing this module registers the ``labkitemu`` scheme with pyserial (so does the
``labkit.serial_handlers`` entry point ``labkitemu = "simulator.urlhandler"``).
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from urllib.parse import parse_qsl, urlsplit

import serial
from serial.serialutil import PortNotOpenError, SerialBase, SerialException

from .faults import FaultConfig
from .firmware import MAX_PAYLOAD, BoardFirmware

SCHEME = "labkitemu"
HANDLER_PACKAGE = "simulator.urlhandler"
BITS_PER_BYTE = 10  # 8N1

_attached: dict[str, BoardFirmware] = {}
_attached_lock = threading.Lock()


def register() -> None:
    """Make ``labkitemu://`` URLs known to ``serial.serial_for_url``."""
    if HANDLER_PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.append(HANDLER_PACKAGE)


def attach(name: str, firmware: BoardFirmware) -> str:
    """Serve ``firmware`` at ``labkitemu://NAME``; returns that URL."""
    if not name.isidentifier():
        raise ValueError(f"emulated board name {name!r}; expected letters, digits and _")
    with _attached_lock:
        _attached[name] = firmware
    return f"{SCHEME}://{name}"


def detach(name: str) -> None:
    with _attached_lock:
        _attached.pop(name, None)


def firmware_from_url(url: str) -> tuple[BoardFirmware, float | None]:
    """The firmware a ``labkitemu://`` URL names (new or attached) and its pacing baud."""
    parts = urlsplit(url)
    if parts.scheme.lower() != SCHEME:
        raise ValueError(f"URL {url!r}; expected {SCHEME}://[NAME][?options]")
    try:
        opts = dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query)))
    except ValueError:
        raise ValueError(f"URL {url!r} has a malformed query") from None
    baud = None
    if "baud" in opts:
        raw = opts.pop("baud")
        try:
            baud = float(raw)
        except ValueError:
            baud = math.nan
        if not (math.isfinite(baud) and baud > 0):
            raise ValueError(f"baud={raw!r}; expected a positive number")
    name = parts.netloc
    if name:
        if opts:
            raise ValueError(f"{SCHEME}://{name} is an attached board; only 'baud' may be given, not {sorted(opts)}")
        with _attached_lock:
            if name not in _attached:
                raise ValueError(f"no emulated board attached as {name!r}")
            return _attached[name], baud
    fault_opts = {k: opts.pop(k) for k in list(opts) if k in FaultConfig.keys()}
    max_payload = int(opts.pop("max_payload", MAX_PAYLOAD))
    from .emulated import EmulatedArray, chip_from_options

    array = EmulatedArray(chip_from_options(opts), uri=url)
    return BoardFirmware(array, faults=FaultConfig.from_options(fault_opts), max_payload=max_payload), baud


class _Segment:
    """Reply bytes that arrive from ``start`` on at ``rate`` bytes/s."""

    __slots__ = ("data", "taken", "start", "rate")

    def __init__(self, data: bytes, start: float, rate: float):
        self.data, self.taken, self.start, self.rate = data, 0, start, rate

    def arrived(self, now: float) -> int:
        if now < self.start:
            return 0
        if math.isinf(self.rate):
            return len(self.data)
        return min(len(self.data), int((now - self.start) * self.rate))

    def next_byte_at(self) -> float:
        return self.start if math.isinf(self.rate) else self.start + (self.taken + 1) / self.rate


class Serial(SerialBase):
    """A serial port whose far end is an emulated test board (see module docstring)."""

    def __init__(self, *args, **kwargs):
        self.firmware: BoardFirmware | None = None
        self.pace_baud: float | None = None
        self._segments: deque[_Segment] = deque()
        self._tx_free = 0.0
        self._rx_free = 0.0
        self._lock = threading.RLock()
        super().__init__(*args, **kwargs)

    # -- pyserial plumbing
    def open(self) -> None:
        if self.is_open:
            raise SerialException("port is already open")
        if self._port is None:
            raise SerialException("port must be configured before it can be used")
        try:
            self.firmware, self.pace_baud = firmware_from_url(self.portstr)
        except ValueError as exc:
            raise SerialException(str(exc)) from None
        self.firmware.reset_link()
        self._segments.clear()
        self._tx_free = self._rx_free = time.monotonic()
        self.is_open = True

    def close(self) -> None:
        self.is_open = False
        self._segments.clear()

    def _reconfigure_port(self, *args, **kwargs) -> None:
        pass

    def _update_rts_state(self) -> None:
        pass

    def _update_dtr_state(self) -> None:
        pass

    def _update_break_state(self) -> None:
        pass

    @property
    def cts(self) -> bool:
        return True

    @property
    def dsr(self) -> bool:
        return True

    @property
    def ri(self) -> bool:
        return False

    @property
    def cd(self) -> bool:
        return True

    @property
    def out_waiting(self) -> int:
        return 0

    def flush(self) -> None:
        pass

    def reset_output_buffer(self) -> None:
        pass

    # -- the link
    @property
    def _byte_s(self) -> float:
        return BITS_PER_BYTE / self.pace_baud if self.pace_baud else 0.0

    def _check(self) -> None:
        if not self.is_open:
            raise PortNotOpenError()

    def _queue(self, data: bytes, ready: float) -> None:
        if self.pace_baud:
            start = max(ready, self._rx_free)
            self._rx_free = start + len(data) * self._byte_s
            self._segments.append(_Segment(data, start, 1.0 / self._byte_s))
        else:
            self._segments.append(_Segment(data, ready, math.inf))

    def write(self, data) -> int:
        self._check()
        data = bytes(data)
        with self._lock:
            if self.firmware.disconnected:
                raise SerialException("emulated test board disconnected")
            now = time.monotonic()
            arrived = now
            if self.pace_baud:
                arrived = max(now, self._tx_free) + len(data) * self._byte_s
                self._tx_free = arrived
            t0 = time.perf_counter()
            answer = self.firmware.feed(data)
            compute = time.perf_counter() - t0
            if answer:
                self._queue(answer, arrived + compute if self.pace_baud else time.monotonic())
        return len(data)

    def _pump(self, now: float) -> None:
        late = self.firmware.poll()
        if late:
            self._queue(late, now)

    def _take(self, size: int, now: float) -> bytes:
        out = bytearray()
        while self._segments and len(out) < size:
            seg = self._segments[0]
            n = min(seg.arrived(now) - seg.taken, size - len(out))
            if n <= 0:
                break
            out += seg.data[seg.taken : seg.taken + n]
            seg.taken += n
            if seg.taken == len(seg.data):
                self._segments.popleft()
        return bytes(out)

    @property
    def in_waiting(self) -> int:
        self._check()
        with self._lock:
            now = time.monotonic()
            self._pump(now)
            total = 0
            for seg in self._segments:
                got = seg.arrived(now) - seg.taken
                total += got
                if seg.taken + got < len(seg.data):
                    break
            return total

    def read(self, size: int = 1) -> bytes:
        self._check()
        deadline = None if self._timeout is None else time.monotonic() + self._timeout
        out = bytearray()
        while True:
            with self._lock:
                now = time.monotonic()
                self._pump(now)
                out += self._take(size - len(out), now)
                if len(out) >= size:
                    return bytes(out)
                if self.firmware.disconnected and not self._segments and not out:
                    raise SerialException("emulated test board disconnected")
                wake = [self._segments[0].next_byte_at()] if self._segments else []
                due = self.firmware.next_due()
                if due is not None:
                    wake.append(due)
            if deadline is not None and now >= deadline:
                return bytes(out)
            until = min(wake + ([deadline] if deadline is not None else []), default=now + 0.05)
            time.sleep(min(max(until - now, 0.0), 0.05))

    def reset_input_buffer(self) -> None:
        """Discard what has arrived so far (bytes still on the wire arrive later)."""
        self._check()
        with self._lock:
            now = time.monotonic()
            self._pump(now)
            while self._segments:
                seg = self._segments[0]
                seg.taken = seg.arrived(now)
                if seg.taken < len(seg.data):
                    break
                self._segments.popleft()


register()
