"""Prediction with a saved model: on files, folders, globs or arrays, optionally with
test-time augmentation; and the predictions file (`--output`).

Images held in memory are batched with NumPy, so predicting with an `.onnx` or `.tflite`
model needs no TensorFlow; only images streamed from disk (`image_probabilities` on a large
evaluation set) go through tf.data."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

from ..config import min_confidence_value
from ..data.decode import decode_paths, walk_files
from ..errors import DataError
from ..run.atomic import write_csv, write_json
from .loaded import LoadedModel

if TYPE_CHECKING:
    from ..data.labelled import Images

PREDICT_BATCH = 256  # images per forward pass when predicting


UNCERTAIN = "uncertain"  # the answer below --min-confidence


@dataclass
class Prediction:
    name: str  # file path (or array index)
    top: list[tuple[str, float]]  # (class name, probability), most likely first
    # below the --min-confidence threshold (None: no threshold was given)
    uncertain: bool | None = None

    @property
    def label(self) -> str:
        """The most likely class."""
        return self.top[0][0]

    @property
    def confidence(self) -> float:
        return self.top[0][1]

    @property
    def answer(self) -> str:
        """The most likely class, or "uncertain" below the threshold."""
        return UNCERTAIN if self.uncertain else self.label


def expand_paths(inputs: list[str]) -> list[str]:
    """Files as given, folders recursively, and glob patterns; in a stable order."""
    found: list[str] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found.extend(walk_files(path))
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
    if pixels.dtype != np.uint8:
        pixels = pixels.astype(np.uint8)
    return _probabilities(loaded, lambda: _array_batches(pixels, batch_size), tta)


def image_probabilities(loaded: LoadedModel, images: Images, *, tta: bool = False,
                        batch_size: int = PREDICT_BATCH) -> np.ndarray:
    """(N, classes) float64 probabilities of `images` (in memory or streamed from disk)."""
    return combine_views(image_views(loaded, images, tta=tta, batch_size=batch_size))


def image_views(loaded: LoadedModel, images: Images, *, tta: bool = False,
                batch_size: int = PREDICT_BATCH) -> list[tuple[float, np.ndarray]]:
    """(weight, (N, classes) probabilities) of each view of `images` that the prediction
    averages: the images themselves, or with `tta` each augmented view (`evaluation.calibrate`
    fits a temperature to what the views average to)."""
    if images.in_memory:
        return _views(loaded, lambda: _array_batches(images.array, batch_size), tta)
    from ..data.pipeline import make_dataset

    dataset = make_dataset(images, batch_size)
    return _views(loaded, lambda: (x.numpy() for x, _ in dataset), tta)


def combine_views(views: list[tuple[float, np.ndarray]]) -> np.ndarray:
    return sum(weight * probs for weight, probs in views)


def _array_batches(pixels: np.ndarray, batch_size: int) -> Iterable[np.ndarray]:
    """float32 0-255 batches of uint8 images, in order."""
    for start in range(0, len(pixels), batch_size):
        yield pixels[start:start + batch_size].astype(np.float32)


def _probabilities(loaded: LoadedModel, batches: Callable[[], Iterable[np.ndarray]], tta: bool) -> np.ndarray:
    """Probabilities over the float32 batches that each call of `batches` yields afresh."""
    return combine_views(_views(loaded, batches, tta))


TTA_SHIFTS = (0, 2)  # offsets into the 1-pixel reflect-padded image: one pixel up-left, one down-right
TTA_VIEWS = 2 * (1 + len(TTA_SHIFTS))  # the image and its mirror, unshifted and at each shift


def _views(loaded: LoadedModel, batches: Callable[[], Iterable[np.ndarray]],
           tta: bool) -> list[tuple[float, np.ndarray]]:
    if not tta:
        return [(1.0, _predict_batches(loaded, batches()))]
    # Test-time augmentation: half the weight on the image and its mirror, half on the
    # mirrored pair shifted one pixel up-left and one pixel down-right (reflect padding).
    views = [(0.25, lambda x: x), (0.25, _mirror)]
    for dy in TTA_SHIFTS:
        shift = _shifted(dy)
        views += [(0.125, shift), (0.125, lambda x, shift=shift: _mirror(shift(x)))]
    return [(weight, _predict_batches(loaded, map(view, batches()))) for weight, view in views]


def _predict_batches(loaded: LoadedModel, batches: Iterable[np.ndarray]) -> np.ndarray:
    # contiguous: a mirrored view has negative strides, which not every runtime takes
    outputs = [loaded.predict(np.ascontiguousarray(batch)) for batch in batches]
    if not outputs:
        return np.zeros((0, len(loaded.class_names)))
    return np.concatenate(outputs).astype(np.float64)


def _mirror(x: np.ndarray) -> np.ndarray:
    return x[:, :, ::-1, :]


def _shifted(offset: int) -> Callable[[np.ndarray], np.ndarray]:
    def shift(x: np.ndarray) -> np.ndarray:
        height, width = x.shape[1:3]
        padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")  # as tf.pad's REFLECT
        return padded[:, offset:offset + height, offset:offset + width, :]
    return shift


def predict_files(loaded: LoadedModel, inputs: list[str], *, top_k: int = 1, tta: bool = False,
                  verbose: int = 0, min_confidence: float | None = None,
                  ) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Predict every image among `inputs` (files, folders, globs). Returns (predictions, skipped).
    With `min_confidence`, images whose top probability is below it are answered "uncertain"."""
    check_min_confidence(min_confidence)
    paths = expand_paths(inputs)
    decoded = decode_paths(paths, loaded.image_size, verbose=verbose, resize=loaded.resize)
    probs = predict_probabilities(loaded, decoded.pixels, tta=tta)
    names = [paths[i] for i in decoded.kept]
    return top_predictions(probs, loaded.class_names, names, top_k, min_confidence), decoded.skipped


