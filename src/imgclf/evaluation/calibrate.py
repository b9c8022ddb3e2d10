"""Calibrated probabilities: temperature scaling (Guo et al. 2017, "On calibration of modern
neural networks").

One number T is fitted on held-out images by minimising the negative log-likelihood of
softmax(log(p) / T), p being the model's probabilities (the same as dividing the logits by T,
so models saved before calibration existed take it too). The class ranking never changes, so
accuracy does not either. T goes into the model as its last layer (`models.layers.Temperature`),
so the `.keras` file, every export and the service return the calibrated probabilities; the
model's metadata keeps T and the figures before and after (`calibration`).

Training calibrates its kept model on the validation split at the end (`--calibrate none`
does not); `imgclf calibrate` does it for any `.keras` model and writes a new file.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..config import TrainConfig, model_data_config
from ..data.labelled import Images
from ..errors import DataError, ModelFileError
from ..inference.loaded import LoadedModel
from ..inference.predict import combine_views, image_views
from ..models.layers import PROBABILITY_FLOOR  # as the Temperature layer computes
from ..run.folder import split_images
from .analysis import calibration

TEMPERATURES = (0.05, 20.0)  # the range T is searched in
EPSILON = 1e-7  # probability floor of the log-loss, as Keras' cross-entropy clips
CALIBRATED_SUFFIX = ".calibrated.keras"  # imgclf calibrate's output beside its input
FEW_IMAGES = 200  # fitted on fewer, the temperature comes with a warning


def scale(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / temperature), row by row: what the Temperature layer computes."""
    log_p = np.log(np.maximum(np.asarray(probs, np.float64), PROBABILITY_FLOOR)) / temperature
    log_p -= log_p.max(axis=1, keepdims=True)
    out = np.exp(log_p)
    return out / out.sum(axis=1, keepdims=True)


def nll(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes (the cross-entropy loss)."""
    true = probs[np.arange(len(probs)), np.asarray(labels)]
    return float(-np.log(np.clip(true, EPSILON, 1.0)).mean()) + 0.0  # no -0.0


def figures(labels: np.ndarray, probs: np.ndarray) -> dict:
    """ECE, NLL, mean confidence and accuracy of these probabilities."""
    calib = calibration(labels, probs)
    return {"ece": calib["ece"], "nll": nll(labels, probs), "mean_confidence": calib["mean_confidence"],
            "accuracy": calib["accuracy"]}


def fit_temperature(views: list[tuple[float, np.ndarray]], labels: np.ndarray) -> float:
    """The T that minimises the NLL of the weighted average of softmax(log(p) / T) over the
    views (one view without test-time augmentation), searched over TEMPERATURES in log T."""
    from scipy.optimize import minimize_scalar

    def objective(log_t: float) -> float:
        t = math.exp(log_t)
        return nll(labels, sum(weight * scale(probs, t) for weight, probs in views))

    low, high = (math.log(t) for t in TEMPERATURES)
    result = minimize_scalar(objective, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


@dataclass
class Calibration:
    temperature: float  # the model's whole temperature (an earlier one times the fitted factor)
    fitted: float  # the factor fitted now, on these images
    images: int
    source: str  # the images it was fitted on
    tta: bool  # fitted to the test-time-augmented probabilities
    before: dict  # figures(...) before and after
    after: dict
    # (weight, probabilities) of each view of the images, calibrated: what the calibrated model
    # predicts for them (training's final evaluation reuses them); not saved
    views: list = field(default_factory=list, repr=False, compare=False)

    def to_dict(self) -> dict:
        return {key: value for key, value in asdict(self).items() if key != "views"}

    def line(self) -> str:
        text = (f"calibrated: temperature {self.temperature:.3f}, fitted on {self.images:,} images "
                f"({self.source}): ECE {self.before['ece']:.4f} -> {self.after['ece']:.4f}, NLL "
                f"{self.before['nll']:.4f} -> {self.after['nll']:.4f}")
        if self.images < FEW_IMAGES:
            text += (f" (only {self.images} images: the temperature is uncertain, and with no error among them "
                     "it makes every answer near-certain)")
        return text


def fit(loaded: LoadedModel, images: Images, *, tta: bool = False, source: str = "") -> Calibration:
    """Fit the temperature of `loaded` on labelled `images` (their classes must be the model's)."""
    if len(images) == 0:
        raise DataError("no images to calibrate on")
    images = images.with_classes(loaded.class_names)
    views = image_views(loaded, images, tta=tta)
    fitted = fit_temperature(views, images.labels)
    calibrated = [(weight, scale(probs, fitted)) for weight, probs in views]
    return Calibration(loaded.temperature * fitted, fitted, len(images), source, tta,
                       figures(images.labels, combine_views(views)),
                       figures(images.labels, combine_views(calibrated)), calibrated)


def save_calibrated(loaded: LoadedModel, calib: Calibration, out: str | Path) -> LoadedModel:
    """Write `loaded`'s model with the temperature `calib.fitted` folded in to `out` (.keras),
    atomically, its metadata kept and `calibration` added; return that model as saved."""
    from ..inference.modelio import METADATA_OWN, save_model, with_temperature

    if loaded.model is None:
        raise ModelFileError(f"{loaded.path}: calibrate takes a .keras model (calibrate it, then export it)")
    extra = {key: value for key, value in loaded.metadata.items() if key not in METADATA_OWN}
    model = with_temperature(loaded.model, calib.fitted)
    metadata = {**extra, "calibration": calib.to_dict()}
    save_model(model, out, loaded.class_names, **metadata)
    return LoadedModel(model, loaded.class_names, loaded.image_size, {**loaded.metadata, **metadata}, Path(out))


def default_output(model_path: Path) -> Path:
    name = model_path.name.removesuffix(".keras").removesuffix(".calibrated")
    return model_path.with_name(name + CALIBRATED_SUFFIX)


def calibrate(model: str | Path, config: TrainConfig | None = None, *, out: str | Path | None = None,
              tta: bool = False, overwrite: bool = False, unsafe: bool = False) -> tuple[Path, Calibration]:
    """Calibrate the `.keras` model at `model` on the labelled data `config` points at (its
    test split, if the source has one, else all of it), or without `config`, on its run's
    validation split. Writes a new file (default: beside it, `*.calibrated.keras`), never the
    input; returns (its path, the calibration)."""
    from ..data.sources import evaluation_images
    from ..inference.modelio import load_model

    path = Path(model)
    if path.is_dir() or path.suffix.lower() != ".keras":
        raise ModelFileError(f"calibrate takes a .keras model (got {path}); calibrate it, then export it")
    out = Path(out) if out is not None else default_output(path)
    if out.suffix.lower() != ".keras":
        raise DataError(f"--out must end in .keras (got {out})")
    if out.exists() and path.exists() and out.resolve() == path.resolve():
        raise DataError(f"--out is the input model {path}: calibrate writes a new file, give another name")
    if out.exists() and not overwrite:
        raise DataError(f"{out} exists; give another --out, or --overwrite to replace it")
    loaded = load_model(path, unsafe=unsafe)
    if config is None:
        images = split_images(path.parent, loaded, "val", hint=f" ({path} is calibrated on its run's validation "
                                                              "split when no --data-dir or --labels is given)")
        source = "the run's validation split"
    else:
        images, source = evaluation_images(model_data_config(config, loaded))
    calib = fit(loaded, images, tta=tta, source=source)
    save_calibrated(loaded, calib, out)
    return out, calib
