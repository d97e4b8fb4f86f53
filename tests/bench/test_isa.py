"""bench/isa.py and the ISA facts every result records: parsing, the peak arithmetic, and the AVX2 cap taking
effect in a child process (ATen, oneDNN, FBGEMM and the service's int8 engine)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench.harness import cpu_facts, machine_info
from bench.isa import efficiency, parse_onednn_verbose, peak_key
from support.isa import AVX2_ENV, isa_env
from support.service import REPO_ROOT

CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC
cpu MHz\t\t: 2596.140
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 sha_ni

processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 avx fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 sha_ni
"""

VERBOSE = """onednn_verbose,v1,info,oneDNN v3.12.0 (commit 80afa71)
onednn_verbose,v1,info,cpu,isa:Intel AVX2
onednn_verbose,v1,primitive,exec,cpu,reorder,jit:uni,undef,src:f32,,64x3x7x7,0.02
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src:f32,,mb1_ic3oc64,22.3
onednn_verbose,v1,primitive,exec,cpu,convolution,jit_1x1:avx2,forward_training,src:f32,,mb1_ic64oc128,1.1
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,forward_training,src:f32,,mb1_ic64oc64,1.0
"""


def test_cpu_facts_reads_model_clock_and_only_the_isa_flags():
    facts = cpu_facts(CPUINFO)
    assert facts["model_name"] == "AMD EPYC" and facts["family_model"] == "25/17"
    assert facts["nominal_mhz"] == 2596.14 and facts["logical_cpus"] == 2
    assert facts["flags"] == ["avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16"]


def test_machine_info_names_the_capability_torch_runs_with():
    import torch

    info = machine_info()
    assert info["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert set(info["isa_env"]) <= set(AVX2_ENV) and len(info["loadavg"]) == 3


def test_parse_onednn_verbose_counts_convolution_kernels():
    parsed = parse_onednn_verbose(VERBOSE)
    assert parsed == {"onednn_isa": "Intel AVX2", "onednn_conv_kernels": {"jit:avx2": 2, "jit_1x1:avx2": 1}}


def test_efficiency_is_macs_over_cores_times_clock_times_rate():
    # 3.664 GMAC in 100 ms on one core at 3.66 GHz with 16 MAC/cycle: 36.64 of 58.56 GMAC/s.
    e = efficiency(3_664_000_000, 100.0, 3.66, 16)
    assert e["gmac_s"] == pytest.approx(36.64) and e["peak_gmac_s"] == pytest.approx(58.56)
    assert e["fraction_of_peak"] == pytest.approx(36.64 / 58.56)
    assert efficiency(3_664_000_000, 100.0, 3.66, 16, cores=2)["peak_gmac_s"] == pytest.approx(117.12)


def test_int8_is_held_to_vnni_only_uncapped_on_a_vnni_cpu():
    assert peak_key("int8", "full", ["avx2", "avx512_vnni"]) == "int8_avx512vnni"
    assert peak_key("int8", "avx2", ["avx2", "avx512_vnni"]) == "int8_avx2"
    assert peak_key("int8", "full", ["avx2"]) == "int8_avx2"
    assert peak_key("fp32", "full", ["avx2", "avx512f"]) == "fp32_avx512"
    assert peak_key("fp32", "avx2", ["avx2", "avx512f"]) == "fp32_avx2"


def test_full_isa_env_drops_every_cap(monkeypatch):
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    assert "ONEDNN_MAX_CPU_ISA" not in isa_env("full")
    assert {k: isa_env("avx2")[k] for k in AVX2_ENV} == AVX2_ENV


CHILD = """
import json, torch
from bench.isa import fbgemm_isa
from lambda_fn.vision.engine import int8_engine
print(json.dumps({"aten": torch.backends.cpu.get_cpu_capability(), "fbgemm": fbgemm_isa(), "int8": int8_engine()}))
"""


def test_the_avx2_cap_takes_effect_in_a_child_process():
    import torch

    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("not an x86-64 CPU with AVX2")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=REPO_ROOT, env=isa_env("avx2"), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["aten"] == "AVX2" and got["int8"] == "onednn"
    assert got["fbgemm"] in ("avx2", None)  # None: a torch build without FBGEMM's symbol exported
