"""What a recipe is: an architecture plus how to train it. Its defaults (epochs, batch size,
step size) live in `defaults.py`, so that they can be read without Keras."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Recipe:
    build: Callable[..., Any]  # (input_shape, num_classes[, train_pixels]) -> keras.Model
    make_optimizer: Callable[[float, int, int], Any]  # (peak step size, steps/epoch, epochs) -> keras optimizer
    loss: Any = "sparse_categorical_crossentropy"  # Keras loss (labels are class indices)
    augment: Callable | None = None  # batch augmentation in tf.data: (uint8 images, seed[2], index, epoch) -> images; stateless
    make_callbacks: Callable[..., list] | None = None  # (steps/epoch, epochs, pixels) -> training-only callbacks
    needs_data: bool = False  # build() takes training pixels (data-dependent initialisation)
    steps_per_execution: int = 1  # at most this many training steps per call into the compiled graph
