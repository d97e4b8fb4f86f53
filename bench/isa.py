"""The kernels' instruction set: which one each library runs, how to cap it at AVX2 (all AWS Lambda promises on
x86_64), and how close the fp32 and int8 forwards come to the CPU's peak for that instruction set.

Capping: ``support.isa.AVX2_ENV`` is set in a child process before torch loads. ATen reads ``ATEN_CPU_CAPABILITY``;
oneDNN reads ``ONEDNN_MAX_CPU_ISA`` (``DNNL_MAX_CPU_ISA`` is its older name); FBGEMM's GEMM kernels read
``FBGEMM_ENABLE_INSTRUCTIONS`` (``fbgemmInstructionSet()`` in FBGEMM's src/Utils.cc); its few direct
cpuinfo checks (``fbgemmHasAvx512Support()``: group-wise convolution, which ResNet34 has none of) are not
capped. torch's ``x86`` quantized engine picks oneDNN or FBGEMM from cpuinfo's AVX-512 VNNI flag, which no
variable caps (so under the cap on this VNNI CPU ``x86`` still picks oneDNN, capped to AVX2; on a real AVX2
CPU it would pick FBGEMM: the "int8 engine fbgemm" row). The service's own choice is
``lambda_fn.vision.engine.int8_engine``. ``probe()`` shows what a child actually got: torch's capability, oneDNN's
ISA and the convolution kernels it ran (``ONEDNN_VERBOSE``), FBGEMM's instruction set (through ctypes).

Efficiency: multiply-adds of ResNet34 at 224 px (counted with hooks) per second of one thread's CPU time
(robust to the shared machine's load: a preempted thread accrues no CPU time) against one core's peak
= clock x multiply-adds per cycle, both measured by a small C kernel (``PEAK_C``, built with ``cc`` when
there is one; otherwise the nominal clock from /proc/cpuinfo and the textbook rates). Two-thread wall times
are reported beside them. Every variant runs in two worker processes (full ISA, AVX2 cap), interleaved.

    python -m bench.isa [--rounds 3] [--forwards 6]
    python -m bench.isa --probe fp32|int8      # (child) the kernels this environment gets, as JSON
    env $(python -m bench.isa --avx2-env) CMD  # run CMD with the kernels capped at AVX2 (as support.isa)
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench._setup import EXPORT_VERSION, RESULTS, WORK, artifacts, bench_net
from bench.harness import machine_info, write_result
from lambda_fn.contract.manifest import MODEL_FILE
from support.isa import ISAS, avx2_words, isa_env
from support.service import REPO_ROOT

FBGEMM_ISAS = ("anyarch", "avx2", "avx512", "avx512_ymm", "avx512_vnni", "avx512_vnni_ymm", "sve")

# Multiply-adds per cycle per core when ``cc`` is missing. fp32: 2 FMA units x 8 lanes (AVX2); AVX-512 is
# 2 x 16 on Intel server cores but 16 on Zen 4, which splits a 512-bit FMA into two 256-bit halves. int8:
# AVX2 has no int8 dot product; vpmaddubsw (32 u8 x s8 products to 16-bit pairs) + vpmaddwd, both on the two
# vector multiply ports, give 32 per cycle; VNNI's vpdpbusd does 64 per 512-bit instruction, one per cycle
# on Zen 4 (two on Intel parts with two 512-bit ports). The measured rates replace these when cc exists.
TEXTBOOK_MACS_PER_CYCLE = {"fp32_avx2": 16, "fp32_avx512": 16, "int8_avx2": 32, "int8_avx512vnni": 64}

PEAK_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <stdint.h>
#include <time.h>
static double now(void) {
  struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
#define BEST(slot, work, macs) { double t0 = now(); work; double v = (macs) / (now() - t0) / 1e9 / ghz; \
  if (v > r[slot]) r[slot] = v; }
/* 100 dependent 1-cycle adds per iteration: cycles = iterations x 100, so this measures the clock. */
__attribute__((noinline)) static uint64_t chain(uint64_t n) { uint64_t x = 0;
  for (uint64_t i = 0; i < n; i++) __asm__ volatile(".rept 100\n\tadd $1, %0\n\t.endr" : "+r"(x)); return x; }
#define R12(OP) OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11)
/* 12 independent FMA chains: enough to cover 4-cycle latency on 2 ports. */
__attribute__((target("avx2,fma"), noinline)) static float fma256(uint64_t n) {
  __m256 b = _mm256_set1_ps(1.0000001f), c = _mm256_set1_ps(1e-7f);
#define I(k) __m256 a##k = _mm256_set1_ps((float)k);
  R12(I)
#define F(k) a##k = _mm256_fmadd_ps(a##k, b, c);
  for (uint64_t i = 0; i < n; i++) { R12(F) }
#define S(k) + a##k[0]
  return 0 R12(S); }
#undef I
#undef F
__attribute__((target("avx512f"), noinline)) static float fma512(uint64_t n) {
  __m512 b = _mm512_set1_ps(1.0000001f), c = _mm512_set1_ps(1e-7f);
#define I(k) __m512 a##k = _mm512_set1_ps((float)k);
  R12(I)
#define F(k) a##k = _mm512_fmadd_ps(a##k, b, c);
  for (uint64_t i = 0; i < n; i++) { R12(F) }
  return 0 R12(S); }
#undef I
#undef F
/* AVX2 int8 as FBGEMM and oneDNN do it: vpmaddubsw + vpmaddwd (by ones) + vpaddd, 32 MACs a sequence. */
#define SEQ(k, acc) "vpmaddubsw %%ymm0, %%ymm1, %%ymm" #k "\n\t" "vpmaddwd %%ymm15, %%ymm" #k ", %%ymm" #k "\n\t" \
  "vpaddd %%ymm" #k ", %%ymm" #acc ", %%ymm" #acc "\n\t"
__attribute__((target("avx2"), noinline)) static void madd256(uint64_t n) {
  __asm__ volatile("vpcmpeqw %%ymm15, %%ymm15, %%ymm15\n\tvpsrlw $15, %%ymm15, %%ymm15" ::: "xmm15");
  for (uint64_t i = 0; i < n; i++)
    __asm__ volatile(SEQ(8, 2) SEQ(9, 3) SEQ(10, 4) SEQ(11, 5) SEQ(12, 6) SEQ(13, 7) ::: "xmm0", "xmm1", "xmm2",
      "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13"); }
/* AVX-512 VNNI: vpdpbusd zmm, 64 u8 x s8 MACs into int32 per instruction, 12 independent accumulators. */
__attribute__((target("avx512f,avx512vnni"), noinline)) static int vnni512(uint64_t n) {
  __m512i u = _mm512_set1_epi8(3), s = _mm512_set1_epi8(2);
#define I(k) __m512i a##k = _mm512_set1_epi32(k);
  R12(I)
#define F(k) a##k = _mm512_dpbusd_epi32(a##k, u, s);
  for (uint64_t i = 0; i < n; i++) { R12(F) }
#define T(k) + _mm512_reduce_add_epi32(a##k)
  return 0 R12(T); }
int main(void) {
  /* Best of 5 short runs each: a vCPU preempted by the host still accrues thread CPU time. */
  double ghz = 0, r[4] = {0, 0, 0, 0}; uint64_t n = 4000000;
  for (int k = 0; k < 5; k++) {
    double t = now(); volatile uint64_t x = chain(n); double g = n * 100 / (now() - t) / 1e9;
    if (g > ghz) ghz = g; (void)x; }
  n = 8000000; volatile float f; volatile int q;
  for (int k = 0; k < 5; k++) {
    BEST(0, f = fma256(n), n * 12 * 8)
    if (__builtin_cpu_supports("avx512f")) BEST(1, f = fma512(n), n * 12 * 16)
    BEST(2, madd256(n), n * 6 * 32)
    if (__builtin_cpu_supports("avx512vnni")) BEST(3, q = vnni512(n), n * 12 * 64) }
  (void)f; (void)q;
  printf("{\"clock_ghz\": %.4f, \"fp32_avx2\": %.2f, \"int8_avx2\": %.2f", ghz, r[0], r[2]);
  if (r[1] > 0) printf(", \"fp32_avx512\": %.2f", r[1]);
  if (r[3] > 0) printf(", \"int8_avx512vnni\": %.2f", r[3]);
  printf("}\n"); return 0; }
"""


