import numpy as np
import pytest
import torch

from lambda_fn.engine import load_model
from lambda_fn.imaging import load_for_model
from tests.helpers import EMBED_DIM, SAMPLE_CLASSES
from training.data import list_images
from training.export import get_args_parser, load_checkpoint, main


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
    assert float(cosine.mean()) > 0.985 and float(cosine.min()) > 0.95
    assert probs.shape == (len(paths), SAMPLE_CLASSES)
    assert torch.allclose(probs.sum(dim=1), torch.ones(len(paths)), atol=1e-5)
    assert int8_path.stat().st_size < model_path.stat().st_size / 3


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
