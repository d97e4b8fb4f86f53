"""The pure helpers behind bench/ingest.py, bench/reindex.py and bench/swap.py: the thread-scaling estimate,
the n log n fit and the limits solved from it, phase timing and window statistics."""

from __future__ import annotations

import math
import time

import pytest

from bench.ingest import PhaseTimer
from bench.reindex import fit_linear, fit_nlogn, largest_n
from bench.swap import window_stats


def test_fit_nlogn_recovers_the_constant():
    ns = [1e4, 1e5, 1e6]
    ts = [3e-6 * n * math.log2(n) for n in ns]
    assert fit_nlogn(ns, ts) == pytest.approx(3e-6)


def test_fit_linear_with_several_points_and_with_one():
    a, b = fit_linear([1e4, 1e5], [700.0, 1600.0])
    assert b == pytest.approx(0.01) and a == pytest.approx(600.0)
    assert fit_linear([100.0], [50.0]) == (0.0, 0.5)


def test_largest_n_solves_a_growing_cost_for_its_limit():
    n = largest_n(lambda n: 600 + 0.01 * n, 10_240)
    assert n == pytest.approx(964_000, rel=2e-3)
    assert 600 + 0.01 * n <= 10_240
    assert largest_n(lambda n: 1e9, 10) == 0  # not even the smallest size fits
    assert largest_n(lambda n: 0.0, 10, hi=10**6) == 10**6  # everything fits: the search bound


def test_phase_timer_spans_parallel_downloads_and_sums_the_rest():
    timer = PhaseTimer()
    for start, end in ((0.0, 1.0), (0.5, 2.0), (0.2, 1.5)):  # three overlapping downloads
        timer.add("download", start, end)
    timer.add("decode", 2.0, 2.5)
    timer.add("decode", 2.5, 3.25)
    timer.add("embed", 3.25, 4.25)
    s = timer.summary()
    assert s == {"download_s": 2.0, "decode_s": 1.25, "embed_s": 1.0, "write_s": 0.0}
    timer.reset()
    assert timer.summary()["download_s"] == 0.0


def test_window_stats_groups_searches_by_start_time():
    records = [(t, t + 0.05, ms, "b") for t, ms in ((0.0, 10.0), (1.0, 20.0), (2.0, 30.0), (5.0, 99.0))]
    w = window_stats(records, [(0.0, 1.5), (1.9, 2.1)])
    assert w["searches"] == 3 and w["p50_ms"] == 20.0 and w["max_ms"] == 30.0
    assert window_stats(records, [(10.0, 11.0)]) == {"searches": 0}


def test_cpu_counters_see_this_process_working():
    from bench.harness import machine_busy_s, process_cpu_s

    busy0, own0 = machine_busy_s(), process_cpu_s()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    own = process_cpu_s() - own0
    assert own >= 0.2  # clock ticks are 10 ms
    assert machine_busy_s() - busy0 >= own - 0.05  # the machine's count includes ours


def _fit(**over) -> dict:
    fit = {
        "scenario": "backfill",
        "threads": 2,
        "build_s_per_nlog2n": 1e-5,
        "build_serial_fraction": 0.2,
        "rest_s": {"a": 1.0, "b_per_vector": 1e-5},
        "build_file_bytes_per_vector": {"index": 2700.0, "keys": 40.0, "collection": 2200.0},
    }
    return {**fit, **over}


def test_predict_reindex_scales_the_build_by_amdahl_and_adds_the_rest():
    from bench.reindex import predict_reindex_s

    n = 10**6
    here = 1e-5 * n * math.log2(n)  # measured at 2 threads
    t1 = here / (0.2 + 0.8 / 2)
    expected = t1 * (0.2 + 0.8 / 6) + 1.0 + 10.0
    assert predict_reindex_s(_fit(), n, 6, with_s3=False) == pytest.approx(expected)
    # no serial fraction measured: the build is taken as measured, whatever the CPUs
    assert predict_reindex_s(_fit(build_serial_fraction=None), n, 6, with_s3=False) == pytest.approx(here + 11.0)


def test_s3_seconds_backfill_pays_per_shard_incremental_per_byte_of_the_live_collection():
    from bench.reindex import S3_MB_S, S3_REQUEST_S, s3_seconds
    from lambda_fn.collection.reindex import SHARD_DOWNLOADS

    per = _fit()["build_file_bytes_per_vector"]
    n = 640_000
    upload = n * sum(per.values()) / 2**20 / S3_MB_S
    backfill = s3_seconds(n, "backfill", per)
    assert backfill == pytest.approx(math.ceil(n / 64 / SHARD_DOWNLOADS) * S3_REQUEST_S + upload)
    incremental = s3_seconds(n, "incremental", per)
    assert incremental == pytest.approx(S3_REQUEST_S + n * 2200 / 2**20 / S3_MB_S + upload)


