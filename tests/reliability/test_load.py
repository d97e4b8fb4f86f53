"""A small version of ``bench/load.py``: bounded concurrent searches against the real local server.

100 searches at concurrency 4 (stopping at 60 s whatever happens): zero errors, and the server's resident
memory grows by less than RSS_GROWTH_BOUND_MIB between a warmed-up server and the end of the load.
"""

from __future__ import annotations

import pytest

from support.load import measure, table
from support.service import start_local_server_process

# After warm-up the model, index and allocator pools are in place; 100 more requests may touch a few more
# pages (glibc arenas per uvicorn worker thread) but must not grow with the request count.
RSS_GROWTH_BOUND_MIB = 48


@pytest.mark.slow
def test_bounded_load_has_no_errors_and_no_memory_growth(artifacts_dir, sample_dir, tally):
    payloads = [p.read_bytes() for p in sorted(sample_dir.glob("*/*.jpg"))[:8]]
    assert payloads
    with start_local_server_process(artifacts_dir, sample_dir, threads=1) as (base, proc):
        result = measure(proc.pid, base, payloads, requests=100, concurrency=4, time_cap_s=60.0, k=5)
        assert proc.poll() is None, "the server died under load"
    print("\n" + table(result))
    tally["load requests"] += result["requests_sent"]
    tally["load errors"] += result["errors"]
    assert result["errors"] == 0, result["error_kinds"]
    assert result["ok"] == 100 and not result["stopped_by_time_cap"]
    assert result["p99_ms"] < 5000
    assert result["rss_growth_mib"] < RSS_GROWTH_BOUND_MIB, result
