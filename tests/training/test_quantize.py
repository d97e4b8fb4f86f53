"""int8 export: the interface, agreement with fp32 on both instruction sets, and the same embeddings whichever
CPU runs them (an index is often built on another machine than the Lambda that embeds the queries)."""

import io
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lambda_fn.vision.engine import load_model
from lambda_fn.vision.imaging import load_for_model
from support.isa import isa_env
from tests.helpers import EMBED_DIM, REPO_ROOT, SAMPLE_CLASSES
from training.data import list_images
from training.export import calibration_batches, get_args_parser, load_checkpoint, main, meta_for
from training.quantize import quantize_int8

# int8 and kernel numerics: `make test` runs these again with the kernels capped at AVX2.
pytestmark = pytest.mark.isa


@pytest.fixture(scope="module")
def int8_path(checkpoint_dir, sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("int8") / "model.pt"
    args = [
        "--checkpoint",
        str(checkpoint_dir / "best.pt"),
        "--out",
        str(out),
        "--int8",
        "--calibration",
        str(sample_dir),
        "--calibration-images",
        "32",
    ]
    assert main(get_args_parser().parse_args(args)) == 0
    return out


def test_int8_model_keeps_the_interface_and_tracks_fp32(int8_path, checkpoint_dir, sample_dir, model_path):
    model, meta = load_model(int8_path)
    assert meta.quantization.startswith("int8 static (x86)") and "32 images" in meta.quantization
    net, _ = load_checkpoint(checkpoint_dir / "best.pt")
    paths = list_images(sample_dir)[1::6]
    batch = torch.from_numpy(np.stack([load_for_model(p, meta.resize_size, meta.crop_size) for p in paths]))
    with torch.inference_mode():
        fp32 = net.embed(batch)
        emb = model(batch)
        emb2, probs = model.embed_and_classify(batch)
    assert emb.shape == (len(paths), EMBED_DIM) and torch.allclose(emb, emb2)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(paths)), atol=1e-4)
    cosine = (emb * fp32).sum(dim=1)  # each embedding against its fp32 twin (64-px test model, 32 calibration images)
    assert float(cosine.mean()) > 0.985 and float(cosine.min()) > 0.95  # margins on both ISAs: docs/benchmarks.md
    assert probs.shape == (len(paths), SAMPLE_CLASSES)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(paths)), atol=1e-5)
    assert int8_path.stat().st_size < model_path.stat().st_size / 3


def test_int8_average_pool_keeps_the_resolution_of_the_mean(checkpoint_dir, sample_dir):
    """A quantised average pool rounded each feature back onto its input's steps, which cost int8 ~2.5
    points of precision@10 on lfw_subset; the pool now averages the dequantised map in float."""
    net, state = load_checkpoint(checkpoint_dir / "best.pt")
    meta = meta_for(net, state["classes"], state["args"])
    batches = calibration_batches(sample_dir, meta.resize_size, meta.crop_size, 16)
    model = quantize_int8(net, batches)
    with torch.inference_mode():
        grid = model.trunk(net.normalise(batches[0]))
        features = model.features(batches[0])
    assert grid.shape[-2:].numel() > 1  # a map to average, not a single position
    assert len(torch.unique(grid)) <= 128  # the trunk's output is 7-bit (per-tensor scale) ...
    assert len(torch.unique(features)) > len(torch.unique(grid))  # ... the features between its steps survive
    assert torch.allclose(features, grid.mean(dim=(2, 3)), atol=1e-6)


def test_int8_without_calibration_images_is_a_clear_error(checkpoint_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    args = [
        "--checkpoint",
        str(checkpoint_dir / "best.pt"),
        "--out",
        str(tmp_path / "m.pt"),
        "--int8",
        "--calibration",
        str(tmp_path / "empty"),
    ]
    with pytest.raises(FileNotFoundError, match="no calibration images"):
        main(get_args_parser().parse_args(args))


def _embed_in_child(model: str, images: list[str], isa: str) -> np.ndarray:
    """Embeddings of ``images`` by the int8 model loaded as the service loads it, in a process whose kernels
    are capped for ``isa`` ("full" or "avx2"; the cap must be set before torch loads)."""
    script = textwrap.dedent(f"""
        import sys, numpy as np, torch
        from pathlib import Path
        from lambda_fn.vision.engine import load_model
        from lambda_fn.vision.imaging import load_for_model
        model, meta = load_model(Path({model!r}))
        batch = np.stack([load_for_model(Path(p), meta.resize_size, meta.crop_size) for p in {images!r}])
        with torch.inference_mode():
            np.save(sys.stdout.buffer, model(torch.from_numpy(batch)).numpy())
    """)
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=isa_env(isa), capture_output=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr.decode()[-2000:]
    return np.load(io.BytesIO(proc.stdout))


def test_int8_embeddings_do_not_depend_on_the_instruction_set(int8_path, sample_dir):
    """With 8-bit activations AVX2's vpmaddubsw saturated where AVX-512 VNNI does not: the same image got a
    vector with cosine 0.95 to its VNNI twin, so an index built on one CPU did not match queries on the other.
    On an AVX2-only machine both sides run the same kernels and agree trivially; CI's capped run covers it."""
    paths = [str(p) for p in list_images(sample_dir)]
    full, avx2 = (_embed_in_child(str(int8_path), paths, isa) for isa in ("full", "avx2"))
    cosine = (full * avx2).sum(axis=1)
    assert float(cosine.mean()) > 0.998 and float(cosine.min()) > 0.97  # 8-bit activations: 0.989 / 0.948
