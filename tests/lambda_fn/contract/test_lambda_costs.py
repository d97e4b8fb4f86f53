"""The Lambda cost model the benchmarks and cdk/sizing.py read: Amdahl's law, the CPU share memory buys,
and the backfill's wall time and bill."""

from __future__ import annotations

import pytest

from lambda_fn.contract.lambda_costs import (
    Prices,
    amdahl_serial_fraction,
    amdahl_time,
    backfill_estimate,
    lambda_cpus,
)


def test_amdahl_recovers_the_serial_fraction_and_extrapolates():
    t1, serial = 10.0, 0.2
    t2 = amdahl_time(t1, serial, 2)
    assert t2 == pytest.approx(6.0)
    assert amdahl_serial_fraction(t1, t2) == pytest.approx(serial)
    assert amdahl_time(t1, serial, 6) == pytest.approx(10 * (0.2 + 0.8 / 6))


def test_amdahl_serial_fraction_is_clamped_to_what_the_law_allows():
    assert amdahl_serial_fraction(10.0, 4.0) == 0.0  # faster than linear: noise, not a negative serial part
    assert amdahl_serial_fraction(10.0, 12.0) == 1.0  # slower with two threads: nothing parallel


def test_lambda_cpus_is_the_memory_share_capped_by_threads():
    assert lambda_cpus(3008, 2) == pytest.approx(3008 / 1769)
    assert lambda_cpus(10240, 6) == pytest.approx(10240 / 1769)
    assert lambda_cpus(10240, 2) == 2.0
    assert lambda_cpus(1769, 2) == pytest.approx(1.0)


def test_backfill_estimate_counts_waves_and_bills_each_part():
    prices = Prices()
    e = backfill_estimate(
        10_000, batch=64, seconds_per_batch=4.0, concurrency=100, memory_mb=2048, init_s=3.0, prices=prices
    )
    assert e["invocations"] == 157 and e["waves"] == 2
    assert e["wall_s"] == pytest.approx(3.0 + 2 * 4.0)
    assert e["lambda_gb_s"] == pytest.approx(2.0 * (157 * 4.0 + 100 * 3.0))
    assert e["s3_gets"] == 10_000 + 157 * 3 and e["s3_puts"] == 157 + 10
    assert e["state_transitions"] == 2 * 157
    assert e["cost_usd"]["lambda_duration"] == pytest.approx(e["lambda_gb_s"] * prices.lambda_gb_s)
    assert e["total_usd"] == pytest.approx(sum(e["cost_usd"].values()))


def test_backfill_estimate_express_children_pay_per_request_and_duration_not_per_state():
    prices = Prices()
    kw = dict(batch=64, seconds_per_batch=2.05, concurrency=1000, memory_mb=3008, init_s=0.0, prices=prices)
    standard = backfill_estimate(64_000, children="standard", **kw)
    express = backfill_estimate(64_000, children="express", **kw)
    assert express["state_transitions"] == 1000 and standard["state_transitions"] == 2000
    # billed in 100 ms steps (2.1 s) of 64 MB
    expected = 1000 * (prices.express_request + 64 / 1024 * 2.1 * prices.express_gb_s)
    assert express["cost_usd"]["express_children"] == pytest.approx(expected)
    assert "express_children" not in standard["cost_usd"]
    with pytest.raises(ValueError):
        backfill_estimate(64_000, children="inline", **kw)
