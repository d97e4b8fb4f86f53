"""Function sizes from the collection size: the figures agree with what bench/ measured, and reach the stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from aws_cdk.assertions import Template
from cdk_support import REPO_ROOT, build_stack, image_function

from cdk import sizing
from cdk.image import REINDEX_HANDLER, SEARCH_HANDLER
from cdk.search_function import SNAP_START_MAX_EPHEMERAL_STORAGE_MB
from lambda_fn.collection import pending

RESULTS = REPO_ROOT / "bench" / "results"
FIT = json.loads((RESULTS / "reindex_fit.json").read_text())["scaling"]
MEASURED_1E6 = json.loads((RESULTS / "reindex_1e6.json").read_text())["sizes"][0]
REINDEX_RUNS = json.loads((RESULTS / "reindex.json").read_text())["sizes"]
INGEST_PEAKS = json.loads((RESULTS / "ingest.json").read_text())["results"]
REQUEST_MEMORY = json.loads((RESULTS / "request_memory.json").read_text())["images"]
FP32_MODEL_MIB = 85


@pytest.mark.parametrize("scenario", ["backfill", "incremental"])
def test_reindex_figures_cover_the_measured_fit(scenario):
    # A rerun of bench.reindex that moves the fit past these figures (or far below them) fails here.
    fit = FIT[scenario]
    assert fit["peak_rss_mib"]["a"] <= sizing.REINDEX_BASE_MIB <= fit["peak_rss_mib"]["a"] * 1.05
    per_image = fit["peak_rss_mib"]["b_per_vector"]
    assert per_image <= sizing.REINDEX_MIB_PER_IMAGE <= per_image * 1.05
    files = fit["build_file_bytes_per_vector"]
    assert files["index"] <= sizing.INDEX_BYTES_PER_IMAGE <= files["index"] * 1.05
    assert files["keys"] <= sizing.KEYS_BYTES_PER_IMAGE <= files["keys"] * 2  # real keys run longer


def test_the_drain_allowance_covers_what_the_ingest_measured():
    # Draining embeds pending.DRAIN_CHUNK photos per ingest call: the ingest's peak at that batch, either model,
    # less what the reindex process held after its imports (torch included), which its base already counts.
    batch = f"/b{pending.DRAIN_CHUNK}/"  # the results are keyed "<model>/b<batch>/t<threads>"
    ingest_peak = max(run["peak_rss_mib"] for key, run in INGEST_PEAKS.items() if batch in key)
    imported = min(run["rss_after_imports_mib"] for size in REINDEX_RUNS for run in size["runs"].values())
    assert ingest_peak - imported <= sizing.REINDEX_DRAIN_MIB <= (ingest_peak - imported) * 1.05
    assert ingest_peak <= sizing.REINDEX_BASE_MIB + sizing.REINDEX_DRAIN_MIB  # a run that only drains fits too


@pytest.mark.parametrize("images", [1, 101_000, 182_000, 500_000, 1_000_000])
def test_the_reindex_has_room_for_the_merge_and_the_drain_together(images):
    # The model the drain loads stays loaded through the merge, and the drain holds the live collection.
    need = sizing.REINDEX_BASE_MIB + sizing.REINDEX_DRAIN_MIB + sizing.REINDEX_MIB_PER_IMAGE * images
    assert sizing.sizes_for(images).reindex_memory_mb >= need * sizing.HEADROOM


def test_a_million_images_get_what_the_measured_million_needed():
    n = MEASURED_1E6["n"]
    sizes = sizing.sizes_for(n)
    peak_rss = max(run["peak_rss_mib"] for run in MEASURED_1E6["runs"].values())
    assert peak_rss < sizes.reindex_memory_mb <= sizing.LAMBDA_MAX_MEMORY_MB
    files = MEASURED_1E6["build_files_bytes"]
    one_build_mib = (files["index"] + files["keys"]) / 2**20
    # a swap holds the old and the new build, plus the model
    assert 2 * one_build_mib + FP32_MODEL_MIB < sizes.search_ephemeral_storage_mb
    assert sizing.SEARCH_BASE_MIB + files["index"] / 2**20 < sizes.search_memory_mb
    # what the defaults could not hold
    assert sizes.reindex_memory_mb > sizing.REINDEX_MEMORY_FLOOR_MB
    assert sizes.search_ephemeral_storage_mb > sizing.SEARCH_EPHEMERAL_FLOOR_MB


def test_search_memory_holds_the_costliest_decode_the_limits_admit():
    # A rerun of bench.request_memory whose worst admitted image outgrows the allowance (or falls far below it)
    # fails here; refused images cost a few MiB and say nothing about the limit.
    decoded = [r["growth_mib"] for r in REQUEST_MEMORY.values() if r.get("outcome") == "decoded"]
    assert max(decoded) <= sizing.DECODE_ALLOWANCE_MIB <= max(decoded) * 1.05
    sizes = sizing.sizes_for(1_000_000)
    files = MEASURED_1E6["build_files_bytes"]
    held = sizing.SEARCH_BASE_MIB + files["index"] / 2**20 + max(decoded)
    assert held < sizes.search_memory_mb


@pytest.mark.parametrize("images", [1, 10_000, 101_000, 300_000, 500_000, 1_000_000])
def test_sizes_hold_the_collection_they_are_for(images):
    sizes = sizing.sizes_for(images)
    held = sizing.capacity(
        search_memory_mb=sizes.search_memory_mb,
        search_ephemeral_storage_mb=sizes.search_ephemeral_storage_mb,
        reindex_memory_mb=sizes.reindex_memory_mb,
    )
    assert held >= images - 1000  # capacity rounds down to a thousand
    assert sizes.search_memory_mb >= sizing.SEARCH_MEMORY_FLOOR_MB
    assert sizes.search_ephemeral_storage_mb >= sizing.SEARCH_EPHEMERAL_FLOOR_MB
    assert sizes.reindex_memory_mb >= sizing.REINDEX_MEMORY_FLOOR_MB


def test_small_collections_keep_the_defaults_and_the_defaults_hold_180_000():
    assert sizing.sizes_for(100_000) == sizing.FunctionSizes(
        100_000, sizing.SEARCH_MEMORY_FLOOR_MB, sizing.SEARCH_EPHEMERAL_FLOOR_MB, sizing.REINDEX_MEMORY_FLOOR_MB
    )
    held = sizing.capacity(
        search_memory_mb=sizing.SEARCH_MEMORY_FLOOR_MB,
        search_ephemeral_storage_mb=sizing.SEARCH_EPHEMERAL_FLOOR_MB,
        reindex_memory_mb=sizing.REINDEX_MEMORY_FLOOR_MB,
    )
    # the reindex's 3,008 MB runs out first (docs/scaling.md: ~310,000 for the merge alone, without headroom)
    assert 180_000 <= held < 200_000


def test_past_one_index_is_refused_with_the_reason():
    largest = sizing.largest_collection()
    assert 1_000_000 < largest < 1_270_000  # the fit's limit at 10,240 MB, less the headroom
    sizing.sizes_for(largest)
    with pytest.raises(ValueError, match=r"more than one Annoy index in Lambda holds.*-c vectorStore=s3vectors"):
        sizing.sizes_for(largest + 1000)
    with pytest.raises(ValueError, match="positive number"):
        sizing.sizes_for(0)


@pytest.fixture(scope="module")
def million_template(tmp_path_factory) -> Template:
    stack = build_stack(
        tmp_path_factory.mktemp("million"), collection_images=1_000_000, memory_quota_mb=sizing.LAMBDA_MAX_MEMORY_MB
    )
    return Template.from_stack(stack)


def test_the_stack_sizes_search_and_reindex_for_the_collection(million_template):
    sizes = sizing.sizes_for(1_000_000)
    search = image_function(million_template, SEARCH_HANDLER)
    assert search["MemorySize"] == sizes.search_memory_mb
    assert search["EphemeralStorage"] == {"Size": sizes.search_ephemeral_storage_mb}
    reindex = image_function(million_template, REINDEX_HANDLER)
    assert reindex["MemorySize"] == sizes.reindex_memory_mb
    assert reindex["EphemeralStorage"] == {"Size": sizing.LAMBDA_MAX_EPHEMERAL_STORAGE_MB}


def _collection_alarm(template: Template) -> dict:
    (alarm,) = [a for name, a in template.find_resources("AWS::CloudWatch::Alarm").items() if "CollectionSize" in name]
    (query,) = alarm["Properties"]["Metrics"]
    assert query["MetricStat"]["Metric"]["MetricName"] == "LiveVectors"
    return alarm["Properties"]


def test_the_collection_alarm_goes_off_before_the_sizes_run_out(million_template, template):
    sized = sizing.sizes_for(1_000_000)
    held = sizing.capacity(
        search_memory_mb=sized.search_memory_mb,
        search_ephemeral_storage_mb=sized.search_ephemeral_storage_mb,
        reindex_memory_mb=sized.reindex_memory_mb,
    )
    alarm = _collection_alarm(million_template)
    assert alarm["Threshold"] == int(held * 0.9) and alarm["ComparisonOperator"] == "GreaterThanThreshold"
    assert 1_000_000 * 0.9 <= alarm["Threshold"] < held
    assert "collectionImages" in alarm["AlarmDescription"]
    # the default stack alarms at 90% of what the default sizes hold
    assert _collection_alarm(template)["Threshold"] < 310_000 * 0.9


def test_explicit_sizes_win_over_the_collection(tmp_path):
    stack = build_stack(
        tmp_path,
        collection_images=1_000_000,
        function_options={"memory_mb": 4096},
        reindex_options={"memory_mb": 10240},
        memory_quota_mb=10240,
    )
    template = Template.from_stack(stack)
    assert image_function(template, SEARCH_HANDLER)["MemorySize"] == 4096
    assert image_function(template, REINDEX_HANDLER)["MemorySize"] == 10240
    # the rest still follows the collection
    sized = sizing.sizes_for(1_000_000)
    assert image_function(template, SEARCH_HANDLER)["EphemeralStorage"] == {"Size": sized.search_ephemeral_storage_mb}


def test_snap_start_takes_a_collection_that_fits_its_tmp_and_refuses_one_that_does_not(tmp_path):
    small = build_stack(tmp_path / "small", collection_images=50_000, function_options={"snap_start": True})
    search = image_function(Template.from_stack(small), SEARCH_HANDLER)
    assert search["EphemeralStorage"] == {"Size": SNAP_START_MAX_EPHEMERAL_STORAGE_MB}
    with pytest.raises(ValueError, match="SnapStart allows at most 512 MB of /tmp, and this collection needs"):
        build_stack(tmp_path / "big", collection_images=1_000_000, function_options={"snap_start": True})


def test_the_default_sizes_fit_a_new_account_up_to_the_collection_the_readme_names():
    # README, collectionImages: "above ~182,000 images the reindex needs more than 3,008 MB".
    assert sizing.sizes_for(182_000).reindex_memory_mb == sizing.NEW_ACCOUNT_MEMORY_MB
    assert sizing.sizes_for(183_000).reindex_memory_mb > sizing.NEW_ACCOUNT_MEMORY_MB


def test_a_collection_past_a_new_accounts_memory_maximum_is_refused_naming_the_quota(tmp_path):
    with pytest.raises(ValueError) as refused:
        build_stack(tmp_path, collection_images=1_000_000)
    message = str(refused.value)
    reindex_mb = sizing.sizes_for(1_000_000).reindex_memory_mb
    assert f"the reindex function is sized at {reindex_mb:,} MB for collectionImages=1,000,000" in message
    assert "'Function memory allocation'" in message and "-c memoryQuotaMb=" in message


@pytest.mark.parametrize(
    ("options", "function"),
    [
        ({"function_options": {"memory_mb": 4096}}, "search"),
        ({"ingest_options": {"memory_mb": 3072}}, "ingest"),
        ({"reindex_options": {"memory_mb": 3100}, "collection_images": 10_000}, "reindex"),
    ],
)
def test_every_function_sized_past_the_quota_is_refused_by_name(tmp_path, options, function):
    mb = next(iter(options.values()))["memory_mb"]
    # An explicit size is not blamed on the collection.
    with pytest.raises(ValueError, match=rf"the {function} function is sized at {mb:,} MB, above the 3,008 MB"):
        build_stack(tmp_path, **options)


def test_a_raised_quota_lets_the_sizes_through_up_to_it_and_no_further(tmp_path):
    build_stack(tmp_path / "raised", collection_images=1_000_000, memory_quota_mb=9856)
    with pytest.raises(ValueError, match="the reindex function is sized at 9,856 MB"):
        build_stack(tmp_path / "short", collection_images=1_000_000, memory_quota_mb=9000)
    with pytest.raises(ValueError, match="memoryQuotaMb=20000 must be between 3008"):
        build_stack(tmp_path / "past", memory_quota_mb=20000)


@pytest.mark.parametrize(
    ("value", "message"),
    [("2000000", "more than one Annoy index in Lambda holds"), ("lots", "must be a whole number")],
)
def test_the_cdk_app_refuses_a_bad_collection_size_without_a_traceback(value, message, tmp_path):
    # `npx cdk synth -c collectionImages=...` runs this module; the error must read as one line.
    env = {**os.environ, "CDK_CONTEXT_JSON": json.dumps({"collectionImages": value}), "CDK_OUTDIR": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "cdk.app"], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr[-2000:]
