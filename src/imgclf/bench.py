"""`imgclf bench`: imgclf's training against the way a notebook trains the same model,
one process, same data and split, side by side.

(a) notebook: the seed model, `model.fit` on NumPy float arrays at batch size 32, and a
    callback that runs `model.predict` on the validation set each epoch for
    scikit-learn's F1/precision/recall (a second pass over the validation data).
(b) imgclf:   `imgclf.train` with the reference recipe (tf.data from uint8 in memory,
    metrics from the confusion matrix of Keras' own validation pass).

Epoch time is measured from epoch start to the end of all per-epoch metric work.
Benchmarks are a command, not tests: timings on a shared machine drift, so compare
the ratio from one run, and repeat.
"""

from __future__ import annotations

import csv
import statistics
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score

from .config import TrainConfig
from .data import check_classes, load_data, split_indices
from .files import write_json
from .models import create_model
from .train import environment, train

NOTEBOOK_BATCH = 32  # Keras' default batch size, what a notebook uses


class _EpochClock(keras.callbacks.Callback):
    """Wall time per epoch, and validation accuracy as logged (put last in the list)."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self.val_accuracy: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.val_accuracy.append(float((logs or {}).get("val_accuracy", np.nan)))


class _SklearnMetrics(keras.callbacks.Callback):
    """What a notebook does: predict the validation set again, then ask scikit-learn."""

    def __init__(self, x_val, y_val):
        super().__init__()
        self.x_val, self.y_val = x_val, y_val

    def on_epoch_end(self, epoch, logs=None):
        predicted = self.model.predict(self.x_val, verbose=0).argmax(axis=1)
        for name, fn in (("val_f1", f1_score), ("val_precision", precision_score), ("val_recall", recall_score)):
            logs[name] = fn(self.y_val, predicted, average="macro", zero_division=0)


def bench_notebook(train_set, val_set, epochs: int, config: TrainConfig) -> dict:
    keras.utils.set_random_seed(config.seed)
    x_train, y_train = train_set.array.astype("float32"), train_set.labels
    x_val, y_val = val_set.array.astype("float32"), val_set.labels
    model = create_model("seed", x_train.shape[1:], len(train_set.class_names))
    model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    clock = _EpochClock()
    model.fit(x_train, y_train, batch_size=NOTEBOOK_BATCH, epochs=epochs, validation_data=(x_val, y_val),
              callbacks=[_SklearnMetrics(x_val, y_val), clock], verbose=0)
    return _summary("a: notebook (model.fit on NumPy, sklearn callback)", clock.seconds, clock.val_accuracy,
                    len(train_set))


def bench_imgclf(config: TrainConfig, data, epochs: int, out: Path, train_images: int) -> dict:
    run = train(config.replace(epochs=epochs, out=str(out / "imgclf_run"), verbose=0), data=data)
    rows = list(csv.DictReader(open(run / "history.csv")))
    return _summary("b: imgclf reference recipe", [float(r["seconds"]) for r in rows],
                    [float(r["val_accuracy"]) for r in rows], train_images)


def _summary(name: str, seconds: list[float], val_accuracy: list[float], train_images: int) -> dict:
    steady = seconds[1:] or seconds  # epoch 1 includes graph tracing
    epoch = statistics.median(steady)
    return {
        "name": name,
        "epoch_seconds": [round(s, 2) for s in seconds],
        "median_epoch_seconds": round(epoch, 2),
        "total_seconds": round(sum(seconds), 1),
        "images_per_second": round(train_images / epoch, 1),
        "val_accuracy": [round(a, 4) for a in val_accuracy],
        "best_val_accuracy": round(max(val_accuracy), 4),
    }


def run_bench(config: TrainConfig, *, epochs: int, out: Path) -> dict:
    out = Path(out)
    data = load_data(config)  # decoded once; both contenders get the same arrays and split
    check_classes(data.labelled)
    train_idx, val_idx = split_indices(data.labelled.labels, config.val_split, config.seed)
    train_set, val_set = data.labelled.subset(train_idx), data.labelled.subset(val_idx)
    print(f"bench: {len(train_set)} train / {len(val_set)} validation images, {epochs} epoch(s) each")
    notebook = bench_notebook(train_set, val_set, epochs, config)
    print(_line(notebook))
    ours = bench_imgclf(config, data, epochs, out, len(train_set))
    print(_line(ours))
    speedup = notebook["median_epoch_seconds"] / ours["median_epoch_seconds"]
    print(f"imgclf epoch time vs notebook: {speedup:.2f}x faster (median epoch {ours['median_epoch_seconds']}s "
          f"vs {notebook['median_epoch_seconds']}s)")
    report = {"epochs": epochs, "train_images": len(train_set), "val_images": len(val_set),
              "contenders": [notebook, ours], "speedup_b_over_a": round(speedup, 3),
              "environment": environment(config)}
    write_json(out / "bench.json", report)
    print(f"wrote {out / 'bench.json'}")
    return report


def _line(result: dict) -> str:
    return (f"{result['name']}: median epoch {result['median_epoch_seconds']}s, "
            f"{result['images_per_second']} images/s, best val accuracy {result['best_val_accuracy']}")
