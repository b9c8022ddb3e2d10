"""`imgclf bench`: three ways to train on the same data and split, in one process.

(a) notebook: the seed model, `model.fit` on NumPy float arrays at batch size 32, and a
    callback that runs `model.predict` on the validation set each epoch for
    scikit-learn's F1/precision/recall (a second pass over the validation data).
(b) reference: `imgclf.train` with the seed recipe (same model, optimizer, epochs).
(c) fast: `imgclf.train` with the fast recipe (`fast_model`: `fast`, `fast-small`
    or `fast-tiny`).

Each gets the same epoch budget (`--epochs`; the fast recipe keeps its own unless
given) and optionally a wall-time budget (`--minutes`). Reported: median epoch time,
images/s, achieved GFLOP/s (training FLOPs per image x images/s) next to this machine's
matrix-multiply peak, best validation accuracy, and the wall time each needs to reach
(a)'s best validation accuracy (or the accuracy given as `target`). Writes bench.json and
bench.png (validation accuracy against wall time). Timings drift on a shared machine:
compare within one run, repeat.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import keras
import numpy as np
from sklearn.metrics import f1_score, precision_score, recall_score

from ..config import BENCH_CONTENDERS, TrainConfig
from ..data.sources import load_data
from ..data.split import check_classes, split_indices
from ..errors import ImgclfError
from ..evaluation.plots import bench_figure
from ..models.recipes import resolve
from ..models.registry import create_model
from ..run.folder import RunFolder
from ..training.hardware import environment
from ..training.loop import train
from ..training.precision import resolve_precision
from .flops import measure_peak_gflops, training_flops_per_image

NOTEBOOK_BATCH = 32  # Keras' default batch size, what a notebook uses


class EpochClock(keras.callbacks.Callback):
    """Wall time per epoch and validation accuracy; stops training past a time budget.
    Put it last in the callback list so the epoch's metric work is inside the timing."""

    def __init__(self, budget_seconds: float | None = None):
        super().__init__()
        self.budget = budget_seconds
        self.seconds: list[float] = []
        self.val_accuracy: list[float] = []
        self._began = None

    def on_train_begin(self, logs=None):
        self._began = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)
        self.val_accuracy.append(float((logs or {}).get("val_accuracy", np.nan)))
        if self.budget is not None and time.perf_counter() - self._began >= self.budget:
            self.model.stop_training = True


class SklearnMetrics(keras.callbacks.Callback):
    """What a notebook does: predict the validation set again, then ask scikit-learn."""

    def __init__(self, x_val, y_val):
        super().__init__()
        self.x_val, self.y_val = x_val, y_val

    def on_epoch_end(self, epoch, logs=None):
        predicted = self.model.predict(self.x_val, verbose=0).argmax(axis=1)
        for name, fn in (("val_f1", f1_score), ("val_precision", precision_score), ("val_recall", recall_score)):
            logs[name] = fn(self.y_val, predicted, average="macro", zero_division=0)


def bench_notebook(train_set, val_set, config: TrainConfig, epochs: int, budget: float | None) -> dict:
    keras.utils.set_random_seed(config.seed)
    x_train, y_train = train_set.array.astype("float32"), train_set.labels
    x_val, y_val = val_set.array.astype("float32"), val_set.labels
    model = create_model("seed", x_train.shape[1:], len(train_set.class_names))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    clock = EpochClock(budget)
    model.fit(x_train, y_train, batch_size=NOTEBOOK_BATCH, epochs=epochs, validation_data=(x_val, y_val),
              callbacks=[SklearnMetrics(x_val, y_val), clock], verbose=0)
    return summarize("a: notebook (model.fit on NumPy, batch 32, sklearn callback), float32", clock.seconds,
                     clock.val_accuracy, len(train_set), training_flops_per_image(model))


def bench_recipe(label: str, config: TrainConfig, data, out: Path, train_images: int, budget: float | None) -> dict:
    clock = EpochClock(budget)
    # a second bench into the same folder moves the previous contender's run aside (never deletes it)
    run = RunFolder(train(config.replace(out=str(out), overwrite=True, verbose=0), data=data, extra_callbacks=[clock]))
    history = run.read_history()
    model = keras.models.load_model(run.last_model, compile=False)
    resolved = resolve(config)
    name = f"{label}, batch {resolved.batch_size}, {resolve_precision(resolved.precision)}"
    return summarize(name, clock.seconds, history["val_accuracy"].tolist(), train_images,
                     training_flops_per_image(model))


