"""Choosing the compute precision: bfloat16 where the hardware has it, float32 otherwise.

Mixed precision keeps variables in float32 and computes in 16 bits; every imgclf model
ends in a float32 softmax, so losses and probabilities stay float32.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from ..config import AUTO, PRECISIONS
from .hardware import cpu_flags, gpu_details

# Keras' dtype policy of each precision: the 16-bit ones are mixed (float32 variables)
POLICIES = {name: name if name == "float32" else f"mixed_{name}" for name in PRECISIONS if name != AUTO}
CPU_BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # /proc/cpuinfo flags of CPUs with native bfloat16
GPU_BF16_MIN_CAPABILITY = (8, 0)  # NVIDIA Ampere and newer compute in bfloat16 natively


def auto_precision(gpus: list[dict] | None = None, flags: set[str] | None = None) -> str:
    """'bfloat16' or 'float16' on GPUs, 'bfloat16' on CPUs with native support, else 'float32'.

    `gpus` are TensorFlow device details ({'compute_capability': (8, 0)}, ...).
    """
    if gpus is None:
        gpus = gpu_details()
    if gpus:
        capability = tuple(gpus[0].get("compute_capability") or (0, 0))
        return "bfloat16" if capability >= GPU_BF16_MIN_CAPABILITY else "float16"
    flags = cpu_flags() if flags is None else flags
    return "bfloat16" if any(f in flags for f in CPU_BF16_FLAGS) else "float32"


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
