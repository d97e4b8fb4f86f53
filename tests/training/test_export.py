import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from lambda_fn.vision.engine import load_model
from lambda_fn.vision.imaging import load_for_model
from tests.helpers import EMBED_DIM, REPO_ROOT, SAMPLE_CLASSES, TEST_CROP, TEST_RESIZE, run_module
from training.data import list_images
from training.export import load_checkpoint

# int8 and kernel numerics: `make test` runs these again with the kernels capped at AVX2.
pytestmark = pytest.mark.isa


def test_exported_model_matches_eager_on_real_images(model_path, checkpoint_dir, sample_dir):
    net, _ = load_checkpoint(checkpoint_dir / "best.pt")
    scripted, meta = load_model(model_path)
    paths = list_images(sample_dir)[::7]
    batch = torch.from_numpy(np.stack([load_for_model(p, meta.resize_size, meta.crop_size) for p in paths]))
    with torch.inference_mode():
        eager = net.embed(batch)
        exported = scripted(batch)
        emb, probs = scripted.embed_and_classify(batch)
    assert exported.shape == (len(paths), EMBED_DIM) and exported.dtype == torch.float32
    assert float((eager - exported).abs().max()) < 1e-4
    assert torch.allclose(emb, exported)
    assert torch.allclose(exported.norm(dim=1), torch.ones(len(paths)), atol=1e-5)
    assert probs.shape == (len(paths), SAMPLE_CLASSES) and torch.allclose(probs.sum(dim=1), torch.ones(len(paths)))


def test_model_carries_its_metadata(model_path):
    _, meta = load_model(model_path)
    assert meta.dim == EMBED_DIM and (meta.resize_size, meta.crop_size) == (TEST_RESIZE, TEST_CROP)
    assert meta.class_names == ["pasta", "pizza", "salad", "soup", "steak", "sushi"]  # sorted folder names
    assert meta.mean == pytest.approx([0.485, 0.456, 0.406]) and len(meta.weights_sha256) == 64
    assert meta.train_args["weights"] == "none" and meta.torch_version == torch.__version__


def test_exported_model_loads_without_torchvision_or_training(model_path):
    script = textwrap.dedent(f"""
        import sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torchvision", "training"):
                    raise ImportError("blocked: " + name)
        sys.meta_path.insert(0, Block())
        import torch
        m = torch.jit.load({str(model_path)!r})
        out = m(torch.zeros(2, {TEST_CROP}, {TEST_CROP}, 3, dtype=torch.uint8))
        assert out.shape == (2, {EMBED_DIM}), out.shape
        assert "torchvision" not in sys.modules
        print("ok")
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().endswith("ok")


def test_export_of_missing_checkpoint_is_a_readable_error(tmp_path):
    proc = run_module(
        "training.export", "--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path / "m.pt"), timeout=120
    )
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
