"""Saving and loading models that carry their own class names and input size.

A saved `.keras` file is a zip archive; imgclf adds one member, `imgclf.json`
(class names, input size, model name), next to Keras' own. Keras ignores it, so
the same file loads with plain `keras.models.load_model` in a session that never
imports imgclf; `load_model` here reads it back. Files are written atomically.
"""

from __future__ import annotations

import json
import weakref
import zipfile
from pathlib import Path

import keras
import numpy as np

from ..errors import ModelFileError
from ..models.layers import Temperature  # importing the module registers the custom layers of saved models
from ..run.atomic import atomic_path
from .loaded import LoadedModel, _first_line

METADATA_MEMBER = "imgclf.json"
FORMAT_VERSION = 1
TEMPERATURE_LAYER = "temperature"  # the name of a calibrated model's last layer
METADATA_OWN = ("format_version", "class_names", "image_size", "input")  # what save_model writes itself


def save_model(model: keras.Model, path: str | Path, class_names: list[str], *,
               weights: list[np.ndarray] | None = None, **extra) -> None:
    """Save `model` (with `weights` instead of its own, if given) to `path` (.keras) with
    its class names and input size, atomically.

    What is saved is an uncompiled copy: no optimizer state and no training-only objects
    (imgclf's metrics, losses), so the file is small and loads with plain Keras.
    """
    height, width = model.input_shape[1:3]
    metadata = {
        "format_version": FORMAT_VERSION,
        "class_names": list(class_names),
        "image_size": [int(height), int(width)],
        "input": "RGB uint8 pixels 0-255; the model rescales them itself",
        **extra,
    }
    inference = model
    if getattr(model, "compiled", False) or weights is not None:
        inference = _uncompiled_twin(model)
        inference.set_weights(model.get_weights() if weights is None else weights)
    with atomic_path(path, suffix=".keras") as tmp:
        inference.save(tmp)
        with zipfile.ZipFile(tmp, "a") as archive:
            archive.writestr(METADATA_MEMBER, json.dumps(metadata, ensure_ascii=False, indent=2))


_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # model -> (its configuration, twin)


def _uncompiled_twin(model: keras.Model) -> keras.Model:
    """A model of `model`'s architecture, uncompiled (from_config; clone_model would compile
    it), built once per model and configuration and kept while the model lives: a training
    saves its best and last models every epoch, and building the copy again each time (new
    variables, initialised and then overwritten) cost more than writing the file. A changed
    configuration (a fine-tuning phase unfreezing layers) builds a new one."""
    config = model.get_config()
    key = json.dumps(config, sort_keys=True, default=repr)
    kept = _TWINS.get(model)
    if kept is None or kept[0] != key:
        kept = _TWINS[model] = key, type(model).from_config(config)
    return kept[1]


def with_temperature(model: keras.Model, factor: float) -> keras.Model:
    """A copy of `model` whose probabilities are softmax(log(p) / factor): its logits divided by
    `factor` (calibration's temperature, `evaluation.calibrate`). The class ranking is the
    same. Folded into the layers every imgclf recipe ends with, so the file still loads with
    plain Keras where it did before:

    - a softmax Dense layer (seed, the backbones): its kernel and bias divided by `factor`;
    - Rescaling then a softmax Activation (the fast family): the rescaling's scale, computed
      in float32 (a bfloat16 product could tie two classes that differ);
    - an earlier temperature layer: its temperature multiplied;
    - anything else: a new last layer, `layers.Temperature`.
    """
    config = model.get_config()
    entries = config["layers"]
    last, before = entries[-1], entries[-2] if len(entries) > 1 else None
    scale_dense = last["class_name"] == "Dense" and last["config"].get("activation") == "softmax"
    if last["class_name"] == "Temperature" and last.get("module", "").startswith("imgclf"):
        last["config"]["temperature"] *= factor
    elif last["class_name"] == "Activation" and last["config"].get("activation") == "softmax" \
            and before is not None and before["class_name"] == "Rescaling" \
            and isinstance(before["config"].get("scale"), (int, float)) and before["config"].get("offset", 0) == 0:
        before["config"]["scale"] /= factor
        before["config"]["dtype"] = "float32"
    elif not scale_dense:
        layer = Temperature(factor, name=TEMPERATURE_LAYER)
        if isinstance(model, keras.Sequential):
            return keras.Sequential([keras.Input(shape=model.input_shape[1:]), *model.layers, layer], name=model.name)
        return keras.Model(model.inputs, layer(model.outputs[0]), name=model.name)
    copy = type(model).from_config(config)
    copy.set_weights(model.get_weights())
    if scale_dense:
        head = copy.layers[-1]
        head.set_weights([weight / factor for weight in head.get_weights()])
    return copy


def read_metadata(path: str | Path) -> dict:
    try:
        with zipfile.ZipFile(path) as archive:
            if METADATA_MEMBER not in archive.namelist():
                return {}
            return json.loads(archive.read(METADATA_MEMBER))
    except (zipfile.BadZipFile, OSError, ValueError):
        return {}


def load_model(path: str | Path, *, unsafe: bool = False) -> LoadedModel:
    """Load a saved model with Keras' safe mode (no arbitrary code) unless `unsafe`."""
    path = Path(path)
    if not path.exists():
        raise ModelFileError(f"model file not found: {path}")
    if path.is_dir():
        raise ModelFileError(f"model path is a folder, not a .keras file: {path}")
    if not path.is_file():  # a FIFO or a device would block the read, or never end it
        raise ModelFileError(f"{path} is not a regular file (a named pipe, socket or device): not a model")
    if not zipfile.is_zipfile(path):
        raise ModelFileError(f"not a Keras model file (.keras zip archive): {path}")
    try:
        model = keras.models.load_model(path, compile=False, safe_mode=not unsafe)
    except ValueError as exc:
        if "safe_mode" in str(exc) or "Lambda" in str(exc):
            raise ModelFileError(
                f"refusing to load {path}: it contains code that would run on loading "
                "(e.g. a Lambda layer); pass --unsafe only if you trust its source"
            ) from None
        raise ModelFileError(f"cannot load model {path}: {_first_line(exc)}") from None
    except Exception as exc:  # Keras raises many types for a damaged archive
        raise ModelFileError(f"cannot load model {path}: {type(exc).__name__}: {_first_line(exc)}") from None
    metadata = read_metadata(path)
    height, width = model.input_shape[1:3]
    num_classes = int(model.output_shape[-1])
    class_names = metadata.get("class_names") or [str(i) for i in range(num_classes)]
    if len(class_names) != num_classes:
        raise ModelFileError(f"{path}: metadata names {len(class_names)} classes, the model outputs {num_classes}")
    return LoadedModel(model, class_names, (int(height), int(width)), metadata, path)
