"""The real PostgreSQL and Redis for tests and benchmarks, isolated, and outages without touching
them: a uuid-named PostgreSQL schema and Redis key prefix per run (dropped afterwards), and a
small TCP proxy in front of a server that a test cuts (every connection reset, new ones
refused) and restores, while the server itself keeps running for everybody else.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
import uuid
from collections.abc import Iterator

PG_URL = os.environ.get("NEXTOFFER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("NEXTOFFER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def missing_servers() -> list[str]:
    """The servers that do not answer (empty: both are there)."""
    missing = []
    try:
        import psycopg

        with psycopg.connect(PG_URL, connect_timeout=3) as con:
            con.execute("SELECT 1")
    except Exception as error:  # noqa: BLE001 - any failure means "not there"
        missing.append(f"PostgreSQL at {PG_URL} ({type(error).__name__})")
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as error:  # noqa: BLE001
        missing.append(f"Redis at {REDIS_URL} ({type(error).__name__})")
    return missing


@contextlib.contextmanager
def pg_schema(prefix: str = "nextoffer_test") -> Iterator[str]:
    """A fresh schema name (created by whoever uses it), dropped with everything in it after."""
    import psycopg

    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    try:
        yield name
    finally:
        with psycopg.connect(PG_URL, autocommit=True, connect_timeout=5) as con:
            con.execute(f"DROP SCHEMA IF EXISTS {name} CASCADE")  # type: ignore[arg-type]


@contextlib.contextmanager
def redis_prefix(prefix: str = "nextoffer-test") -> Iterator[str]:
    """A fresh key prefix; every key under it is deleted after."""
    import redis

    name = f"{prefix}-{uuid.uuid4().hex[:12]}:"
    try:
        yield name
    finally:
        client = redis.Redis.from_url(REDIS_URL)
        keys = list(client.scan_iter(match=name + "*", count=1000))
        for i in range(0, len(keys), 1000):
            client.delete(*keys[i : i + 1000])
        client.close()


def with_port(url: str, port: int) -> str:
    """``url`` pointing at 127.0.0.1:``port`` instead (through a :class:`TcpProxy`)."""
    scheme, rest = url.split("://", 1)
    auth, _, hostpath = rest.rpartition("@")
    path = hostpath.split("/", 1)[1] if "/" in hostpath else ""
    return f"{scheme}://{auth + '@' if auth else ''}127.0.0.1:{port}/{path}"


class TcpProxy:
    """Forwards 127.0.0.1:``port`` to ``target``; :meth:`cut` resets every connection and refuses
    new ones (what a stopped server looks like to its clients), :meth:`restore` accepts again."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def cut(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            sockets, self._sockets = self._sockets, set()
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        for s in sockets:
            with contextlib.suppress(OSError):
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.shutdown(socket.SHUT_RD)  # wakes the pipe thread blocked in recv
            s.close()  # linger 0: a reset, as from a dead server

    def close(self) -> None:
        self.cut()

    @property
    def is_cut(self) -> bool:
        return self._listener is None

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._sockets |= {client, upstream}
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
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            with self._lock:
                self._sockets.discard(src)
                self._sockets.discard(dst)
