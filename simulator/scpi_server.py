"""Serve an emulated instrument on a loopback TCP socket, as LXI instruments do.

One :class:`ScpiServer` per instrument; newline-terminated commands in, newline-
terminated replies out (binary blocks too). Clients reach it with pyvisa-py as
``TCPIP::127.0.0.1::PORT::SOCKET`` with read/write termination ``"\\n"``. Binds to
127.0.0.1 only; port 0 picks a free port (see :attr:`ScpiServer.port`).
"""

from __future__ import annotations

import socket
import socketserver
import threading

from .scpi_device import ScpiDevice

LOOPBACK = "127.0.0.1"
MAX_LINE = 1 << 20
QUICKACK = getattr(socket, "TCP_QUICKACK", None)  # Linux  # a longer line without a newline is garbage: drop the connection


class _Handler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        server: ScpiServer = self.server.owner  # type: ignore[attr-defined]
        sock: socket.socket = self.request
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server._track(sock, True)
        buf = b""
        try:
            while True:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                if QUICKACK is not None:  # ack at once: a client's next small write
                    sock.setsockopt(socket.IPPROTO_TCP, QUICKACK, 1)  # must not wait on Nagle
                buf += chunk
                while b"\n" in buf:
                    raw, buf = buf.split(b"\n", 1)
                    line = raw.rstrip(b"\r").decode("ascii", errors="replace")
                    reply = server.device.handle(line)
                    if reply is not None:
                        data = reply if isinstance(reply, bytes) else reply.encode("ascii")
                        sock.sendall(data + b"\n")
                if len(buf) > MAX_LINE:
                    return
        except OSError:
            return
        finally:
            server._track(sock, False)


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True


class ScpiServer:
    """A running socket server for ``device``; use as a context manager or call :meth:`stop`."""

    def __init__(self, device: ScpiDevice, port: int = 0, host: str = LOOPBACK):
        if host != LOOPBACK:
            raise ValueError(f"host={host!r}; the virtual bench binds to {LOOPBACK} only")
        self.device = device
        self._server = _TCPServer((host, port), _Handler)
        self._server.owner = self  # type: ignore[attr-defined]
        self._clients: set[socket.socket] = set()
        self._clients_lock = threading.Lock()
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

    def _track(self, sock: socket.socket, add: bool) -> None:
        with self._clients_lock:
            (self._clients.add if add else self._clients.discard)(sock)

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
