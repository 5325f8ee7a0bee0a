"""A lean HTTP/1.1 load generator for loopback tests and benchmarks.

Each of ``concurrency`` connections sends one request at a time over keep-alive and reads the
response by ``Content-Length``; the client does as little work per request as possible, since
it shares the machine's cores with the server it measures. Bounded by count and by time.
Connection errors (a killed server) end that connection's loop and are counted, not raised.
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

    def summary(self) -> dict[str, float]:
        lat = sorted(self.latencies_s)

        def pct(q: float) -> float:
            return lat[min(len(lat) - 1, int(q * len(lat)))] * 1e3 if lat else float("nan")

        return {"requests": self.completed, "requests_per_s": self.completed / self.elapsed_s if self.elapsed_s else 0.0,
                "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99), "max_ms": pct(1.0),
                "errors": sum(n for s, n in self.statuses.items() if s >= 500) + self.connection_errors,
                "non_2xx": sum(n for s, n in self.statuses.items() if s >= 300)}


def encode(host: str, path: str, body: Any, headers: dict[str, str] | None = None) -> bytes:
    """One HTTP/1.1 request: a JSON POST, or a GET when ``body`` is None."""
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    if body is None:
        return f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode()
    data = json.dumps(body, separators=(",", ":")).encode()
    return (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\n{extra}\r\n").encode() + data


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    i = lower.find(b"content-length:")
    length = int(head[i + 15:head.index(b"\r\n", i)]) if i >= 0 else 0
    return status, await reader.readexactly(length) if length else b""


async def run_load(host: str, port: int, make_request: RequestFn, *, concurrency: int, total: int,
                   duration_s: float, on_response: ResponseFn | None = None,
                   headers: dict[str, str] | None = None, warmup: int = 0) -> LoadResult:
    """Send up to ``total`` requests (plus follow-ups) within ``duration_s`` over ``concurrency``
    keep-alive connections. The first ``warmup`` responses are not timed."""
    result = LoadResult()
    counter = iter(range(total))
    deadline = time.perf_counter() + duration_s
    started = time.perf_counter()

    async def worker() -> None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
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
                writer.write(encode(host, path, body, headers))
                result.sent += 1
                status, data = await _read_response(reader)
                elapsed = time.perf_counter() - t0
                result.completed += 1
                if result.completed > warmup:
                    result.latencies_s.append(elapsed)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                pending = on_response(i, path, body, status, data) if on_response else None
        except (OSError, asyncio.IncompleteReadError, ValueError):
            result.connection_errors += 1
        finally:
            writer.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed_s = time.perf_counter() - started
    return result