def add_isa_argument(parser: argparse.ArgumentParser) -> None:
    """``--isa both|full|avx2`` for a benchmark that reruns itself under the AVX2 cap with ``run_capped``."""
    parser.add_argument(
        "--isa",
        choices=("both", "full", "avx2"),
        default="both",
        help="both: this run, then the same under an AVX2 cap in a child (default); full/avx2: this process only",
    )


def run_capped(module: str, argv: list[str], timeout: float = 1800) -> dict:
    """Run ``python -m bench.<module> --isa avx2 ...`` under ``AVX2_ENV``; its report, parsed (the child writes it
    to a scratch folder, removed afterwards)."""
    print(f"  running {module} again under {avx2_words()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / f"{module}.json"
        cmd = [sys.executable, "-m", f"bench.{module}", *argv, "--isa", "avx2", "--out", str(out)]
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=isa_env("avx2"), timeout=timeout, text=True, capture_output=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{module} under the AVX2 cap failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}")
        print("\n".join("    " + line for line in proc.stdout.splitlines()), flush=True)
        return json.loads(out.read_text())


def fbgemm_isa() -> str | None:
    """FBGEMM's ``fbgemmInstructionSet()`` in this process (after ``FBGEMM_ENABLE_INSTRUCTIONS``)."""
    import torch

    try:
        lib = ctypes.CDLL(str(Path(torch.__file__).parent / "lib" / "libtorch_cpu.so"))
        fn = lib._ZN6fbgemm20fbgemmInstructionSetEv
    except (OSError, AttributeError):
        return None
    fn.restype = ctypes.c_int
    value = fn()
    return FBGEMM_ISAS[value] if 0 <= value < len(FBGEMM_ISAS) else str(value)


