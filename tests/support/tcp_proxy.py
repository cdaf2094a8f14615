"""A loopback TCP forwarder whose connections a test can cut, to simulate a dropped network link."""
from __future__ import annotations

import socket
import threading


class TcpProxy:
    """Forwards 127.0.0.1:<port> to 127.0.0.1:<target_port>.

    ``drop()`` resets every open connection (the peer sees the link die, the server side keeps running,
    as on a real network drop); ``block()`` makes new connections fail until ``unblock()``.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1"):
        self.target = (host, target_port)
        self._sock = socket.socket()
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self.port = self._sock.getsockname()[1]
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._blocked = False
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            if self._blocked:
                _reset(client)
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
                upstream.settimeout(None)
            except OSError:
                _reset(client)
                continue
            with self._lock:
                self._conns.update((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                with self._lock:
                    self._conns.discard(s)
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def drop(self) -> int:
        """Reset every open connection; returns how many sockets were cut."""
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for s in conns:
            _reset(s)
        return len(conns)

    def block(self) -> None:
        self._blocked = True
        self.drop()

    def unblock(self) -> None:
        self._blocked = False

    def close(self) -> None:
        self._closed = True
        self.drop()
        self._sock.close()


def _reset(s: socket.socket) -> None:
    import struct
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST, not FIN
        s.close()
    except OSError:
        pass
