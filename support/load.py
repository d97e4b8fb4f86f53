"""A bounded load on a local server: a fixed number of searches at a fixed concurrency from an async httpx
client, stopping at a time cap whatever happens; latency percentiles, errors and the server's resident memory
before and after (``bench.load`` reports it, the reliability suite checks it).
"""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from support.service import rss_kib

WARMUP_REQUESTS = 10


async def run_load(
    base: str, payloads: list[bytes], *, requests: int, concurrency: int, time_cap_s: float, k: int = 10
) -> dict:
    """Send up to ``requests`` searches with ``concurrency`` in flight; stop early at ``time_cap_s``."""
    latencies: list[float] = []
    errors: dict[str, int] = {}
    sent = 0
    started = time.perf_counter()
    deadline = started + time_cap_s

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal sent
        while sent < requests and time.perf_counter() < deadline:
            data = payloads[sent % len(payloads)]
            sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.post(f"/search?k={k}", content=data, headers={"Content-Type": "image/jpeg"})
                ok = r.status_code == 200 and len(r.json()["results"]) == k
                key = None if ok else f"HTTP {r.status_code}"
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                key = type(exc).__name__
            if key is None:
                latencies.append(time.perf_counter() - t0)
            else:
                errors[key] = errors.get(key, 0) + 1

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30.0) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ms = np.asarray(latencies) * 1000.0 if latencies else np.zeros(1)
    return {
        "requests_sent": sent,
        "ok": len(latencies),
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "stopped_by_time_cap": sent < requests,
        "concurrency": concurrency,
        "seconds": round(elapsed, 3),
        "requests_per_s": round(len(latencies) / elapsed, 2) if elapsed else 0.0,
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p95_ms": round(float(np.percentile(ms, 95)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "max_ms": round(float(ms.max()), 2),
    }


def measure(proc_pid: int, base: str, payloads: list[bytes], **load) -> dict:
    """Warm up, read RSS, run the load, read RSS again."""

    async def warm() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=60.0) as client:
            for i in range(WARMUP_REQUESTS):
                r = await client.post(
                    "/search", content=payloads[i % len(payloads)], headers={"Content-Type": "image/jpeg"}
                )
                r.raise_for_status()

    asyncio.run(warm())
    rss_before = rss_kib(proc_pid)
    result = asyncio.run(run_load(base, payloads, **load))
    rss_after = rss_kib(proc_pid)
    result.update(
        rss_before_mib=round(rss_before / 1024, 1),
        rss_after_mib=round(rss_after / 1024, 1),
        rss_growth_mib=round((rss_after - rss_before) / 1024, 1),
    )
    return result


def table(result: dict) -> str:
    rows = [
        ("requests ok / sent", f"{result['ok']} / {result['requests_sent']}"),
        ("errors", f"{result['errors']} {result['error_kinds'] or ''}".strip()),
        ("concurrency", str(result["concurrency"])),
        ("p50 / p95 / p99 (ms)", f"{result['p50_ms']} / {result['p95_ms']} / {result['p99_ms']}"),
        ("requests/s", str(result["requests_per_s"])),
        ("server RSS before -> after (MiB)", f"{result['rss_before_mib']} -> {result['rss_after_mib']}"),
        ("stopped by time cap", str(result["stopped_by_time_cap"])),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)
