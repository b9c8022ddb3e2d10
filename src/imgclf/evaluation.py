"""Evaluation: a saved model on labelled images, every figure from one confusion matrix
(`imgclf evaluate`, and the final evaluation of a training run)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import TrainConfig, model_data_config
from .data.labelled import Images
from .data.sources import load_data
from .errors import DataError
from .metrics import confusion_matrix, summarize
from .modelio import LoadedModel
from .predict import PREDICT_BATCH, image_probabilities
from .runfolder import RunFolder
from .runtimes import open_model

EPSILON = 1e-7  # probability floor in the log-loss, as Keras' cross-entropy clips
REPORT_KEYS = ("loss", "accuracy", "f1", "precision", "recall", "images")  # the headline figures


def evaluate_images(loaded: LoadedModel, images: Images, *, tta: bool = False,
                    batch_size: int = PREDICT_BATCH) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, loss and the confusion matrix."""
    if len(images) == 0:
        raise DataError("no images to evaluate")
    images = images.with_classes(loaded.class_names)
    probs = image_probabilities(loaded, images, tta=tta, batch_size=batch_size)
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(images.labels, predicted, len(loaded.class_names))
    result = summarize(matrix, loaded.class_names)
    true_prob = probs[np.arange(len(probs)), images.labels]
    result["loss"] = float(-np.log(np.clip(true_prob, EPSILON, 1.0)).mean()) + 0.0  # no -0.0
    result["confusion_matrix"] = matrix.tolist()
    result["class_names"] = list(loaded.class_names)
    result["tta"] = tta
    return result


def evaluation_images(config: TrainConfig) -> tuple[Images, str]:
    """The images to evaluate on: a source's test split when it has one, else all of it."""
    data = load_data(config)
    if data.test is not None:
        return data.test, f"{data.source}, test split"
    return data.labelled, data.source


def evaluate(model: str | Path | LoadedModel, config: TrainConfig, *, out: str | Path | None = None,
             tta: bool = False, unsafe: bool = False) -> dict:
    """Evaluate `model` on the data `config` points at; write a report folder when `out` is given."""
    loaded = model if isinstance(model, LoadedModel) else open_model(model, unsafe=unsafe)
    config = model_data_config(config, loaded)
    images, source = evaluation_images(config)
    report = evaluate_images(loaded, images, tta=tta)
    report["source"] = source
    report["skipped_files"] = len(images.skipped)
    if out is not None:
        folder = RunFolder(out)
        folder.write_reports(report)
        folder.write_metrics({k: v for k, v in report.items() if k not in ("per_class", "confusion_matrix")})
    return report
