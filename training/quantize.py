"""Static int8 quantisation of the embedding network (FX graph mode, x86 backend), calibrated on real images.

Only the convolutional body is quantised; normalisation, the classifier head, L2-normalisation and softmax
stay float. Measured on this 2-vCPU AVX-512/VNNI machine (224 px, batch 1, 2 threads): 10.8 ms vs 55.0 ms
for the fp32 TorchScript model, precision@10 0.419 vs 0.422 on the demo set, mean cosine to the fp32
embedding 0.998 (docs/benchmarks.md). The int8 kernels (fbgemm/x86) need an x86-64 CPU.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch
from torch import nn
from torch.ao.quantization import QConfigMapping, get_default_qconfig_mapping
from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

from training.model import EmbeddingNet, ExportedModel, resnet_features

BACKEND = "x86"


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
    the backend's default, per-channel symmetric weights; bench/isa.py compares others)."""
    torch.backends.quantized.engine = BACKEND
    net = copy.deepcopy(net).eval()
    batches = [b for b in calibration if len(b)]
    if not batches:
        raise ValueError("int8 quantisation needs calibration images; none could be read")
    body = _Body(copy.deepcopy(net.backbone)).eval()
    mapping = qconfig_mapping or get_default_qconfig_mapping(BACKEND)
    prepared = prepare_fx(body, mapping, (net.normalise(batches[0][:1]),))
    for batch in batches:
        prepared(net.normalise(batch))
    return Int8Model(net, convert_fx(prepared)).eval()