def parse_onednn_verbose(text: str) -> dict:
    """oneDNN's ISA line and a count of the convolution kernels it executed, from ``ONEDNN_VERBOSE=1`` output."""
    isa, kernels = None, {}
    for line in text.splitlines():
        fields = line.split(",")
        if not line.startswith("onednn_verbose") or len(fields) < 5:
            continue
        if fields[2:4] == ["info", "cpu"] and fields[4].startswith("isa:"):
            isa = fields[4].removeprefix("isa:")
        elif len(fields) > 6 and fields[3] == "exec" and fields[5] == "convolution":
            kernels[fields[6]] = kernels.get(fields[6], 0) + 1
    return {"onednn_isa": isa, "onednn_conv_kernels": kernels}


def _probe_child(model: str) -> None:
    import numpy as np
    import torch

    from lambda_fn.vision.engine import load_model

    torch.set_num_threads(1)
    net, meta = load_model(artifacts(int8=model == "int8") / MODEL_FILE)
    with torch.inference_mode():
        net(torch.from_numpy(np.zeros((1, meta.crop_size, meta.crop_size, 3), dtype=np.uint8)))
    facts = {
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "quantized_engine": torch.backends.quantized.engine,
        "fbgemm_isa": fbgemm_isa(),
    }
    sys.stdout.flush()
    print("PROBE " + json.dumps(facts), flush=True)


def probe(isa: str, model: str) -> dict:
    """What a child process under ``isa`` gets: torch's capability, the int8 engine, FBGEMM's instruction set,
    oneDNN's ISA and the convolution kernels one forward of ``model`` ("fp32" or "int8") ran."""
    env = {**isa_env(isa), "ONEDNN_VERBOSE": "1"}
    cmd = [sys.executable, "-m", "bench.isa", "--probe", model]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = next(x for x in proc.stdout.splitlines() if x.startswith("PROBE "))
    return {**json.loads(line.removeprefix("PROBE ")), **parse_onednn_verbose(proc.stdout)}


