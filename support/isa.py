"""The kernels' instruction-set caps: the environment variables that cap them, the AVX2 cap (all AWS Lambda
promises on x86_64) and a child environment with a cap in force (set before torch loads; ``bench.isa`` says
which library reads which variable).

    env $(python -m support.isa) CMD   # run CMD with the kernels capped at AVX2 (make test-avx2 does)
"""

from __future__ import annotations

import os

from support.service import REPO_ROOT

# Environment variables that cap the kernels' instruction set (set in a child process, before torch loads).
ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "FBGEMM_ENABLE_INSTRUCTIONS")
AVX2_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "DNNL_MAX_CPU_ISA": "AVX2",
    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2",
}
ISAS = {"full": {}, "avx2": AVX2_ENV}


def isa_env(isa: str) -> dict[str, str]:
    """This process's environment with the kernels capped for ``isa`` ("full" removes every cap)."""
    return {**{k: v for k, v in os.environ.items() if k not in ISA_ENV}, **ISAS[isa], "PYTHONPATH": str(REPO_ROOT)}


def avx2_words() -> str:
    """The AVX2 cap as ``VAR=value`` words for env(1)."""
    return " ".join(f"{k}={v}" for k, v in AVX2_ENV.items())


if __name__ == "__main__":
    print(avx2_words())