def test_plan_adds_s3_time_to_the_estimated_batch_and_checks_the_reindex_against_lambda():
    from bench.ingest import PLAN_BATCH, S3_REQUEST_S, plan, s3_batch_seconds

    assert s3_batch_seconds(64) == pytest.approx(8 * S3_REQUEST_S + 4 * S3_REQUEST_S)
    one = {"decode_cpu_s": 0.15, "download_s": 0.02, "write_s": 0.0, "other_s": 0.03, "embed_cpu_s": 1.1}
    ingest_report = {"results": {f"int8/b{PLAN_BATCH}/t1": one}, "thread_scaling": {"int8": {"serial_fraction": 1.0}}}
    fit = _fit(peak_rss_mib={"a": 600.0, "b_per_vector": 0.0105}, peak_scratch_mib={"a": 0.0, "b_per_vector": 0.005})
    rows = plan(ingest_report, {"scaling": {"backfill": fit}}, {"int8": 2.5, "fp32": 3.0})
    assert {r["model"] for r in rows} == {"int8"}  # no fp32 measurement, no fp32 rows
    assert len(rows) == 2 * 3 * 2  # memory sizes x collection sizes x concurrencies
    row = next(r for r in rows if (r["memory_mb"], r["images"], r["concurrency"]) == (3008, 10**6, 1000))
    # serial fraction 1: no gain from a second CPU for the embed, which takes its single-thread time; the
    # decode runs a thread per CPU
    cpus = 3008 / 1769
    assert row["seconds_per_batch"] == pytest.approx(0.05 + 0.15 / cpus + 1.1 + s3_batch_seconds(64))
    assert row["wall_s"] == pytest.approx(2.5 + 16 * row["seconds_per_batch"])  # 15,625 batches: 16 waves
    ideal = 0.05 + (0.15 + 1.1) / cpus + s3_batch_seconds(64)
    assert row["perfect_scaling"]["seconds_per_batch"] == pytest.approx(ideal)
    assert row["perfect_scaling"]["total_usd"] < row["total_usd"]
    assert row["reindex"]["peak_rss_mib"] == pytest.approx(600 + 10_500)
    assert not row["reindex"]["fits_lambda"]  # 11,100 MiB > 10,240 MB
    small = next(r for r in rows if (r["memory_mb"], r["images"], r["concurrency"]) == (3008, 10**5, 100))
    assert small["reindex"]["fits_lambda"]


def test_thread_scaling_takes_the_fastest_probe_of_each_thread_count():
    from bench.ingest import thread_scaling

    probes = [
        {"threads": 1, "wall_s": 1.3, "others_cpus": 1.5},
        {"threads": 1, "wall_s": 1.0, "others_cpus": 0.1},
        {"threads": 2, "wall_s": 0.9, "others_cpus": 1.8},
        {"threads": 2, "wall_s": 0.6, "others_cpus": 0.5},
    ]
    sc = thread_scaling(probes)
    assert (sc["t1"]["min_s"], sc["t2"]["min_s"]) == (1.0, 0.6)
    assert sc["t1"]["quiet_min_s"] == 1.0 and sc["t2"]["quiet_min_s"] is None
    assert sc["serial_fraction"] == pytest.approx(0.2) and sc["from"].startswith("all")
    # once both thread counts have a quiet repetition, only quiet ones count
    probes.append({"threads": 2, "wall_s": 0.7, "others_cpus": 0.0})
    sc = thread_scaling(probes)
    assert sc["serial_fraction"] == pytest.approx(0.4) and sc["from"] == "quiet repetitions"


def test_lambda_estimates_scale_the_single_thread_embed_and_the_decode_and_keep_the_other_phases():
    from bench.ingest import lambda_estimates

    one = {"decode_cpu_s": 0.3, "download_s": 0.02, "write_s": 0.01, "other_s": 0.07, "embed_cpu_s": 1.2}
    est = lambda_estimates({"int8/b64/t1": one}, 64, "int8", {"serial_fraction": 0.1})
    cpus, big = 3008 / 1769, 10240 / 1769
    # decode runs a thread per CPU; the embed follows Amdahl's law; download, write and the rest stay
    assert est["3008"]["seconds"] == pytest.approx(0.1 + 0.3 / cpus + 1.2 * (0.1 + 0.9 / cpus))
    assert est["3008"]["seconds_perfect_scaling"] == pytest.approx(0.1 + 0.3 / cpus + 1.2 / cpus)
    assert est["10240"]["threads"] == 6
    assert est["10240"]["images_per_s"] == pytest.approx(64 / (0.1 + 0.3 / big + 1.2 * (0.1 + 0.9 / big)))
    assert lambda_estimates({"int8/b64/t1": one}, 64, "int8", None) == {}


def test_cold_starts_reads_the_median_per_model():
    from bench.ingest import cold_starts

    report = {"models": {"fp32": {"ours_median_s": 2.7}, "int8": {"ours_median_s": 2.1}}, "avx2": {}}
    assert cold_starts(report) == {"fp32": 2.7, "int8": 2.1}
    assert cold_starts({}) == {}
