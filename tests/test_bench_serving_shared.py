"""The shared-backend benchmark's bookkeeping: CPU per process role and the fixed-rate notes."""

from __future__ import annotations

import subprocess
import sys
import time

from benchmarks.bench_serving_shared import _cpu_by_role, notes


def test_cpu_is_attributed_to_the_replica_and_the_client() -> None:
    busy = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.4: pass\ntime.sleep(5)"
    child = subprocess.Popen([sys.executable, "-c", busy])
    try:
        before = _cpu_by_role([child.pid])
        deadline = time.monotonic() + 20
        while _cpu_by_role([child.pid])["service"] - before["service"] < 0.3:
            assert time.monotonic() < deadline, "the replica's CPU was never counted"
            time.sleep(0.05)
        t = time.process_time()
        while time.process_time() - t < 0.2:  # the client (this process) burns some too
            pass
        after = _cpu_by_role([child.pid])
    finally:
        child.kill()
    assert after["client"] - before["client"] >= 0.15
    assert set(after) == {"service", "client", "postgresql", "redis"}


def _point(rps: float, p99: float) -> dict:
    return {
        "requests_per_s": rps,
        "p50_ms": p99 / 2,
        "p99_ms": p99,
        "errors": 0,
        "cpu_us_per_request_by_process": {"service": 900.0, "client": 80.0},
        "cpu_us_per_request_all": 980.0,
        "requests_per_s_if_cpu_bound": 2041,
    }


def test_notes_say_up_to_which_fixed_rate_p99_stays_under_the_goal() -> None:
    params = {
        "concurrencies": [8],
        "goal": {"p99_ms_at_c8_shared": 10.0, "two_replica_throughput_ratio": 1.6},
    }
    sweep = [
        {"rate_per_s": r, "achieved_per_s": r, "p50_ms": 2.0, "p99_ms": p, "errors": {}, "lost": 0}
        for r, p in ((200.0, 4.0), (400.0, 9.5), (600.0, 31.0))
    ]
    r = {
        "embedded_sqlite_1_c8": _point(2000, 6.0),
        "shared_pg_redis_1_c8": _point(800, 16.0),
        "shared_pg_redis_2_c8": _point(900, 14.0),
        "ratio_2_vs_1_replica_c8": 1.12,
        "shared_pg_redis_2_rates": sweep,
    }
    text = "\n".join(notes(r, params))
    assert "p99 under 10 ms up to 400 req/s" in text
    assert "NOT met (16.0, 14.0 ms" in text
    assert "CPU per request, shared_pg_redis_1_c8: 980 µs in all (service 900, client 80)" in text
