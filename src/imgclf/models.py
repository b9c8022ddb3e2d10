"""Model registry: `create_model(name, ...)` builds any registered architecture.

Every model takes raw 0-255 RGB pixels: scaling to [0, 1] is its first layer,
so a saved model can be used on raw images and can never scale twice.
"""

from __future__ import annotations

from typing import Callable

import keras
from keras import layers

from .errors import ImgclfError

ModelBuilder = Callable[[tuple[int, int, int], int], keras.Model]
MODELS: dict[str, ModelBuilder] = {}


def register(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    def add(builder: ModelBuilder) -> ModelBuilder:
        MODELS[name] = builder
        return builder

    return add


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """Build the registered model `name` for images of `input_shape` and `num_classes` classes."""
    try:
        builder = MODELS[name]
    except KeyError:
        raise ImgclfError(f"unknown model '{name}' (available: {', '.join(sorted(MODELS))})") from None
    return builder(input_shape, num_classes)


# Augmentation strengths of the reference recipe.
FLIP = "horizontal"  # mirror left-right only: upside-down objects are not CIFAR-like
ROTATION = 0.1  # fraction of a full turn (0.1 = up to +-36 degrees)
ZOOM = 0.1  # fraction of the image side


@register("seed")
def seed_cnn(input_shape: tuple[int, int, int], num_classes: int) -> keras.Model:
    """The architecture of the original project: augmentation, three Conv2D + MaxPooling2D
    blocks, Dense layers with Dropout and a softmax output."""
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 255),
            layers.RandomFlip(FLIP),
            layers.RandomRotation(ROTATION),
            layers.RandomZoom(ZOOM),
            layers.Conv2D(32, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(64, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Conv2D(128, 3, padding="same", activation="relu"),
            layers.MaxPooling2D(),
            layers.Flatten(),
            layers.Dense(128, activation="relu"),
            layers.Dropout(0.5),
            layers.Dense(num_classes, activation="softmax"),
        ],
        name="seed",
    )
