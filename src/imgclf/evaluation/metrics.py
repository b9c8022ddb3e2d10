"""Every classification figure comes from a confusion matrix.

`ConfusionMatrix` accumulates the matrix inside Keras' own validation pass, so
per-epoch F1/precision/recall cost no second prediction pass; `summarize`
derives accuracy, precision, recall and F1 (per class and macro-averaged).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops


class ConfusionMatrix(keras.metrics.Metric):
    """Accumulates counts[true, predicted] over the batches of one pass.

    `result()` adds nothing to Keras' logs: the `EpochMetrics` callback reads
    `matrix()` after each validation pass and derives every figure from it.
    """

    def __init__(self, num_classes: int, name: str = "confusion_matrix", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.counts = self.add_variable(
            shape=(num_classes, num_classes), initializer="zeros", dtype="float32", name="counts"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if len(y_true.shape) == 2 and y_true.shape[-1] == self.num_classes > 1:  # probabilities (MixUp, CutMix)
            y_true = ops.argmax(y_true, axis=-1)
        true = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), self.num_classes, dtype="float32")
        pred = ops.one_hot(ops.argmax(y_pred, axis=-1), self.num_classes, dtype="float32")
        self.counts.assign_add(ops.matmul(ops.transpose(true), pred))

    def result(self):
        return {}

    def reset_state(self):
        self.counts.assign(ops.zeros((self.num_classes, self.num_classes), dtype="float32"))

    def matrix(self) -> np.ndarray:
        return np.rint(keras.ops.convert_to_numpy(self.counts)).astype(np.int64)

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes}


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[i, j] = images of class i predicted as class j."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)), 1)
    return matrix


def summarize(matrix: np.ndarray, class_names: list[str]) -> dict:
    """Accuracy, macro precision/recall/F1 and the per-class table from a confusion matrix.

    Precision, recall and F1 of a class with no predictions / no images are 0,
    as scikit-learn's `zero_division=0`; macro averages are over the classes
    that occur in the labels or the predictions, as scikit-learn's defaults.
    """
    matrix = np.asarray(matrix, np.float64)
    tp = np.diag(matrix)
    support = matrix.sum(axis=1)
    predicted = matrix.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = (support > 0) | (predicted > 0)
    total = matrix.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else 0.0,
        "precision": float(precision[present].mean()) if present.any() else 0.0,
        "recall": float(recall[present].mean()) if present.any() else 0.0,
        "f1": float(f1[present].mean()) if present.any() else 0.0,
        "images": int(total),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(class_names)
        ],
    }