def check_min_confidence(value: float | None) -> None:
    if value is not None:
        min_confidence_value(value)


def top_predictions(probs: np.ndarray, class_names: list[str], names: list[str], top_k: int = 1,
                    min_confidence: float | None = None) -> list[Prediction]:
    k = max(1, min(top_k, len(class_names)))
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    sure = answered(probs, min_confidence)
    return [
        Prediction(name, [(class_names[j], float(row[j])) for j in idx],
                   None if min_confidence is None else not bool(ok))
        for name, row, idx, ok in zip(names, probs, order, sure)
    ]


def answered(probs: np.ndarray, min_confidence: float | None) -> np.ndarray:
    """Which images get an answer at `min_confidence` (top probability at least it); the
    rest are "uncertain". None: all of them."""
    if min_confidence is None:
        return np.ones(len(probs), bool)
    return np.asarray(probs).max(axis=1) >= min_confidence


def write_predictions(path: str | Path, predictions: list[Prediction]) -> None:
    """A .json list, or a .csv table with the top-k classes as columns. With a threshold, the
    class is "uncertain" below it and an `uncertain` flag (column) says so; the top classes are
    still listed."""
    flagged = predictions[0].uncertain is not None
    if str(path).lower().endswith(".json"):
        write_json(path, [{"file": p.name, "class": p.answer, "confidence": p.confidence,
                           **({"uncertain": p.uncertain} if flagged else {}),
                           "top": [{"class": c, "probability": s} for c, s in p.top]} for p in predictions])
        return
    k = len(predictions[0].top)
    header = ["file", "class", "confidence", *(["uncertain", "class_1"] if flagged else [])]
    header += [f"{kind}_{i}" for i in range(2, k + 1) for kind in ("class", "confidence")]
    rows = [[p.name, p.answer, f"{p.confidence:.6f}", *([str(p.uncertain).lower(), p.label] if flagged else [])]
            + [v for c, s in p.top[1:] for v in (c, f"{s:.6f}")] for p in predictions]
    write_csv(path, header, rows)
