"""What this machine is: the one place that reads /proc/cpuinfo and asks TensorFlow for GPUs.

`precision` decides bfloat16 from it, and every run folder records it (environment.json).
"""

from __future__ import annotations

import functools
import os
import platform
import sys
from datetime import datetime
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


@functools.lru_cache(maxsize=1)
def _cpuinfo() -> dict[str, str]:
    """The first processor's `key: value` lines of /proc/cpuinfo ({} where there is none)."""
    fields: dict[str, str] = {}
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return fields
    for line in lines:
        if not line.strip():
            if fields:
                break  # the first processor is enough: they are alike
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def available_memory() -> int | None:
    """Bytes of memory this process can still take: the kernel's MemAvailable, capped by a
    cgroup (container) limit; None where neither can be read."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    cgroup = Path("/sys/fs/cgroup")
    for limit, usage in ((cgroup / "memory.max", cgroup / "memory.current"),
                         (cgroup / "memory/memory.limit_in_bytes", cgroup / "memory/memory.usage_in_bytes")):
        try:
            cap = limit.read_text().strip()
            if cap.isdigit() and int(cap) < 2**60:
                found.append(int(cap) - int(usage.read_text().strip()))
                break
        except (OSError, ValueError):
            continue
    return max(0, min(found)) if found else None


def cpu_flags() -> set[str]:
    return set(_cpuinfo().get("flags", "").split())


def cpu_vendor() -> str:
    """/proc/cpuinfo's vendor_id: 'GenuineIntel', 'AuthenticAMD', ... ('' where there is none)."""
    return _cpuinfo().get("vendor_id", "")


def cpu_name() -> str:
    return _cpuinfo().get("model name") or platform.processor() or "unknown"


def gpu_details() -> list[dict]:
    """TensorFlow's details of each visible GPU ({'compute_capability': (8, 0), ...})."""
    import tensorflow as tf

    return [tf.config.experimental.get_device_details(d) for d in tf.config.list_physical_devices("GPU")]


def environment(seed: int) -> dict:
    """Software versions and hardware, as recorded in a run folder's environment.json."""
    import keras
    import matplotlib
    import numpy as np
    import PIL
    import sklearn
    import tensorflow as tf

    from .. import __version__

    return {
        "imgclf": __version__,
        "python": sys.version.split()[0],
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "matplotlib": matplotlib.__version__,
        "pillow": PIL.__version__,
        "platform": platform.platform(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "gpus": [d.name for d in tf.config.list_physical_devices("GPU")],
        "seed": seed,
        "started": datetime.now().isoformat(timespec="seconds"),
    }
