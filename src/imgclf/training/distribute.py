"""Training on several devices with `tf.distribute` (`--distribute`).

    none          the default strategy: one device
    mirrored      MirroredStrategy: every visible GPU of this machine (or, for tests and
                  experiments, the CPU split into IMGCLF_LOGICAL_CPUS logical devices), one
                  copy of the model each, gradients all-reduced every step
    auto          mirrored when more than one GPU is visible, else none
    multi-worker  MultiWorkerMirroredStrategy from TF_CONFIG (or --workers/--worker-index):
                  one process per machine, each with its GPUs (or CPU), all-reducing over the
                  network

The batch size is global: `--batch-size` images per step across all replicas, each replica
taking batch_size / replicas. A recipe's default batch is per device, so by default the
global batch is the recipe's times the replicas, and step sizes follow the recipe's own
batch-size rule (`scale_lr_with_batch`). Keras' metrics (the confusion matrix among them)
are summed over replicas, so every per-epoch figure covers all of the validation images.

With several replicas imgclf runs its own loop (`fit_replicated`): Keras 3's model.fit fails
under MultiWorkerMirroredStrategy and its evaluation under MirroredStrategy on an uneven
batch (docs/distribute.md). The loop keeps model.fit's contract: Keras' own train_step under
`strategy.run`, the same callbacks with the same logs, the same checkpoints. Each worker
reads its own shard of the training and validation images (`worker_shard`), and only the
chief (worker 0) writes the run folder; the others write to a private temporary folder that
is deleted when they finish.
"""

from __future__ import annotations

import functools
import json
import os

from ..errors import ImgclfError

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


def local_workers(count: int) -> str:
    """--workers for `count` worker processes on this machine: 127.0.0.1 with free ports
    (to try multi-worker training, or test it, on one machine)."""
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return ",".join(f"127.0.0.1:{s.getsockname()[1]}" for s in sockets)
    finally:
        for s in sockets:
            s.close()


def make_strategy(distribute: str):
    """The tf.distribute strategy for `distribute` (config.DISTRIBUTE_MODES). Create it before any other
    TensorFlow work: multi-worker collectives are configured when the strategy starts."""
    import tensorflow as tf

    if distribute == "multi-worker":
        if not os.environ.get("TF_CONFIG"):
            raise ImgclfError("--distribute multi-worker needs TF_CONFIG, or --workers host:port,host:port "
                              "--worker-index I (README: More machines)")
        try:
            config = json.loads(os.environ["TF_CONFIG"])
            valid = bool(config["cluster"]) and config["task"]["type"] in config["cluster"]
        except (ValueError, KeyError, TypeError):
            valid = False
        if not valid:
            raise ImgclfError("TF_CONFIG must be JSON such as {\"cluster\": {\"worker\": [\"host1:port\", "
                              "\"host2:port\"]}, \"task\": {\"type\": \"worker\", \"index\": 0}}")
        return tf.distribute.MultiWorkerMirroredStrategy()
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


def worker_position(strategy) -> tuple[int, int]:
    """(this worker's index, number of workers): (0, 1) but under MultiWorkerMirroredStrategy,
    where a "chief" task, if the cluster has one, comes first."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    chiefs = len(cluster.get("chief", []))
    index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
    return index, chiefs + len(cluster.get("worker", []))


def is_chief(strategy) -> bool:
    """The worker that writes the run folder."""
    return worker_position(strategy)[0] == 0


def worker_shard(images, strategy):
    """This worker's share of `images`: every W-th image from its index on (by file for
    folders and CSVs, by index for arrays held in memory). Images are sorted by class, so
    each shard keeps the class balance; shards are disjoint and together cover all."""
    import numpy as np

    index, count = worker_position(strategy)
    return images if count == 1 else images.subset(np.arange(index, len(images), count))


def all_sum(strategy, values):
    """`values` (a float array) summed over the workers: a collective, which every worker
    must call at the same point. The identity for one worker."""
    import numpy as np

    values = np.asarray(values, np.float64)
    return values if worker_position(strategy)[1] == 1 else _summing(strategy)(values).numpy()


@functools.lru_cache(maxsize=4)
def _summing(strategy):
    """A compiled all-reduce for `all_sum` (each local replica contributes its share)."""
    import tensorflow as tf

    local = len(strategy.extended.worker_devices)

    @tf.function
    def summed(values):
        per_replica = strategy.run(lambda v: v / local, args=(values,))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)
    return summed


def strategy_name(strategy) -> str:
    """The strategy's public name (MultiWorkerMirroredStrategy's class is another)."""
    return "MultiWorkerMirroredStrategy" if getattr(strategy, "cluster_resolver", None) else type(strategy).__name__


def fit_replicated(model, strategy, dataset, *, steps_per_epoch: int, epochs: int, initial_epoch: int,
                   callbacks: list, class_weight: list[float] | None = None) -> None:
    """model.fit(dataset, steps_per_epoch, epochs, initial_epoch, callbacks, class_weight) under
    a strategy with several replicas, done here (docs/distribute.md). `dataset` is this
    worker's per-replica batches (`distribute_datasets_from_function` hands them to its
    replicas in turn); each step is Keras' own `model.train_step` under `strategy.run`
    (gradients all-reduced by the optimizer, the loss scaled by the number of replicas);
    the epoch's loss and metrics are read across replicas, summed over all of them.
    Callbacks get what model.fit gives them: train begin/end, epoch begin/end with the
    logs, batch begin/end."""
    import keras
    import tensorflow as tf

    if class_weight is not None:
        weights = tf.constant(class_weight, tf.float32)
        dataset = dataset.map(lambda x, y: (x, y, tf.gather(weights, y)))
    iterator = iter(strategy.distribute_datasets_from_function(lambda ctx: dataset))
    # variables are created outside the replicas, before the step is traced: the model's,
    # the loss trackers' and metrics' (what model.fit's own _symbolic_build does) and the
    # optimizer's
    model._symbolic_build(data_batch=dataset.element_spec)
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)

    @tf.function
    def train_function(iterator):
        strategy.run(model.train_step, args=(next(iterator),))

    callback_list = keras.callbacks.CallbackList(callbacks, model=model, epochs=epochs, steps=steps_per_epoch,
                                                 verbose=0)
    model.stop_training = False
    callback_list.on_train_begin()
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            train_function(iterator)
            callback_list.on_train_batch_end(step)
        logs = _flat_logs(model.get_metrics_result())
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end()


def _flat_logs(results: dict) -> dict[str, float]:
    """Metric results as model.fit's logs: nested dicts flattened, empty ones dropped."""
    logs = {}
    for name, value in results.items():
        logs.update(_flat_logs(value) if isinstance(value, dict) else {name: float(value)})
    return logs
