import json

import numpy as np
import pytest

from lambda_fn.vision.indexing import exact_top_k, recall_at_k
from tests.helpers import SAMPLE_COUNT, build_index, with_copy
from training.evaluate import average_precision_at_k, get_args_parser, main, precision_at_k


def test_exact_top_k_on_hand_made_vectors():
    vectors = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0.5, 0, 0], [0, 0, 0, 1]], dtype=np.float32)
    assert exact_top_k(vectors, queries, 2, [None, None]).tolist()[0] == [0, 1]
    assert exact_top_k(vectors, queries, 1, [None, 3]).tolist()[1] != [3]  # excluded from its own results


def test_precision_and_map_known_answers():
    relevant = np.array([[True, False, True], [False, False, False]])
    assert precision_at_k(relevant, 1) == pytest.approx(0.5)
    assert precision_at_k(relevant, 3) == pytest.approx(2 / 6)
    # query 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / min(3, 2 relevant) = 0.8333; query 1: no relevant -> 0
    assert average_precision_at_k(relevant, np.array([2, 0]), 3) == pytest.approx((1 + 2 / 3) / 2 / 2)


def test_recall_known_answers():
    exact = np.array([[1, 2, 3, 4], [5, 6, 7, 8]])
    assert recall_at_k([[1, 2, 3, 4], [5, 6, 9, 10]], exact, 4) == pytest.approx((1.0 + 0.5) / 2)


def test_evaluate_reports_full_recall_when_search_k_covers_everything(artifacts_dir, sample_dir, tmp_path):
    out, sheet = tmp_path / "report.json", tmp_path / "sheet.png"
    args = get_args_parser().parse_args(
        [
            "--artifacts",
            str(artifacts_dir),
            "--images",
            str(sample_dir),
            "--search-k",
            "10,100000",
            "--out",
            str(out),
            "--sheet",
            str(sheet),
        ]
    )
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert report["queries"] == SAMPLE_COUNT
    by_k = {row["search_k"]: row for row in report["annoy"]}
    assert by_k[100000]["recall@10"] == pytest.approx(1.0)
    assert 0 <= by_k[10]["recall@10"] <= 1.0
    assert 0 <= report["retrieval"]["precision@10"] <= 1 and "mAP@5" in report["retrieval"]
    # with one result, average precision is precision
    assert report["retrieval"]["precision@1"] == pytest.approx(report["retrieval"]["mAP@1"])
    # the sample set holds no two copies of one picture: what users get (dedupe on) is the whole ranking
    served = report["service_retrieval"]
    assert report["near_duplicates"]["enabled"] and report["near_duplicates"]["groups"] == 0
    assert served["defaults"] == served["dedupe_off"]
    assert served["dedupe_off"]["precision@10"] == pytest.approx(report["retrieval"]["precision@10"])
    from PIL import Image

    with Image.open(sheet) as im:
        assert im.width > 500 and im.height > 500


def test_evaluate_reports_what_dedupe_takes_from_a_collection_with_a_copy(model_path, sample_dir, tmp_path):
    images, out = tmp_path / "images", tmp_path / "build"
    key, copy_key = with_copy(sample_dir, images)
    for photo in sorted(sample_dir.rglob("*.jpg"))[-2:]:  # 11 images: evaluate ranks 10 results
        (images / photo.relative_to(sample_dir)).write_bytes(photo.read_bytes())
    build_index(images, model_path, out, "--n-trees", "4")
    report_path = tmp_path / "report.json"
    args = ["--artifacts", str(out), "--images", str(images), "--out", str(report_path), "--sheet-rows", "1"]
    assert main(get_args_parser().parse_args(args)) == 0
    report = json.loads(report_path.read_text())
    assert [row["keys"] for row in report["near_duplicates"]["largest"]] == [sorted([key, copy_key])]
    served = report["service_retrieval"]
    # a classmate of the photo finds the photo and its copy among all 10 others without dedupe, the photo once with it
    assert served["defaults"]["precision@10"] < served["dedupe_off"]["precision@10"]
