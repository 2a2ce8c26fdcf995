"""Serve an emulated instrument on a loopback TCP socket, as LXI instruments do.

One :class:`ScpiServer` per instrument; LF-terminated commands in (a CR before the LF
is dropped), replies out with the instrument's own terminator (LF; CR LF for the
Lake Shore), binary blocks too. Clients reach it with pyvisa-py as
``TCPIP::127.0.0.1::PORT::SOCKET``. Binds to 127.0.0.1 only; port 0 picks a free port
(see :attr:`ScpiServer.port`).

Robustness: a line longer than ``max_line`` bytes is discarded up to its terminator
with one ``-223,"Too much data"`` in the error queue (memory per connection stays
below ``max_line`` plus one receive); at most ``max_clients`` connections at once
(more are closed at once, as an instrument's socket limit); each connection has its
own thread, and the instrument lock is held per command, never while a reply is sent.
"""

from __future__ import annotations

import socket
import socketserver
import threading

from .scpi_device import TOO_MUCH_DATA, ScpiDevice

LOOPBACK = "127.0.0.1"
MAX_LINE = 1 << 18  # 256 KiB: longer lines are answered with -223 and discarded
MAX_CLIENTS = 64
SEND_TIMEOUT_S = 30.0  # a client that stops reading its replies is dropped
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: ScpiServer = self.server.owner  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        if not server._track(sock, True):
            return
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._serve(server, sock)
        except OSError:
            return
        finally:
            server._track(sock, False)

    @staticmethod
    def _serve(server: "ScpiServer", sock: socket.socket) -> None:
        device = server.device
        term = device.terminator
        buf = bytearray()
        discarding = False
        while True:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:  # an idle client stays connected; only sends time out
                continue
            if not chunk:
                return
            if QUICKACK is not None:  # ack at once: a client's next small write
                sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # must not wait on Nagle
            start = 0
            while True:
                nl = chunk.find(b"\n", start)
                if nl < 0:
                    break
                piece = chunk[start:nl]
                start = nl + 1
                if discarding:
                    discarding = False
                    buf.clear()
                    continue
                if buf:
                    buf += piece
                    raw, buf = bytes(buf), bytearray()
                else:
                    raw = piece
                if len(raw) > server.max_line:
                    with device.lock:
                        device.push_error(*TOO_MUCH_DATA)
                    continue
                line = raw.rstrip(b"\r").decode("ascii", errors="replace")
                reply = device.handle(line)
                if reply is not None:
                    data = reply if isinstance(reply, bytes) else reply.encode("ascii", errors="replace")
                    sock.sendall(data + term)
            if not discarding:
                buf += chunk[start:]
                if len(buf) > server.max_line:  # no terminator in sight: drop it as it comes
                    buf.clear()
                    discarding = True
                    with device.lock:
                        device.push_error(*TOO_MUCH_DATA)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128


class ScpiServer:
    """A running socket server for ``device``; use as a context manager or call :meth:`stop`."""

    def __init__(self, device: ScpiDevice, port: int = 0, host: str = LOOPBACK, *,
                 max_line: int = MAX_LINE, max_clients: int = MAX_CLIENTS):
        if host != LOOPBACK:
            raise ValueError(f"host={host!r}; the virtual bench binds to {LOOPBACK} only")
        self.device = device
        self.max_line, self.max_clients = int(max_line), int(max_clients)
        self._server = _TCPServer((host, port), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
        self.refused = 0
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name=f"scpi-{type(device).__name__}", daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    @property
    def resource(self) -> str:
        """The VISA resource name of this server."""
        return f"TCPIP::{LOOPBACK}::{self.port}::SOCKET"

    @property
    def clients(self) -> int:
        with self._clients_lock:
            return len(self._clients)

    def _track(self, sock: socket.socket, add: bool) -> bool:
        with self._clients_lock:
            if add:
                if len(self._clients) >= self.max_clients:
                    self.refused += 1
                    return False
                sock.settimeout(SEND_TIMEOUT_S)
                self._clients.add(sock)
            else:
                self._clients.discard(sock)
        return True

    def stop(self) -> None:
        """Stop accepting, drop every connection, and join the server thread."""
        self._server.shutdown()
        self._server.server_close()
        with self._clients_lock:
            for sock in list(self._clients):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._clients.clear()
        self._thread.join(timeout=2.0)

    def __enter__(self) -> "ScpiServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
