import json
import os

import torch

from tests.helpers import TEST_CROP, run_module, tiny_train_args
from training.train import accuracy, get_args_parser, main


def test_one_short_epoch_reduces_the_loss_and_checkpoints(checkpoint_dir):
    history = json.loads((checkpoint_dir / "history.json").read_text())
    before = history[0]
    assert before["phase"] == "before"
    last = history[-1]
    assert [h["phase"] for h in history] == ["before", "head", "full"]
    assert last["val"]["loss"] < before["val"]["loss"]
    assert last["train"]["images_per_s"] > 0 and 0 <= last["val"]["top1"] <= last["val"]["top3"] <= 1
    state = torch.load(checkpoint_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    assert {"model", "optimizer", "scheduler", "args", "classes", "epoch"} <= set(state)
    assert state["args"]["crop_size"] == TEST_CROP and state["epoch"] == 1
    assert (checkpoint_dir / "best.pt").is_file()


def test_resume_continues_from_the_next_epoch(checkpoint_dir, sample_dir, tmp_path):
    out = tmp_path / "resumed"
    args = get_args_parser().parse_args(
        tiny_train_args(
            sample_dir, out, "--head-epochs", "1", "--epochs", "2", "--resume", str(checkpoint_dir / "checkpoint.pt")
        )
    )
    assert main(args) == 0
    history = json.loads((out / "history.json").read_text())
    epochs = [h["epoch"] for h in history]
    assert epochs == [-1, 0, 1, 2]  # the earlier history is kept; only epoch 2 was trained now
    assert torch.load(out / "checkpoint.pt", weights_only=False)["epoch"] == 2


def test_accuracy_counts_top_k_hits():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.0], [0.5, 0.1, 0.3, 0.2], [0.0, 0.1, 0.2, 0.7]])
    labels = torch.tensor([1, 2, 0])
    assert accuracy(logits, labels) == [1, 2]


def test_imagenet_weights_offline_fail_with_instructions(sample_dir, tmp_path):
    # No cached weights, and every download goes to a closed loopback port: fails fast, like offline.
    env = {
        **os.environ,
        "TORCH_HOME": str(tmp_path / "torch"),
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "HTTP_PROXY": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
    }
    proc = run_module(
        "training.train",
        "--data",
        str(sample_dir),
        "--weights",
        "imagenet",
        "--epochs",
        "0",
        "--head-epochs",
        "0",
        "--output-dir",
        str(tmp_path / "out"),
        env=env,
        timeout=300,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "--weights none" in proc.stderr and str(tmp_path / "torch") in proc.stderr
    assert "resnet34-" in proc.stderr


def test_bad_dataset_path_is_a_readable_cli_error(tmp_path):
    proc = run_module("training.train", "--data", str(tmp_path / "missing"), "--weights", "none", timeout=120)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
