"""Prediction and evaluation with a saved model: on files, folders, globs or arrays."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .data import Images, decode_files, make_dataset, report_skipped
from .errors import DataError
from .metrics import confusion_matrix, summarize
from .modelio import LoadedModel, load_model

PREDICT_BATCH = 256  # images per forward pass when predicting
EPSILON = 1e-7  # probability floor in the log-loss, as Keras' cross-entropy clips


@dataclass
class Prediction:
    name: str  # file path (or array index)
    top: list[tuple[str, float]]  # (class name, probability), most likely first

    @property
    def label(self) -> str:
        return self.top[0][0]

    @property
    def confidence(self) -> float:
        return self.top[0][1]


def expand_paths(inputs: list[str]) -> list[str]:
    """Files as given, folders recursively, and glob patterns; in a stable order."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
        elif path.exists() or path.is_symlink():
            found.append(str(path))
        elif glob.has_magic(item):
            matches = sorted(glob.glob(item, recursive=True))
            if not matches:
                raise DataError(f"no files match {item}")
            found.extend(expand_paths(matches))
        else:
            raise DataError(f"no such file or folder: {item}")
    if not found:
        raise DataError("no files to predict (the folders given are empty)")
    return found


def predict_probabilities(loaded: LoadedModel, pixels: np.ndarray, *, tta: bool = False,
                          batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """Class probabilities for uint8 (or 0-255 float) images of shape (N, H, W, 3)."""
    pixels = np.asarray(pixels)
    if pixels.ndim == 3:
        pixels = pixels[None]
    if pixels.ndim != 4 or pixels.shape[-1] != 3:
        raise DataError(f"expected images of shape (N, H, W, 3), got {pixels.shape}")
    if tuple(pixels.shape[1:3]) != loaded.image_size:
        raise DataError(f"images are {pixels.shape[1:3]}, the model takes {loaded.image_size}")
    images = Images(labels=np.zeros(len(pixels), np.int32), class_names=loaded.class_names,
                    array=pixels.astype(np.uint8) if pixels.dtype != np.uint8 else pixels, size=loaded.image_size)
    return _probabilities(loaded, images, batch_size, tta)


def _probabilities(loaded: LoadedModel, images: Images, batch_size: int, tta: bool) -> np.ndarray:
    dataset = make_dataset(images, batch_size).map(lambda x, y: x)
    if not tta:
        return np.asarray(loaded.model.predict(dataset, verbose=0), np.float64)
    # Test-time augmentation: half the weight on the image and its mirror, half on the
    # mirrored pair shifted one pixel up-left and one pixel down-right (reflect padding).
    views = [(0.25, lambda x: x), (0.25, _mirror)]
    for dy in (0, 2):
        shift = _shifted(dy)
        views += [(0.125, shift), (0.125, lambda x, shift=shift: _mirror(shift(x)))]
    return sum(weight * np.asarray(loaded.model.predict(dataset.map(view), verbose=0), np.float64)
               for weight, view in views)


def _mirror(x):
    return x[:, :, ::-1, :]


def _shifted(offset: int):
    import tensorflow as tf

    def shift(x):
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        padded = tf.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="REFLECT")
        return padded[:, offset:offset + height, offset:offset + width, :]
    return shift


def predict_files(loaded: LoadedModel, inputs: list[str], *, top_k: int = 1, tta: bool = False,
                  verbose: int = 0) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predict every image among `inputs` (files, folders, globs). Returns (predictions, skipped)."""
    paths = expand_paths(inputs)
    pixels, ok, reasons = decode_files(paths, loaded.image_size, verbose=verbose)
    skipped = [(p, r) for p, good, r in zip(paths, ok, reasons) if not good]
    report_skipped(skipped)
    good = np.flatnonzero(ok)
    if len(good) == 0:
        raise DataError(f"none of the {len(paths)} file(s) is a usable image")
    probs = predict_probabilities(loaded, pixels[good], tta=tta)
    return top_predictions(probs, loaded.class_names, [paths[i] for i in good], top_k), skipped


def top_predictions(probs: np.ndarray, class_names: list[str], names: list[str], top_k: int = 1) -> list[Prediction]:
    k = max(1, min(top_k, len(class_names)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [
        Prediction(name, [(class_names[j], float(row[j])) for j in idx])
        for name, row, idx in zip(names, probs, order)
    ]


def evaluate_images(loaded: LoadedModel, images: Images, *, tta: bool = False,
                    batch_size: int = PREDICT_BATCH) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, loss and the confusion matrix."""
    if len(images) == 0:
        raise DataError("no images to evaluate")
    if list(images.class_names) != list(loaded.class_names):
        images = _align_classes(images, loaded.class_names)
    probs = _probabilities(loaded, images, batch_size, tta)
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(images.labels, predicted, len(loaded.class_names))
    result = summarize(matrix, loaded.class_names)
    true_prob = probs[np.arange(len(probs)), images.labels]
    result["loss"] = float(-np.log(np.clip(true_prob, EPSILON, 1.0)).mean())
    result["confusion_matrix"] = matrix.tolist()
    result["class_names"] = list(loaded.class_names)
    result["tta"] = tta
    return result


def _align_classes(images: Images, model_classes: list[str]) -> Images:
    """Re-index labels to the model's class order (e.g. a test folder with fewer classes)."""
    index = {name: i for i, name in enumerate(model_classes)}
    unknown = sorted(set(images.class_names[i] for i in np.unique(images.labels)) - set(index))
    if unknown:
        raise DataError(f"the model does not know class(es): {', '.join(unknown[:5])}")
    labels = np.array([index[images.class_names[i]] for i in images.labels], np.int32)
    return Images(labels, list(model_classes), images.array, images.paths, images.skipped, images.size)


__all__ = ["Prediction", "expand_paths", "predict_files", "predict_probabilities", "evaluate_images", "load_model"]
