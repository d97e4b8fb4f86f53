"""Static int8 quantisation of the embedding network (FX graph mode, x86 backend), calibrated on real images.

Only the convolutional body is quantised; normalisation, the classifier head, L2-normalisation and softmax
stay float. Measured on one core of this AMD EPYC (Zen 4) with bench/isa.py: 19.3 ms vs 76.0 ms for the fp32
model with AVX-512 VNNI, 37.1 vs 81.3 ms with the kernels capped at AVX2 (what Lambda promises), so int8 is
the faster model on both; mean cosine to the fp32 embedding 0.9997 (docs/benchmarks.md). The int8 kernels
(oneDNN / FBGEMM, picked by ``lambda_fn.engine.int8_engine``) need an x86-64 CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import (
    QConfig,
    QConfigMapping,
    default_per_channel_weight_observer,
    get_default_qconfig_mapping,
)
from torch.ao.quantization.observer import HistogramObserver
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from training.model import EmbeddingNet, ExportedModel, resnet_features

BACKEND = "x86"


def default_qconfig_mapping() -> QConfigMapping:
    """The x86 backend's defaults (histogram-calibrated activations, per-channel symmetric weights), but with
    8-bit activations instead of 7 (``reduce_range=False``).

    x86's 7-bit default guards AVX2's vpmaddubsw, whose pairwise u8 x s8 sums saturate at 16 bits. Measured on
    real photos (scikit-image's lfw_subset, bench/latency.py): precision@10 0.766 with 7-bit activations and
    0.840 with 8-bit, against 0.865 for fp32; mean cosine to fp32 0.9991 -> 0.9997. Under an AVX2 cap the
    8-bit model gives the same embeddings with oneDNN's and FBGEMM's AVX2 kernels (cosine 0.9997, precision
    0.845 / 0.840): no saturation shows.
    """
    activation = HistogramObserver.with_args(reduce_range=False)
    return get_default_qconfig_mapping(BACKEND).set_global(
        QConfig(activation=activation, weight=default_per_channel_weight_observer)
    )


class _Body(nn.Module):
    """ResNet34 from the first conv to the flattened avgpool output: the part worth quantising."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.b = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return resnet_features(self.b, x)


class Int8Model(ExportedModel):
    """training.model.ExportedModel whose feature path runs through an int8 body."""

    def __init__(self, net: EmbeddingNet, body: nn.Module):
        super().__init__(net)
        self.body = body

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(self.net.normalise(images))


@torch.inference_mode()
def quantize_int8(
    net: EmbeddingNet, calibration: Iterable[torch.Tensor], *, qconfig_mapping: QConfigMapping | None = None
) -> Int8Model:
    """Calibrate observers on uint8 (B, H, W, 3) batches, then convert the body to int8 (``qconfig_mapping``:
    ``default_qconfig_mapping()`` unless given; bench/isa.py compares others)."""
    torch.backends.quantized.engine = BACKEND
    net = copy.deepcopy(net).eval()
    batches = [b for b in calibration if len(b)]
    if not batches:
        raise ValueError("int8 quantisation needs calibration images; none could be read")
    body = _Body(copy.deepcopy(net.backbone)).eval()
    mapping = qconfig_mapping or default_qconfig_mapping()
    prepared = prepare_fx(body, mapping, (net.normalise(batches[0][:1]),))
    for batch in batches:
        prepared(net.normalise(batch))
    return Int8Model(net, convert_fx(prepared)).eval()