def measured_peak() -> dict:
    """Clock (GHz) and multiply-adds per cycle per core, measured by ``PEAK_C``; textbook rates and the nominal
    clock when no C compiler is found."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc:
        src, exe = WORK / "peak.c", WORK / "peak"
        WORK.mkdir(parents=True, exist_ok=True)
        src.write_text(PEAK_C)
        built = subprocess.run([cc, "-O2", "-o", str(exe), str(src)], capture_output=True, text=True)
        if built.returncode == 0:
            out = subprocess.run([str(exe)], capture_output=True, text=True, timeout=120)
            if out.returncode == 0:
                return {"source": "measured (bench/isa.py PEAK_C)", **json.loads(out.stdout)}
    mhz = machine_info().get("nominal_mhz") or 0
    return {"source": "textbook rates, nominal clock", "clock_ghz": mhz / 1000, **TEXTBOOK_MACS_PER_CYCLE}


def resnet34_macs(crop: int) -> int:
    """Multiply-adds of torchvision's ResNet34 convolutions and fc at ``crop`` px, counted with forward hooks."""
    import torch
    from torchvision.models import resnet34

    net, total = resnet34(weights=None).eval(), [0]

    def count(module, _inputs, output):
        if isinstance(module, torch.nn.Conv2d):
            kh, kw = module.kernel_size
            total[0] += output.numel() * module.in_channels // module.groups * kh * kw
        elif isinstance(module, torch.nn.Linear):
            total[0] += output.numel() * module.in_features

    for m in net.modules():
        if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
            m.register_forward_hook(count)
    with torch.inference_mode():
        net(torch.zeros(1, 3, crop, crop))
    return total[0]


def peak_key(dtype: str, isa: str, flags: list[str]) -> str:
    """Which per-cycle rate bounds a forward: int8 uses VNNI only when uncapped and the CPU has it."""
    if dtype == "int8":
        vnni = isa == "full" and ("avx512_vnni" in flags or "avx512vnni" in flags)
        return "int8_avx512vnni" if vnni else "int8_avx2"
    return "fp32_avx512" if isa == "full" and "avx512f" in flags else "fp32_avx2"


def efficiency(macs: int, cpu_ms: float, clock_ghz: float, macs_per_cycle: float, cores: int = 1) -> dict:
    """Achieved multiply-adds per second against ``cores x clock x macs_per_cycle``."""
    achieved = macs / (cpu_ms / 1000) / 1e9
    peak = cores * clock_ghz * macs_per_cycle
    return {"gmac_s": achieved, "peak_gmac_s": peak, "fraction_of_peak": achieved / peak}


# Variants: (name, dtype, how the worker gets it). Files are made once by ``_variant_files`` in bench/.work.
VARIANTS = (
    ("fp32 traced, not frozen (before)", "fp32"),
    ("fp32 frozen (shipped)", "fp32"),
    ("fp32 frozen + optimize_for_inference", "fp32"),
    ("fp32 channels_last (frozen)", "fp32"),
    ("int8 (shipped: int8_engine())", "int8"),
    ("int8 engine x86", "int8"),
    ("int8 engine fbgemm", "int8"),
    ("int8 engine onednn", "int8"),
    ("int8 per-tensor weights", "int8"),
    ("int8 8-bit activations (before)", "int8"),
    ("ONNX Runtime fp32 (reference, full ISA only)", "fp32"),
)
ORT = "ONNX Runtime fp32 (reference, full ISA only)"


def _traced_file() -> Path:
    """The bench model traced as training.export did before freezing won (weights kept as parameters)."""
    import torch

    from training.model import ExportedModel, to_torchscript

    out = WORK / "isa-fp32-traced.pt"
    if not out.is_file():
        traced = to_torchscript(ExportedModel(bench_net()).eval(), torch.zeros(2, 224, 224, 3, dtype=torch.uint8))
        torch.jit.save(traced, str(out))
    return out


def _channels_last_file() -> Path:
    """The bench model (same seed as bench._setup.artifacts) traced with channels-last weights and input."""
    import torch

    from training.model import ExportedModel, resnet_features, to_torchscript

    out = WORK / "isa-fp32-channels-last-frozen.pt"
    if out.is_file():
        return out

    class ChannelsLast(ExportedModel):
        def features(self, images: torch.Tensor) -> torch.Tensor:
            x = images.permute(0, 3, 1, 2).float()  # an NHWC buffer seen as NCHW is channels-last already
            return resnet_features(self.net.backbone, (x - self.net.mean) / self.net.std)

    net = bench_net().to(memory_format=torch.channels_last)
    traced = to_torchscript(ChannelsLast(net).eval(), torch.zeros(2, 224, 224, 3, dtype=torch.uint8), freeze=True)
    torch.jit.save(traced, str(out))
    return out


