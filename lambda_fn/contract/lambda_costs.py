"""Lambda's limits, prices and CPU share, and the arithmetic of time and cost the benchmarks and
``cdk/sizing.py`` read: plain facts, no boto3, torch or PIL.

Lambda gives one vCPU's worth of CPU time at 1,769 MB, in proportion to memory above and below
(https://docs.aws.amazon.com/lambda/latest/dg/configuration-memory.html); a function shows 2 cores up to
3,008 MB and 6 at 10,240 MB. docs/scaling.md says where each price comes from and when it was read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Lambda's own limits (memory and /tmp both top out at 10,240 MB; a run at most 15 minutes).
LAMBDA_MAX_MEMORY_MB = 10240
LAMBDA_MAX_EPHEMERAL_STORAGE_MB = 10240
LAMBDA_MAX_TIMEOUT_S = 900
# The most memory a new account may configure ("Function memory allocation"); AWS Support raises it on request.
NEW_ACCOUNT_MEMORY_MB = 3008
MB_PER_VCPU = 1769
LAMBDA_CONFIGS = {NEW_ACCOUNT_MEMORY_MB: 2, LAMBDA_MAX_MEMORY_MB: 6}  # memory (MB) -> cores it shows = torch threads


def amdahl_serial_fraction(t1: float, t2: float) -> float:
    """Serial fraction s of Amdahl's law T(p) = T(1) (s + (1 - s) / p) from the times at 1 and 2 threads."""
    return min(1.0, max(0.0, 2.0 * t2 / t1 - 1.0))


def amdahl_time(t1: float, serial: float, p: float) -> float:
    """Amdahl's law: the time at ``p`` parallel CPUs (fractional p = a share of CPU time, as Lambda gives)."""
    return t1 * (serial + (1.0 - serial) / p)


def lambda_cpus(memory_mb: int, threads: int) -> float:
    """CPUs a function's threads can keep busy: at most its threads, at most its share (memory / 1,769 MB)."""
    return min(float(threads), memory_mb / MB_PER_VCPU)


@dataclass(frozen=True)
class Prices:
    """On-demand prices in USD (us-east-1 / eu-west-1); docs/scaling.md says where each comes from and when."""

    lambda_gb_s: float = 0.0000166667  # x86, first 6 billion GB-s a month
    lambda_request: float = 0.20 / 1e6
    sfn_transition: float = 0.025 / 1000  # standard workflow; one per child execution a Distributed Map starts
    express_request: float = 1.00 / 1e6
    express_gb_s: float = 0.00001667  # express duration, billed in 64 MB chunks and 100 ms steps
    s3_put: float = 0.005 / 1000  # PUT, COPY, POST, LIST
    s3_get: float = 0.0004 / 1000  # GET, HEAD


def backfill_estimate(
    images: int,
    *,
    batch: int,
    seconds_per_batch: float,
    concurrency: int,
    memory_mb: int,
    init_s: float,
    children: str = "standard",
    prices: Prices = Prices(),
) -> dict:
    """Wall time and cost of embedding ``images`` with a Distributed Map: one child execution per batch
    (ItemBatcher), each invoking the ingest function once, at most ``concurrency`` at a time.

    Waves of ``concurrency`` invocations; each container pays ``init_s`` once (the first wave). The map is
    charged one state transition per child execution it starts; a STANDARD child adds one per state (its one
    Task), an EXPRESS child is billed per request and per 100 ms of 64 MB instead. S3 requests as
    ``lambda_fn.collection.ingest`` makes them: per image one GET; per batch a HEAD (is the shard there), two GETs
    (manifest, model pointer) and one PUT (the shard); the map's listing is one LIST per 1,000 keys.
    """
    if children not in ("standard", "express"):
        raise ValueError(f"children must be standard or express, not {children!r}")
    invocations = math.ceil(images / batch)
    waves = math.ceil(invocations / concurrency)
    containers = min(concurrency, invocations)
    wall_s = init_s + waves * seconds_per_batch
    gb_s = memory_mb / 1024 * (invocations * seconds_per_batch + containers * init_s)
    gets = images + invocations * 3
    puts = invocations + math.ceil(images / 1000)
    transitions = invocations * (2 if children == "standard" else 1)
    cost = {
        "lambda_duration": gb_s * prices.lambda_gb_s,
        "lambda_requests": invocations * prices.lambda_request,
        "sfn_transitions": transitions * prices.sfn_transition,
        "s3_requests": gets * prices.s3_get + puts * prices.s3_put,
    }
    if children == "express":
        billed_s = math.ceil(seconds_per_batch * 10) / 10
        cost["express_children"] = invocations * (prices.express_request + 64 / 1024 * billed_s * prices.express_gb_s)
    return {
        "images": images,
        "batch": batch,
        "concurrency": concurrency,
        "memory_mb": memory_mb,
        "children": children,
        "invocations": invocations,
        "waves": waves,
        "wall_s": wall_s,
        "lambda_gb_s": gb_s,
        "state_transitions": transitions,
        "s3_gets": gets,
        "s3_puts": puts,
        "cost_usd": cost,
        "total_usd": sum(cost.values()),
    }
