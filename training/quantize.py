"""Static int8 quantisation of the embedding network (FX graph mode, x86 backend), calibrated on real images.

Only the convolutional trunk is quantised; normalisation, the average pool, the classifier head,
L2-normalisation and softmax stay float. int8 is the faster model with and without AVX-512 VNNI, at
fp32's retrieval quality (docs/benchmarks.md, "Instruction sets"). The int8 kernels (oneDNN / FBGEMM,
picked by ``lambda_fn.vision.engine.int8_engine``) need an x86-64 CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import QConfigMapping, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from training.model import EmbeddingNet, ExportedModel

BACKEND = "x86"


def default_qconfig_mapping() -> QConfigMapping:
    """The x86 backend's defaults: histogram-calibrated 7-bit activations (``reduce_range``), per-channel
    symmetric weights.

    Without VNNI (AVX2, all Lambda promises) oneDNN and FBGEMM multiply u8 x s8 pairs with vpmaddubsw, whose
    16-bit pair sums saturate on 8-bit activations; 7-bit ones cannot. So an embedding no longer depends on
    the CPU: an index built on an AVX-512 machine matches the queries Lambda embeds on AVX2
    (docs/benchmarks.md, "int8 and the instruction set").
    """
    return get_default_qconfig_mapping(BACKEND)


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
    convolutions, was most of int8's loss (docs/benchmarks.md).
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