def _per_tensor_file() -> Path:
    """The bench model quantised like training.quantize but with one weight scale per tensor."""
    import torch
    from torch.ao.quantization import QConfig, QConfigMapping, default_weight_observer
    from torch.ao.quantization.observer import HistogramObserver

    from bench._setup import collection
    from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE
    from training import quantize
    from training.export import calibration_batches
    from training.model import to_torchscript

    out = WORK / f"isa-int8-per-tensor-v{EXPORT_VERSION}.pt"
    if out.is_file():
        return out
    qconfig = QConfig(activation=HistogramObserver.with_args(reduce_range=True), weight=default_weight_observer)
    net = bench_net()
    batches = calibration_batches(collection(), DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, 128)
    model = quantize.quantize_int8(net, batches, qconfig_mapping=QConfigMapping().set_global(qconfig))
    torch.jit.save(to_torchscript(model, batches[0][:2], freeze=True), str(out))
    return out


def _eight_bit_file() -> Path:
    """The bench model quantised as before: 8-bit activations, which AVX2's vpmaddubsw can saturate."""
    import torch
    from torch.ao.quantization import QConfig, default_per_channel_weight_observer, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver

    from bench._setup import collection
    from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE
    from training import quantize
    from training.export import calibration_batches
    from training.model import to_torchscript

    out = WORK / f"isa-int8-8bit-v{EXPORT_VERSION}.pt"
    if not out.is_file():
        batches = calibration_batches(collection(), DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, 128)
        activation = HistogramObserver.with_args(reduce_range=False)
        mapping = get_default_qconfig_mapping(quantize.BACKEND).set_global(
            QConfig(activation=activation, weight=default_per_channel_weight_observer)
        )
        model = quantize.quantize_int8(bench_net(), batches, qconfig_mapping=mapping)
        torch.jit.save(to_torchscript(model, batches[0][:2], freeze=True), str(out))
    return out


def _onnx_file() -> Path | None:
    """The bench model exported to ONNX (legacy exporter, eval mode, dynamic batch); None without onnxruntime."""
    import importlib.util

    import torch

    from training.model import ExportedModel

    if importlib.util.find_spec("onnxruntime") is None:
        return None
    out = WORK / "isa-fp32.onnx"
    if not out.is_file():
        torch.onnx.export(
            ExportedModel(bench_net()).eval(),
            (torch.zeros(2, 224, 224, 3, dtype=torch.uint8),),
            str(out),
            dynamo=False,
            opset_version=17,
            input_names=["images"],
            dynamic_axes={"images": {0: "batch"}},
        )
    return out


