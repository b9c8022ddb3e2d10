"""Choosing the compute precision: bfloat16 where the hardware computes it faster, float32 otherwise.

On CPUs, bfloat16 pays where it has its own arithmetic: Intel's AMX tiles (`amx_bf16`), or
AMD Zen 4's AVX-512 BF16, which runs its dot products at twice float32's rate. Intel's
AVX-512 BF16 without AMX (a Xeon whose AMX the hypervisor hides) does not: its VDPBF16PS runs
at the rate of a float32 FMA, and the casts come on top. Measured there (docs/results.md):
the `fast` training step in 5.82 s in bfloat16 against 4.06 s in float32 (medians of 3).

Mixed precision keeps variables in float32 and computes in 16 bits; every imgclf model
ends in a float32 softmax, so losses and probabilities stay float32.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..config import AUTO, PRECISIONS
from .hardware import cpu_flags, cpu_vendor, gpu_details

# Keras' dtype policy of each precision: the 16-bit ones are mixed (float32 variables)
POLICIES = {name: name if name == "float32" else f"mixed_{name}" for name in PRECISIONS if name != AUTO}
CPU_BF16_FLAGS = {"amx_bf16": None, "avx512_bf16": "AuthenticAMD"}  # flag: the vendor it pays on (None: any)
GPU_BF16_MIN_CAPABILITY = (8, 0)  # NVIDIA Ampere and newer compute in bfloat16 natively


def auto_precision(gpus: list[dict] | None = None, flags: set[str] | None = None, vendor: str | None = None) -> str:
    """'bfloat16' or 'float16' on GPUs, 'bfloat16' on CPUs where it is faster (see the module),
    else 'float32'.

    `gpus` are TensorFlow device details ({'compute_capability': (8, 0)}, ...); `flags` and
    `vendor` those of /proc/cpuinfo.
    """
    if gpus is None:
        gpus = gpu_details()
    if gpus:
        capability = tuple(gpus[0].get("compute_capability") or (0, 0))
        return "bfloat16" if capability >= GPU_BF16_MIN_CAPABILITY else "float16"
    flags = cpu_flags() if flags is None else flags
    vendor = cpu_vendor() if vendor is None else vendor
    fast = any(flag in flags and only in (None, vendor) for flag, only in CPU_BF16_FLAGS.items())
    return "bfloat16" if fast else "float32"


def resolve_precision(requested: str) -> str:
    return auto_precision() if requested == AUTO else requested


@contextmanager
def compute_precision(precision: str) -> Iterator[str]:
    """Set Keras' global dtype policy for the models built inside, then restore it."""
    import keras

    previous = keras.mixed_precision.global_policy().name
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    try:
        yield precision
    finally:
        keras.mixed_precision.set_global_policy(previous)
