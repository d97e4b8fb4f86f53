"""Static int8 quantisation of the embedding network (FX graph mode, x86 backend), calibrated on real images.

Only the convolutional trunk is quantised; normalisation, the average pool, the classifier head,
L2-normalisation and softmax stay float. Measured on one core of this AMD EPYC (Zen 4) with bench/isa.py:
19.3 ms vs 76.0 ms for the fp32 model with AVX-512 VNNI, 37.1 vs 81.3 ms with the kernels capped at AVX2
(what Lambda promises), so int8 is the faster model on both. The int8 kernels (oneDNN / FBGEMM, picked by
``lambda_fn.engine.int8_engine``) need an x86-64 CPU.

Retrieval quality on real photos (scikit-image's lfw_subset, 200 labelled images, each querying the other 199;
bench/latency.py, bench weights): precision@10 0.8655 int8 vs 0.8645 fp32, mean / min cosine to fp32 0.99986 /
0.99941, 86% of the top-10 shared with fp32; under the AVX2 cap 0.8685 (oneDNN, the service's engine there) and
0.859 (FBGEMM), cosine 0.99986 / 0.99947 with both. Over six calibration sets (128 synthetic sample images,
seeds 1-6) int8 stays at 0.864-0.866. With the average pool quantised as well it was 0.838-0.845 (cosine
0.99970 / 0.99858, 77% of the top-10 shared); a paired bootstrap over the 200 queries puts that gap at -4.0 to
-0.9 points and the float pool's at -0.5 to +0.75. Running the pool in float costs 0.1-0.3% of the AVX2 forward.
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

from training.model import EmbeddingNet, ExportedModel

BACKEND = "x86"


def default_qconfig_mapping() -> QConfigMapping:
    """The x86 backend's defaults (histogram-calibrated activations, per-channel symmetric weights), but with
    8-bit activations instead of 7 (``reduce_range=False``).

    x86's 7-bit default guards AVX2's vpmaddubsw, whose pairwise u8 x s8 sums saturate at 16 bits. Measured on
    real photos (scikit-image's lfw_subset, bench/latency.py, average pool still quantised then): precision@10
    0.766 with 7-bit activations and 0.840 with 8-bit, against 0.865 for fp32; mean cosine to fp32 0.9991 ->
    0.9997. Under an AVX2 cap the 8-bit model gives the same embeddings with oneDNN's and FBGEMM's AVX2 kernels
    (module docstring): no saturation shows.

    Compared with the float pool in place (lfw_subset, same calibration): min-max activation observers give
    0.860-0.870 over the six calibration sets (cosine 0.99987 / 0.99950, 90% of the top-10 shared), closer in
    cosine but no better in precision, and a min-max range follows the largest outlier a trained model's
    activations have; per-tensor weights 0.861 (cosine 0.99977); conv1 or layer4's last block in float 0.862 /
    0.863. None is kept.
    """
    activation = HistogramObserver.with_args(reduce_range=False)
    return get_default_qconfig_mapping(BACKEND).set_global(
        QConfig(activation=activation, weight=default_per_channel_weight_observer)
    )


class _Trunk(nn.Module):
    """ResNet34 from the first conv to layer4's output: the part worth quantising."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.b = backbone

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.b
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        return b.layer4(b.layer3(b.layer2(b.layer1(x))))


class Int8Model(ExportedModel):
    """training.model.ExportedModel whose feature path runs through an int8 trunk and a float average pool.

    A quantised average pool keeps its input's scale, so it rounds each 512-d feature, the mean of 49
    positions, back to one of 256 steps; the float mean of the dequantised 7x7 map keeps the resolution the
    averaging adds. Embeddings of similar photos differ by less than a step, so this rounding, not the
    convolutions, was most of int8's loss (module docstring).
    """

    def __init__(self, net: EmbeddingNet, trunk: nn.Module):
        super().__init__(net)
        self.trunk = trunk

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return torch.flatten(self.net.backbone.avgpool(self.trunk(self.net.normalise(images))), 1)


@torch.inference_mode()
def quantize_int8(
    net: EmbeddingNet, calibration: Iterable[torch.Tensor], *, qconfig_mapping: QConfigMapping | None = None
) -> Int8Model:
    """Calibrate observers on uint8 (B, H, W, 3) batches, then convert the trunk to int8 (``qconfig_mapping``:
    ``default_qconfig_mapping()`` unless given; bench/isa.py compares others)."""
    torch.backends.quantized.engine = BACKEND
    net = copy.deepcopy(net).eval()
    batches = [b for b in calibration if len(b)]
    if not batches:
        raise ValueError("int8 quantisation needs calibration images; none could be read")
    trunk = _Trunk(copy.deepcopy(net.backbone)).eval()
    mapping = qconfig_mapping or default_qconfig_mapping()
    prepared = prepare_fx(trunk, mapping, (net.normalise(batches[0][:1]),))
    for batch in batches:
        prepared(net.normalise(batch))
    return Int8Model(net, convert_fx(prepared)).eval()