class _OrtModel:
    """An ONNX Runtime session per thread count, called like a TorchScript model."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        self.sessions = {}
        for threads in (1, 2):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            self.sessions[threads] = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def __call__(self, x):
        import torch

        out = self.sessions[min(torch.get_num_threads(), 2)].run(None, {"images": x.numpy()})[0]
        return torch.from_numpy(out)


def _load_variant(name: str):
    import torch

    from lambda_fn.vision.engine import load_model

    fp32, int8 = artifacts() / MODEL_FILE, artifacts(int8=True) / MODEL_FILE
    if name == "fp32 traced, not frozen (before)":
        return torch.jit.load(str(WORK / "isa-fp32-traced.pt")).eval()
    if name == "fp32 frozen (shipped)":
        return load_model(fp32)[0]
    if name == "fp32 frozen + optimize_for_inference":
        return torch.jit.optimize_for_inference(load_model(fp32)[0], other_methods=["embed_and_classify"])
    if name == "fp32 channels_last (frozen)":
        return torch.jit.load(str(WORK / "isa-fp32-channels-last-frozen.pt")).eval()
    if name == "int8 (shipped: int8_engine())":
        return load_model(int8)[0]
    if name == ORT:
        # MLAS picks its kernels from cpuid; none of the caps applies, so no AVX2 row.
        if os.environ.get("ATEN_CPU_CAPABILITY") or _onnx_file() is None:
            raise RuntimeError("onnxruntime not installed, or an AVX2 cap it would not honour")
        return _OrtModel(_onnx_file())
    if name == "int8 8-bit activations (before)":
        return torch.jit.load(str(WORK / f"isa-int8-8bit-v{EXPORT_VERSION}.pt")).eval()
    if name == "int8 per-tensor weights":
        return torch.jit.load(str(WORK / f"isa-int8-per-tensor-v{EXPORT_VERSION}.pt")).eval()
    engine = name.rsplit(" ", 1)[1]
    before = torch.backends.quantized.engine
    torch.backends.quantized.engine = engine  # int8 weights are packed for the engine in force at load
    try:
        return torch.jit.load(str(int8)).eval()
    finally:
        torch.backends.quantized.engine = before


def cosine_to_fp32(names: list[str], images: int = 64) -> dict[str, dict[str, float]]:
    """Mean and min cosine between each int8 variant's embeddings and the fp32 model's, on sample photos."""
    import torch

    from bench._setup import collection
    from lambda_fn.contract.manifest import DEFAULT_CROP_SIZE, DEFAULT_RESIZE_SIZE
    from training.export import calibration_batches

    batch = torch.cat(calibration_batches(collection(), DEFAULT_RESIZE_SIZE, DEFAULT_CROP_SIZE, images))
    with torch.inference_mode():
        ref = _load_variant("fp32 frozen (shipped)")(batch)
        out = {}
        for name in names:
            cos = (_load_variant(name)(batch) * ref).sum(dim=1)
            out[name] = {"mean": float(cos.mean()), "min": float(cos.min())}
    return out


def _worker() -> None:
    """Load every variant, then time forwards on request: one JSON line in, one out."""
    import numpy as np
    import torch

    torch.set_num_interop_threads(1)
    models, errors = {}, {}
    for name, _ in VARIANTS:
        try:
            models[name] = _load_variant(name)
        except Exception as exc:  # a lever that does not run here is a result, not a crash
            errors[name] = f"{type(exc).__name__}: {str(exc)[:300]}"
    x = torch.from_numpy(np.zeros((1, 224, 224, 3), dtype=np.uint8))
    with torch.inference_mode():
        for model in models.values():
            for _ in range(2):
                model(x)
    print(json.dumps({"ready": sorted(models), "errors": errors}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        torch.set_num_threads(req["threads"])
        model = models[req["variant"]]
        cpu, wall = [], []
        with torch.inference_mode():
            model(x)
            for _ in range(req["forwards"]):
                t0, c0 = time.perf_counter(), time.thread_time()
                model(x)
                cpu.append((time.thread_time() - c0) * 1000)
                wall.append((time.perf_counter() - t0) * 1000)
        print(json.dumps({"cpu_ms": cpu, "wall_ms": wall}), flush=True)


def main(args: argparse.Namespace) -> dict:
    if args.avx2_env:
        print(avx2_words())
        return {}
    import torch

    if args.probe:
        _probe_child(args.probe)
        return {}
    if args.worker:
        _worker()
        return {}
    info = machine_info()
    artifacts(), artifacts(int8=True)
    _traced_file()
    _channels_last_file()
    _per_tensor_file()
    _eight_bit_file()
    _onnx_file()
    peak = measured_peak()
    macs = resnet34_macs(224)
    print(f"{info['model_name']} (family/model {info['family_model']}), flags {' '.join(info['flags'])}")
    print(
        f"peak per core: clock {peak['clock_ghz']:.2f} GHz ({peak['source']}); multiply-adds per cycle: "
        + ", ".join(f"{k} {peak[k]:.1f}" for k in TEXTBOOK_MACS_PER_CYCLE if k in peak)
    )
    print(f"ResNet34 at 224 px: {macs / 1e9:.3f} GMAC per image (hooks on conv and fc)")
    probes = {isa: {m: probe(isa, m) for m in ("fp32", "int8")} for isa in ISAS}
    for isa, by_model in probes.items():
        for m, p in by_model.items():
            print(
                f"  {isa:>4} {m}: ATen {p['aten_capability']}, oneDNN {p['onednn_isa']}, FBGEMM {p['fbgemm_isa']}, "
                f"engine {p['quantized_engine']}, conv kernels {p['onednn_conv_kernels'] or 'none (FBGEMM)'}"
            )

    workers = {}
    for isa in ISAS:
        workers[isa] = subprocess.Popen(
            [sys.executable, "-m", "bench.isa", "--worker"],
            cwd=REPO_ROOT,
            env=isa_env(isa),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
    ready = {isa: json.loads(w.stdout.readline()) for isa, w in workers.items()}
    samples: dict[tuple, dict[str, list[float]]] = {}
    names = [name for name, _ in VARIANTS]
    for r in range(args.rounds):
        shift = r * len(names) // max(args.rounds, 1)  # each round starts elsewhere: load drifts hit all alike
        for name in names[shift:] + names[:shift]:
            for threads in (1, 2):
                order = list(ISAS) if r % 2 == 0 else list(ISAS)[::-1]
                for isa in order:
                    if name not in ready[isa]["ready"]:
                        continue
                    w = workers[isa]
                    w.stdin.write(json.dumps({"variant": name, "threads": threads, "forwards": args.forwards}) + "\n")
                    w.stdin.flush()
                    got = json.loads(w.stdout.readline())
                    s = samples.setdefault((name, isa, threads), {"cpu_ms": [], "wall_ms": []})
                    s["cpu_ms"] += got["cpu_ms"]
                    s["wall_ms"] += got["wall_ms"]
    for w in workers.values():
        w.stdin.close()
        w.wait(timeout=60)

    rows = []
    for (name, isa, threads), s in samples.items():
        dtype = dict(VARIANTS)[name]
        key = peak_key(dtype, isa, info["flags"])
        row = {
            "variant": name,
            "isa": isa,
            "threads": threads,
            "wall_p50_ms": statistics.median(s["wall_ms"]),
            "wall_min_ms": min(s["wall_ms"]),
            "peak_rate": key,
        }
        if threads == 1:  # one thread: its CPU time is the work; two: the helper threads' time is not seen
            row["cpu_p50_ms"] = statistics.median(s["cpu_ms"])
            row.update(efficiency(macs, row["cpu_p50_ms"], peak["clock_ghz"], peak[key]))
        else:
            row.update(
                {
                    f"wall_min_{k}": v
                    for k, v in efficiency(macs, row["wall_min_ms"], peak["clock_ghz"], peak[key], 2).items()
                }
            )
        rows.append(row)
    cosines = cosine_to_fp32([n for n, dtype in VARIANTS if dtype == "int8" or (n == ORT and _onnx_file())])
    report = {
        "cosine_to_fp32": cosines,
        "machine": info,
        "peak": peak,
        "macs_per_image": macs,
        "rounds": args.rounds,
        "forwards": args.forwards,
        "probes": probes,
        "not_run": {isa: r["errors"] for isa, r in ready.items() if r["errors"]},
        "rows": rows,
        "torch": torch.__version__,
    }
    print(
        f"\n{'variant':<38}{'isa':>5}  {'1 thread CPU ms':>15} {'GMAC/s':>7} {'of peak':>8}   "
        f"{'2 threads wall p50/min ms':>26} {'of 2-core peak':>15}"
    )
    for name, _ in VARIANTS:
        for isa in ISAS:
            one = next((x for x in rows if x["variant"] == name and x["isa"] == isa and x["threads"] == 1), None)
            two = next((x for x in rows if x["variant"] == name and x["isa"] == isa and x["threads"] == 2), None)
            if one is None or two is None:
                print(f"{name:<38}{isa:>5}  not run: {report['not_run'].get(isa, {}).get(name, '?')[:80]}")
                continue
            print(
                f"{name:<38}{isa:>5}  {one['cpu_p50_ms']:>15.1f} {one['gmac_s']:>7.1f} "
                f"{one['fraction_of_peak']:>8.0%}   "
                f"{two['wall_p50_ms']:>17.1f}/{two['wall_min_ms']:<8.1f} {two['wall_min_fraction_of_peak']:>15.0%}"
            )
    print(
        "int8 embeddings vs fp32 (64 sample photos): "
        + ", ".join(f"{n}: mean cosine {c['mean']:.4f}, min {c['min']:.4f}" for n, c in cosines.items())
    )
    write_result(report, args.out)
    return report


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over every variant (default: 3)")
    p.add_argument("--forwards", type=int, default=6, help="timed forwards per variant and round (default: 6)")
    p.add_argument("--probe", choices=("fp32", "int8"), default=None, help="(child) report this process's kernels")
    p.add_argument("--worker", action="store_true", help="(child) time forwards on request")
    p.add_argument("--out", type=Path, default=RESULTS / "isa.json", help="JSON results")
    p.add_argument("--avx2-env", action="store_true", help="print the AVX2 cap as VAR=value words for env(1), and exit")
    return p


if __name__ == "__main__":
    main(get_args_parser().parse_args())
