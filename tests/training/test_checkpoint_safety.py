"""Checkpoints are read with ``torch.load(weights_only=True)``: one that carries a pickled object (a program)
is refused with a readable error and exit status 2, while the checkpoints training writes load as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.helpers import tiny_train_args
from training import export, train
from training.cli import EXIT_USAGE


class Planted:
    """What an attacker would put into a shared checkpoint: unpickling it calls ``os.mkdir(marker)``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (str(self.marker),)


@pytest.fixture
def planted(checkpoint_dir, tmp_path) -> tuple[Path, Path]:
    """A real checkpoint with one extra entry holding ``Planted``; returns (checkpoint, marker)."""
    state = torch.load(checkpoint_dir / "checkpoint.pt", map_location="cpu", weights_only=True)
    marker = tmp_path / "code-ran"
    path = tmp_path / "planted.pt"
    torch.save({**state, "note": Planted(marker)}, path)
    return path, marker


@pytest.mark.parametrize("name", ["checkpoint.pt", "best.pt"])
def test_the_checkpoints_training_writes_load_with_weights_only(checkpoint_dir, name):
    state = train.read_checkpoint(checkpoint_dir / name)
    assert {"model", "optimizer", "scheduler", "args", "classes", "epoch", "history"} <= set(state)
    assert isinstance(state["args"]["data"], str) and state["optimizer"]["param_groups"]


def test_export_refuses_a_checkpoint_carrying_an_object(planted, tmp_path, capsys):
    path, marker = planted
    assert export.cli(["--checkpoint", str(path), "--out", str(tmp_path / "model.pt")]) == EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}") and "posix.mkdir" in err and "weights_only" in err, err
    assert "Traceback" not in err
    assert not marker.exists() and not (tmp_path / "model.pt").exists()


def test_resume_refuses_a_checkpoint_carrying_an_object(planted, sample_dir, tmp_path, capsys):
    path, marker = planted
    argv = tiny_train_args(sample_dir, tmp_path / "out", "--head-epochs", "1", "--epochs", "1", "--resume", str(path))
    assert train.cli(argv) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"error: {path}" in err and "posix.mkdir" in err, err
    assert not marker.exists() and not (tmp_path / "out" / "checkpoint.pt").exists()


def test_initial_weights_refuse_a_file_carrying_an_object(planted):
    path, marker = planted
    with pytest.raises(train.CheckpointError, match=r"posix\.mkdir"):
        train.initial_weights(None, str(path))
    assert not marker.exists()


def test_a_file_that_is_not_a_checkpoint_is_a_readable_error(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(train.CheckpointError, match=f"{junk} is not a checkpoint"):
        train.read_checkpoint(junk)
