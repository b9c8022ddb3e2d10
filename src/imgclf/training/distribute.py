"""Training on several devices with `tf.distribute` (`--distribute`).

    none          the default strategy: one device
    mirrored      MirroredStrategy: every visible GPU of this machine (or, for tests and
                  experiments, the CPU split into IMGCLF_LOGICAL_CPUS logical devices), one
                  copy of the model each, gradients all-reduced every step
    auto          mirrored when more than one GPU is visible, else none
    multi-worker  MultiWorkerMirroredStrategy from TF_CONFIG (or --workers/--worker-index):
                  refused for now, see docs/distribute.md

The batch size is global: `--batch-size` images per step across all replicas, each replica
taking batch_size / replicas. A recipe's default batch is per device, so by default the
global batch is the recipe's times the replicas, and step sizes follow the recipe's own
batch-size rule (`scale_lr_with_batch`). Keras' metrics (the confusion matrix among them)
are summed over replicas, so every per-epoch figure covers all of the validation images.
"""

from __future__ import annotations

import json
import os

from ..errors import ImgclfError

DISTRIBUTE = ("auto", "none", "mirrored", "multi-worker")
LOGICAL_CPUS = "IMGCLF_LOGICAL_CPUS"  # split the CPU into this many logical devices (before TensorFlow starts)


def split_cpu() -> None:
    """With IMGCLF_LOGICAL_CPUS=N set, make TensorFlow see N logical CPU devices (what Keras'
    own MirroredStrategy tests do). Must run before TensorFlow initialises its devices."""
    count = int(os.environ.get(LOGICAL_CPUS, "0") or 0)
    if count > 1:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * count)


def tf_config(workers: str, index: int) -> str:
    """TF_CONFIG for worker `index` of the comma-separated host:port list `workers`."""
    cluster = [w.strip() for w in workers.split(",") if w.strip()]
    if len(cluster) < 2 or not all(":" in w for w in cluster):
        raise ImgclfError(f"--workers needs two or more host:port entries, comma-separated (got {workers!r})")
    if not 0 <= index < len(cluster):
        raise ImgclfError(f"--worker-index must be 0..{len(cluster) - 1} (got {index})")
    return json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})


def make_strategy(distribute: str):
    """The tf.distribute strategy for `distribute` (DISTRIBUTE)."""
    import tensorflow as tf

    if distribute == "multi-worker":
        raise ImgclfError("--distribute multi-worker is not available yet: Keras 3's model.fit fails under "
                          "MultiWorkerMirroredStrategy on TensorFlow 2.21 (docs/distribute.md); use mirrored "
                          "on one machine")
    gpus = tf.config.list_logical_devices("GPU")
    if distribute == "none" or (distribute == "auto" and len(gpus) < 2):
        return tf.distribute.get_strategy()  # the default: one device, no replication
    devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(devices)


def replicas(strategy) -> int:
    return int(strategy.num_replicas_in_sync)


def tf_strategy():
    """The strategy of the current scope (the default one outside any)."""
    import tensorflow as tf

    return tf.distribute.get_strategy()
