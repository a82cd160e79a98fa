"""The machine a figure was measured on, printed beside every benchmark and recorded with
every lock: a throughput or a bit pattern means little without the CPU that produced it.

Which vector code runs depends on the CPU (torch's own kernels, inductor's generated C++,
MKL and oneDNN each dispatch on its instruction set), and so does whether bf16 is native
(AVX512-BF16 or AMX) or emulated (about 20-100x slower than fp32 on an AVX2-only CPU).
"""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The environment variables that move a CPU's dispatch (bench/RESULTS.md: the AVX2 stand-in)
DISPATCH_ENV = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "MKL_CBWR",
    "OMP_NUM_THREADS",
)
# oneDNN levels below its first with bf16 instructions: bf16 matmuls are then emulated
_ONEDNN_NO_BF16 = {
    "SSE41",
    "AVX",
    "AVX2",
    "AVX2_VNNI",
    "AVX2_VNNI_2",
    "AVX512_CORE",
    "AVX512_CORE_VNNI",
}


def cpuinfo() -> dict[str, str]:
    """The first processor's fields of /proc/cpuinfo (empty where there is none: not Linux)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in first.splitlines())}


def describe() -> dict[str, object]:
    """CPU model, the vector ISA torch dispatches to, whether bf16 is native, threads, cores,
    torch's version and BLAS, and the dispatch overrides set in the environment."""
    import torch  # here: the data stages that never import torch can still import this module

    info = cpuinfo()
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor() or "unknown",
        "capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": bool(flags & {"avx512_bf16", "amx_bf16"})
        and os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper() not in _ONEDNN_NO_BF16,
        "threads": torch.get_num_threads(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "python": platform.python_version(),
        "env": {k: os.environ[k] for k in DISPATCH_ENV if k in os.environ},
    }


def line(info: dict[str, object] | None = None) -> str:
    """One line for a benchmark's header."""
    m = info or describe()
    env = " ".join(f"{k}={v}" for k, v in m["env"].items()) or "no dispatch overrides"
    bf16 = "native bf16" if m["native_bf16"] else "no native bf16"
    return (
        f"machine: {m['cpu']}, {m['capability']}, {bf16}, {m['threads']} threads of "
        f"{m['cores']} cores, torch {m['torch']} ({m['blas']}), Python {m['python']}; {env}"
    )
