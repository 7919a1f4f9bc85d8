"""What this CPU can run natively, read from ``/proc/cpuinfo``: a bf16 row is offered only where the hardware
has bf16 instructions. Without them a runtime either refuses bf16 or emulates it, and an emulated bf16 is slower
than fp32 and less exact: never an optimisation worth reporting.

Every function takes the flag set as an argument (None: this machine's), so tests can ask either answer."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

# Instructions that compute with bf16 natively: AVX-512 BF16 (dot products and conversions; Intel Cooper Lake and
# Sapphire Rapids on, AMD Zen 4 on) and AMX-BF16 (tile matrix multiply; Intel Sapphire Rapids on).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# Flags worth naming when saying what a CPU has instead.
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_fp16", "amx_int8")


@functools.cache
def cpu_info() -> tuple[str, frozenset[str]]:
    """This machine's CPU model name and its flags (empty where /proc/cpuinfo cannot be read)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), frozenset()
    lines = text.splitlines()
    model = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), "")
    flags = next((ln.split(":", 1)[1] for ln in lines if ln.startswith(("flags", "Features"))), "")
    return model or platform.machine(), frozenset(flags.split())


def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags."""
    return cpu_info()[1]


def cpu_bf16_support(flags: set[str] | frozenset[str] | None = None, model: str | None = None) -> tuple[bool, str]:
    """Whether a CPU with ``flags`` (None: this machine's) runs bf16 natively, and if not, why not in words for an
    ``unavailable`` row: ``CPU has no native bf16 (needs avx512_bf16 or amx_bf16; this CPU: AMD EPYC with avx2)``.
    When it does, the reason names the flags found (``avx512_bf16``)."""
    if flags is None:
        model_here, flags = cpu_info()
        model = model if model is not None else model_here
    found = [f for f in BF16_FLAGS if f in flags]
    if found:
        return True, f"native bf16: {', '.join(found)}"
    has = [f for f in VECTOR_FLAGS if f in flags]
    this = f"{model or 'this CPU'} with {', '.join(has)}" if has else (model or "no vector flags found")
    return False, f"CPU has no native bf16 (needs {' or '.join(BF16_FLAGS)}; this CPU: {this})"