def summarize(name: str, seconds: list[float], val_accuracy: list[float], train_images: int, flops: int) -> dict:
    steady = seconds[1:] or seconds  # epoch 1 includes graph tracing
    epoch = statistics.median(steady)
    images_per_second = train_images / epoch
    return {
        "name": name,
        "epochs": len(seconds),
        "epoch_seconds": [round(s, 2) for s in seconds],
        "elapsed_seconds": [round(float(t), 1) for t in np.cumsum(seconds)],
        "median_epoch_seconds": round(epoch, 2),
        "images_per_second": round(images_per_second, 1),
        "training_gflop_per_image": round(flops / 1e9, 4),
        "achieved_gflops": round(images_per_second * flops / 1e9, 1),
        "val_accuracy": [round(a, 4) for a in val_accuracy],
        "best_val_accuracy": round(max(val_accuracy), 4),
    }


def time_to_reach(result: dict, target: float) -> float | None:
    for elapsed, accuracy in zip(result["elapsed_seconds"], result["val_accuracy"]):
        if accuracy >= target:
            return elapsed
    return None


def run_bench(config: TrainConfig, *, epochs: int | None, minutes: float | None, out: Path,
              contenders: tuple[str, ...] = BENCH_CONTENDERS, fast_epochs: int | None = None,
              fast_model: str = "fast", target: float | None = None) -> dict:
    """`target`: the validation accuracy each contender is timed to (default: the notebook's best)."""
    if target is not None and not 0 < target <= 1:
        raise ImgclfError(f"--target is a validation accuracy between 0 and 1, got {target}")
    out = Path(out)
    budget = minutes * 60 if minutes else None
    data = load_data(config)  # decoded once; every contender gets the same arrays and split
    check_classes(data.labelled)
    train_idx, val_idx = split_indices(data.labelled.labels, config.val_split, config.data_seed)
    train_set, val_set = data.labelled.subset(train_idx), data.labelled.subset(val_idx)
    seed_epochs = epochs or 1
    print(f"bench: {len(train_set)} train / {len(val_set)} validation images; contenders: {', '.join(contenders)}; "
          f"{seed_epochs} epoch(s) for the seed model" + (f", at most {minutes} min each" if minutes else ""))
    peak = {"float32": round(measure_peak_gflops("float32"), 1), "bfloat16": round(measure_peak_gflops("bfloat16"), 1)}
    print(f"machine peak (2048x2048 matmul): {peak['float32']} GFLOP/s float32, {peak['bfloat16']} GFLOP/s bfloat16")
    results = {}
    if "notebook" in contenders:
        results["notebook"] = bench_notebook(train_set, val_set, config, seed_epochs, budget)
        print(line(results["notebook"]))
    if "reference" in contenders:
        results["reference"] = bench_recipe("b: imgclf reference recipe (seed)",
                                            config.replace(model="seed", epochs=seed_epochs), data,
                                            out / "reference_run", len(train_set), budget)
        print(line(results["reference"]))
    if "fast" in contenders:
        results["fast"] = bench_recipe(f"c: imgclf {fast_model} recipe",
                                       config.replace(model=fast_model, epochs=fast_epochs),
                                       data, out / "fast_run", len(train_set), budget)
        print(line(results["fast"]))
    report = {"train_images": len(train_set), "val_images": len(val_set), "peak_gflops": peak,
              "contenders": results, "environment": environment(config.seed)}
    if target is None and "notebook" in results:
        target = results["notebook"]["best_val_accuracy"]
    if target is not None:
        report["target_val_accuracy"] = target
        base = time_to_reach(results["notebook"], target) if "notebook" in results else None
        for result in results.values():
            result["seconds_to_target"] = time_to_reach(result, target)
            if base and result["seconds_to_target"]:
                result["speedup_to_target"] = round(base / result["seconds_to_target"], 2)
        print(f"time to reach {target:.4f} validation accuracy (seconds of training epochs, validation included):")
        for result in results.values():
            reached, speedup = result["seconds_to_target"], result.get("speedup_to_target")
            print(f"  {result['name']}: " + (f"{reached:.0f}s" if reached else "not reached")
                  + (f" ({speedup:.2f}x the notebook)" if speedup else ""))
    if "notebook" in results:
        for result in results.values():
            result["epoch_speedup"] = round(results["notebook"]["median_epoch_seconds"]
                                            / result["median_epoch_seconds"], 2)
            print(f"  {result['name']}: epoch time {result['epoch_speedup']:.2f}x faster than the notebook")
    RunFolder(out).write_bench(report, bench_figure(report["contenders"]))
    print(f"wrote {out / 'bench.json'} and {out / 'bench.png'}")
    return report


def line(result: dict) -> str:
    return (f"{result['name']}: {result['epochs']} epochs, median epoch {result['median_epoch_seconds']}s, "
            f"{result['images_per_second']} images/s, {result['achieved_gflops']} GFLOP/s, "
            f"best val accuracy {result['best_val_accuracy']}")
