"""A lean HTTP/1.1 load generator for loopback tests and benchmarks.

Each of ``concurrency`` connections sends one request at a time over keep-alive and reads the
response by ``Content-Length``; the client does as little work per request as possible, since
it shares the machine's cores with the server it measures: requests are encoded once per
distinct (path, body) (a body may also be given as ready JSON bytes), and :func:`load` runs
the client on uvloop when it is installed. Bounded by count and by time. Connection errors (a
killed server) end that connection's loop and are counted, not raised. The result carries the
client's own CPU time, so a benchmark can say what the client took from the server's cores.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

RequestFn = Callable[[int], tuple[str, Any]]
"""i -> (path, JSON body) of the i-th request."""
ResponseFn = Callable[[int, str, Any, int, bytes], "tuple[str, Any] | None"]
"""(i, path, body, status, response body) -> an optional follow-up request on the same connection."""


@dataclass
class LoadResult:
    sent: int = 0
    completed: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    connection_errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    client_cpu_s: float = 0.0  # CPU time of the client process over the run (all its threads)

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_s)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")

        return {
            "requests": self.completed,
            "requests_per_s": self.completed / self.elapsed_s if self.elapsed_s else 0.0,
            "p50_ms": pct(0.50),
            "p90_ms": pct(0.90),
            "p99_ms": pct(0.99),
            "max_ms": pct(1.0),
            "errors": sum(n for s, n in self.statuses.items() if s >= 500) + self.connection_errors,
            "non_2xx": sum(n for s, n in self.statuses.items() if s >= 300),
            "client_cpu_us_per_request": self.client_cpu_s / self.completed * 1e6
            if self.completed
            else 0.0,
        }


def encode(host: str, path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 request: a JSON POST, or a GET when ``body`` is None."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    data = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n{extra}\r\n"
    ).encode() + data


class _Connection(asyncio.Protocol):
    """One keep-alive connection, one request at a time; the response is cut from the received
    bytes by ``Content-Length`` (a bare protocol: no stream reader, one future per request)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        end = self.buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(self.buffer[:end]).lower()
        i = head.find(b"content-length:")
        j = head.find(b"\r\n", i) if i >= 0 else -1
        length = int(head[i + 15 : j if j >= 0 else None]) if i >= 0 else 0
        stop = end + 4 + length
        if len(self.buffer) < stop:
            return
        body = bytes(self.buffer[end + 4 : stop])
        del self.buffer[:stop]
        try:
            waiter.set_result((int(head[9:12]), body))
        except ValueError as error:
            waiter.set_exception(error)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    async def request(self, data: bytes) -> tuple[int, bytes]:
        if self.lost is not None:
            raise self.lost
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)  # type: ignore[union-attr]
        return await self.waiter


async def run_load(
    host: str,
    port: int,
    make_request: RequestFn,
    *,
    concurrency: int,
    total: int,
    duration_s: float,
    on_response: ResponseFn | None = None,
    headers: dict[str, str] | None = None,
    warmup: int = 0,
) -> LoadResult:
    """Send up to ``total`` requests (plus follow-ups) within ``duration_s`` over ``concurrency``
    keep-alive connections. The first ``warmup`` responses are not timed."""
    result = LoadResult()
    counter = iter(range(total))
    deadline = time.perf_counter() + duration_s
    started = time.perf_counter()
    cpu_started = time.process_time()
    encoded: dict[tuple[str, int], tuple[Any, bytes]] = {}

    def request_bytes(path: str, body: Any) -> bytes:
        """Encode once per distinct body object (the same object is not re-serialized)."""
        key = (path, id(body))
        hit = encoded.get(key)
        if hit is not None and hit[0] is body:
            return hit[1]
        data = encode(host, path, body, headers)
        if len(encoded) < 100_000:
            encoded[key] = (body, data)  # holds the body: its id cannot be reused meanwhile
        return data

    async def worker() -> None:
        try:
            transport, conn = await asyncio.get_running_loop().create_connection(
                _Connection, host, port
            )
        except OSError:
            result.connection_errors += 1
            return
        pending: tuple[str, Any] | None = None
        try:
            while time.perf_counter() < deadline:
                if pending is None:
                    i = next(counter, None)
                    if i is None:
                        return
                    pending = make_request(i)
                else:
                    i = -1
                path, body = pending
                t0 = time.perf_counter()
                result.sent += 1
                status, data = await conn.request(request_bytes(path, body))
                elapsed = time.perf_counter() - t0
                result.completed += 1
                if result.completed > warmup:
                    result.latencies_s.append(elapsed)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                pending = on_response(i, path, body, status, data) if on_response else None
        except (OSError, ValueError):
            result.connection_errors += 1
        finally:
            transport.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    result.client_cpu_s = time.process_time() - cpu_started
    return result


def load(host: str, port: int, make_request: RequestFn, **kw: Any) -> LoadResult:
    """:func:`run_load` in a fresh event loop (uvloop's when installed: a cheaper client)."""
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop ships with uvicorn[standard]
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(run_load(host, port, make_request, **kw))
