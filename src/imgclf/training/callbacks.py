"""Keras callbacks of the training loop: per-epoch validation metrics (history.csv) and the
best model so far (best_model.keras)."""

from __future__ import annotations

import math
import sys
import time

import keras
import numpy as np

from ..errors import StorageError
from ..evaluation.metrics import ConfusionMatrix, summarize
from ..inference.modelio import save_model
from ..run.folder import RunFolder
from .checkpoint import Stateful


class EpochMetrics(keras.callbacks.Callback, Stateful):
    """After each epoch: derive validation F1/precision/recall (macro and per class) from
    the confusion matrix Keras accumulated during its validation pass, add them to the
    logs (so History, checkpoints and progress bars see them), rewrite history.csv and
    print a one-line summary."""

    def __init__(self, matrix: ConfusionMatrix, class_names: list[str], run: RunFolder, *,
                 epochs: int, verbose: int = 1):
        super().__init__()
        self.matrix_metric = matrix
        self.class_names = class_names
        self.run = run
        self.epochs = epochs
        self.verbose = verbose
        self.rows: list[dict] = []
        self.best_val_loss = math.inf
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        summary = summarize(self.matrix_metric.matrix(), self.class_names)
        logs["val_f1"] = summary["f1"]
        logs["val_precision"] = summary["precision"]
        logs["val_recall"] = summary["recall"]
        row = {
            "epoch": epoch + 1,
            "loss": logs.get("loss"),
            "accuracy": logs.get("accuracy"),
            "val_loss": logs.get("val_loss"),
            "val_accuracy": summary["accuracy"],
            "val_f1": summary["f1"],
            "val_precision": summary["precision"],
            "val_recall": summary["recall"],
            "learning_rate": _learning_rate(self.model),
            "seconds": time.perf_counter() - self._started,
        }
        if logs.get("val_nll") is not None:  # the plain log-loss, where the loss is smoothed
            row["val_nll"] = logs["val_nll"]
        for item in summary["per_class"]:
            for key in ("f1", "precision", "recall"):
                row[f"val_{key}[{item['class']}]"] = item[key]
        self.rows.append(row)
        self.run.write_history(self.rows)
        improved = row["val_loss"] is not None and row["val_loss"] < self.best_val_loss
        if improved:
            self.best_val_loss = row["val_loss"]
        if self.verbose:
            print(format_epoch(row, self.epochs, improved), file=sys.stdout, flush=True)

    def get_state(self):
        return {"rows": self.rows}, []

    def set_state(self, info, arrays):
        """Continue from a checkpoint's rows: history.csv is rewritten with exactly those
        epochs (a later epoch a killed run wrote there is dropped: it will run again)."""
        self.rows = list(info["rows"])
        self.best_val_loss = min((r["val_loss"] for r in self.rows if r["val_loss"] is not None), default=math.inf)
        self.run.write_history(self.rows)


class BestModelCheckpoint(keras.callbacks.Callback, Stateful):
    """Save the model whenever validation loss reaches a new minimum (atomically, with
    class names). The best value and weights so far are part of a run's checkpoint, so a
    resumed run never replaces a better model with a worse one (keras-team/keras#17012)."""

    def __init__(self, run: RunFolder, class_names: list[str], **metadata):
        super().__init__()
        self.run = run
        self.class_names = class_names
        self.best = math.inf
        self.best_epoch: int | None = None
        self.best_weights: list[np.ndarray] | None = None
        self.metadata = metadata

    def on_epoch_end(self, epoch, logs=None):
        value = (logs or {}).get("val_loss")
        if value is not None and np.isfinite(value) and value < self.best:
            previous = self.best_epoch if self.run.best_model.exists() else None
            self.best = float(value)
            self.best_epoch = epoch + 1
            self.best_weights = [np.array(w) for w in self.model.get_weights()]
            try:
                self._save(self.model)
            except StorageError as exc:
                kept = f"the previous best model (epoch {previous}) is intact" if previous else "no best model yet"
                raise StorageError(exc.reason, exc.path, kept) from None

    def _save(self, model, weights=None):
        save_model(model, self.run.best_model, self.class_names, weights=weights, epoch=self.best_epoch,
                   val_loss=self.best, **self.metadata)

    def get_state(self):
        return {"best": self.best, "best_epoch": self.best_epoch}, list(self.best_weights or [])

    def set_state(self, info, arrays):
        """Take the best so far from a checkpoint and rewrite the best-model file from it:
        a killed run may have saved a 'best' of an epoch that will now run again."""
        self.best, self.best_epoch = float(info["best"]), info["best_epoch"]
        self.best_weights = list(arrays) or None
        if self.best_weights is not None:
            self._save(self.model, self.best_weights)
        else:
            self.run.remove_best_model()


def _learning_rate(model) -> float | None:
    try:
        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:  # schedules and exotic optimizers: not worth failing an epoch over
        return None


def format_epoch(row: dict, epochs: int, improved: bool) -> str:
    def f(key, digits=4):
        value = row.get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    return (
        f"epoch {row['epoch']:>3}/{epochs}  {row['seconds']:6.1f}s  "
        f"loss {f('loss')}  acc {f('accuracy')}  |  val_loss {f('val_loss')}  "
        f"val_acc {f('val_accuracy')}  f1 {f('val_f1')}  precision {f('val_precision')}  "
        f"recall {f('val_recall')}" + ("  * best, saved" if improved else "")
    )


class ReplicatedValidation(keras.callbacks.Callback):
    """The validation pass of a run with several replicas, done here instead of by Keras:
    Keras 3's evaluation under MirroredStrategy fails on a last batch that does not split
    evenly between replicas (docs/distribute.md). After each epoch, every validation image
    goes through the model once (its mirrored variables read on this device); val_loss and
    val_accuracy go into the logs and the counts into the confusion matrix, exactly what
    Keras' own pass gives `EpochMetrics`. With several workers each passes its own shard of
    the validation images and `all_sum` adds the sums and counts of all of them. Put it first
    among the callbacks."""

    def __init__(self, dataset, matrix: ConfusionMatrix, loss, all_sum=None):
        super().__init__()
        self.dataset = dataset
        self.matrix_metric = matrix
        self.loss = keras.losses.get(loss)
        self.all_sum = all_sum
        self._step = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        if self._step is None:
            model, loss = self.model, self.loss

            @tf.function
            def step(x, y):
                probs = model(x, training=False)
                values = tf.cast(loss(y, probs), tf.float32)  # per image (a mean, for reducing losses)
                summed = tf.reduce_sum(values) if values.shape.rank else values * tf.cast(tf.shape(y)[0], tf.float32)
                return summed, tf.argmax(probs, axis=-1, output_type=tf.int32)
            self._step = step
        total, count = 0.0, 0
        counts = np.zeros((self.matrix_metric.num_classes,) * 2, np.float32)
        for x, y in self.dataset:
            summed, predicted = self._step(x, y)
            total += float(summed)
            count += int(y.shape[0])
            np.add.at(counts, (y.numpy(), predicted.numpy()), 1)
        if self.all_sum is not None:
            summed = self.all_sum(np.concatenate([[total, count], counts.ravel()]))
            total, count, counts = summed[0], int(round(summed[1])), summed[2:].reshape(counts.shape)
        self.matrix_metric.counts.assign(counts.astype(np.float32))
        if logs is not None:
            logs["val_loss"] = total / max(count, 1)
            logs["val_accuracy"] = float(np.trace(counts) / max(count, 1))
