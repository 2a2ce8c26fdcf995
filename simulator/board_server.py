"""The board firmware emulator served over TCP on loopback, like a serial-to-Ethernet bridge.

``BoardServer(firmware).start()`` listens on 127.0.0.1; a host reaches it with
``serial.serial_for_url(server.url)`` (``socket://127.0.0.1:PORT``), i.e. with
``TestBoard(server.url)``. One host at a time, as on a serial port: a new connection
takes the board over from the previous one. The board's arm time-out keeps running
while no host is connected (checked every 0.1 s). ``baud=N`` paces both directions like an
8N1 UART at N baud (full duplex; the board answers a frame after its last byte arrived
plus its compute time).

``python -m simulator.board_server --seed 3 --baud 921600`` serves a fresh emulated chip
and prints its URL (used by the link benchmark to put the board in its own process).
"""

from __future__ import annotations

import argparse
import queue
import socket
import sys
import threading
import time
from collections import deque

from .firmware import BoardFirmware

BITS_PER_BYTE = 10
PACE_CHUNK_S = 0.002  # paced replies go out in slices of this much wire time
LOOPBACK = ("127.0.0.1", "localhost")


def _frames_of(data: bytes) -> list[bytes]:
    """``data`` cut after each delimiter, so that each frame is handled at its own time."""
    pieces, start = [], 0
    while (end := data.find(0, start)) >= 0:
        pieces.append(data[start : end + 1])
        start = end + 1
    if start < len(data):
        pieces.append(data[start:])
    return pieces


class _Connection:
    """One host connection: reader (timestamps input), board (paces and feeds the
    firmware) and writer (paces output, sends delayed replies) threads."""

    def __init__(self, server: "BoardServer", conn: socket.socket):
        self.server, self.conn = server, conn
        self.fw = server.firmware
        self.closed = threading.Event()
        self.inbox: queue.Queue[tuple[float, bytes] | None] = queue.Queue()
        self.outbox: queue.Queue[bytes] = queue.Queue()
        self.threads = [
            threading.Thread(target=self._guard, args=(f, n), name=f"board-{n}", daemon=True)
            for f, n in ((self._read, "reader"), (self._board, "board"), (self._write, "writer"))
        ]

    def start(self) -> None:
        self.fw.reset_link()
        for t in self.threads:
            t.start()

    def close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self.inbox.put(None)
            try:
                self.conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.conn.close()

    def join(self, timeout: float = 2.0) -> None:
        for t in self.threads:
            if t is not threading.current_thread():
                t.join(timeout)

    def _guard(self, target, name: str) -> None:
        try:
            target()
        except OSError:
            pass  # the host went away
        finally:
            self.close()

    def _read(self) -> None:
        while not self.closed.is_set():
            data = self.conn.recv(65536)
            if not data:
                return
            self.inbox.put((time.monotonic(), data))

    def _board(self) -> None:
        byte_s = self.server.byte_s
        rx_free = 0.0
        while True:
            item = self.inbox.get()
            if item is None or self.closed.is_set():
                return
            received, data = item
            for piece in _frames_of(data) if byte_s else (data,):
                if byte_s:
                    # the last byte of this piece is on the board one wire time after
                    # the previous piece (or after it was sent, whichever is later)
                    rx_free = max(received, rx_free) + len(piece) * byte_s
                    wait = rx_free - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                answer = self.fw.feed(piece)
                if answer:
                    self.outbox.put(answer)
                if self.fw.disconnected:
                    return  # the emulated cable is pulled: drop the connection

    def _write(self) -> None:
        """Sends answers; paced, each byte leaves at its wire time like from a UART FIFO
        (a late wake-up sends the overdue bytes at once, so no wire time is lost)."""
        byte_s = self.server.byte_s
        tx_free = 0.0
        fifo: deque[list] = deque()  # [data, bytes sent, start time]
        while not self.closed.is_set():
            due = self.fw.next_due()
            wait = PACE_CHUNK_S if fifo else 0.05
            if due is not None:
                wait = min(wait, max(0.0, due - self.fw.clock()))
            try:
                data = self.outbox.get(timeout=wait)
            except queue.Empty:
                data = b""
            data += self.fw.poll()
            if data and not byte_s:
                self.conn.sendall(data)
                continue
            now = time.monotonic()
            if data:
                start = max(now, tx_free)
                tx_free = start + len(data) * byte_s
                fifo.append([data, 0, start])
            while fifo:
                entry = fifo[0]
                ready = min(len(entry[0]), int((now - entry[2]) / byte_s))
                if ready > entry[1]:
                    self.conn.sendall(entry[0][entry[1] : ready])
                    entry[1] = ready
                if entry[1] < len(entry[0]):
                    break
                fifo.popleft()


class BoardServer:
    """Serves ``firmware`` on ``127.0.0.1:port`` (``port=0``: any free port)."""

    def __init__(self, firmware: BoardFirmware, host: str = "127.0.0.1", port: int = 0, baud: float | None = None):
        if host not in LOOPBACK:
            raise ValueError(f"host={host!r}; the board emulator only binds to loopback (127.0.0.1)")
        if baud is not None and not baud > 0:
            raise ValueError(f"baud={baud!r}; expected a positive number or None")
        self.firmware = firmware
        self.host, self.port = "127.0.0.1", int(port)
        self.byte_s = BITS_PER_BYTE / baud if baud else 0.0
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._conn: _Connection | None = None
        self._stop = threading.Event()

    @property
    def url(self) -> str:
        """pyserial URL of the board (``socket://127.0.0.1:PORT``)."""
        return f"socket://{self.host}:{self.port}"

    def start(self) -> "BoardServer":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        sock.listen(4)
        sock.settimeout(0.1)
        self._sock, self.port = sock, sock.getsockname()[1]
        self._thread = threading.Thread(target=self._accept, name="board-server", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        while not self._stop.is_set():
            self.firmware.watchdog()  # the board's arm timer runs with or without a host
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(None)
            if self._conn is not None:  # a new host takes the board over
                self._conn.close()
                self._conn.join()
            self._conn = _Connection(self, conn)
            self._conn.start()

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(2.0)
        if self._conn is not None:
            self._conn.close()
            self._conn.join()

    def __enter__(self) -> "BoardServer":
        return self.start() if self._sock is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="serve an emulated test board on 127.0.0.1")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--baud", type=float, default=None)
    ap.add_argument("--fault", action="append", default=[], metavar="KEY=VALUE", help="fault option, repeatable")
    args = ap.parse_args(argv)
    from .emulated import EmulatedArray, chip_from_options
    from .faults import FaultConfig

    faults = FaultConfig.from_options(dict(f.split("=", 1) for f in args.fault))
    fw = BoardFirmware(EmulatedArray(chip_from_options({"seed": str(args.seed)})), faults=faults)
    with BoardServer(fw, port=args.port, baud=args.baud) as server:
        print(server.url, flush=True)
        sys.stdin.read()  # serve until stdin closes
    return 0


if __name__ == "__main__":
    sys.exit(main())
