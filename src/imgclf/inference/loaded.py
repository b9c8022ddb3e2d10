"""A model ready to predict, whatever runs it: Keras, a SavedModel, ONNX Runtime or LiteRT.

Nothing here imports TensorFlow or Keras when the module loads, so predicting with or
serving an `.onnx` or `.tflite` file (`runtimes.open_model`) never loads them; a Keras model
brings TensorFlow in with its first prediction (`keras_function`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import DEFAULT_RESIZE


@dataclass
class LoadedModel:
    model: Any  # the keras.Model (`modelio.load_model`); None for an exported artifact (`runtimes.open_model`)
    class_names: list[str]
    image_size: tuple[int, int]  # (height, width) in pixels
    metadata: dict
    path: Path | None = None
    # (N, H, W, 3) 0-255 pixels -> (N, classes) probabilities; a compiled Keras function by default
    runtime: Callable[[np.ndarray], np.ndarray] | None = None
    format: str = "keras"  # or savedmodel, onnx, litert (`runtimes.detect_format`)

    @property
    def resize(self) -> str:
        """How images of another shape are resized for this model (`data.decode.RESIZE_MODES`)."""
        return self.metadata.get("resize", DEFAULT_RESIZE)

    @property
    def temperature(self) -> float:
        """The temperature inside the model (`evaluation.calibrate`); 1.0 when not calibrated."""
        calibration = self.metadata.get("calibration")
        return float(calibration.get("temperature", 1.0)) if isinstance(calibration, dict) else 1.0

    def predict(self, pixels: np.ndarray) -> np.ndarray:
        """(N, classes) float32 probabilities of raw 0-255 RGB pixels (N, H, W, 3)."""
        if self.runtime is None:
            self.runtime = keras_function(self.model)
        return self.runtime(pixels)


def keras_function(model) -> Callable[[np.ndarray], np.ndarray]:
    """The model's inference pass as one traced TensorFlow function (no `model.predict`
    machinery per call: ~55 ms of it on small batches)."""
    import tensorflow as tf

    height, width, channels = model.input_shape[1:]
    signature = [tf.TensorSpec([None, height, width, channels], tf.float32)]
    function = tf.function(lambda x: model(x, training=False), input_signature=signature)

    def run(pixels: np.ndarray) -> np.ndarray:
        return np.asarray(function(np.asarray(pixels, np.float32)), np.float32)
    return run


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
