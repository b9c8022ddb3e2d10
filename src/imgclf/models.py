"""Model registry: each name maps to a `Recipe`, an architecture plus how to train it.

`create_model(name, ...)` builds any registered architecture; `get_recipe(name)` also
gives its optimizer, loss, batch augmentation and defaults (epochs, batch size, learning
rate), so one `--model` flag selects a whole training recipe.

Every model takes raw 0-255 RGB pixels: scaling to [0, 1] is its first layer, so a
saved model can be used on raw images and can never scale twice. Outputs are float32
softmax probabilities, whatever the compute precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import keras
import numpy as np
from keras import layers

from .errors import ImgclfError


@dataclass(frozen=True)
class Recipe:
    build: Callable[..., keras.Model]  # (input_shape, num_classes, train_pixels=None) -> model
    epochs: int  # default number of epochs
    batch_size: int  # default images per step
    learning_rate: float  # default peak learning rate (at the default batch size)
    make_optimizer: Callable[[float, int, int], keras.optimizers.Optimizer]  # (lr, steps/epoch, epochs)
    loss: Any = "sparse_categorical_crossentropy"  # Keras loss (labels are class indices)
    augment: Callable | None = None  # batch augmentation in tf.data: (uint8 images, seed[2], index, epoch) -> images; stateless
    make_callbacks: Callable[..., list] | None = None  # (steps/epoch, epochs, pixels) -> training-only callbacks
    needs_data: bool = False  # build() uses training pixels (data-dependent initialisation)
    scale_lr_with_batch: bool = False  # default learning rate proportional to the batch size
    steps_per_execution: int = 1  # at most this many training steps per call into the compiled graph
    description: str = ""


RECIPES: dict[str, Recipe] = {}
MODELS = RECIPES  # the registry, by model name


def register(name: str, recipe: Recipe) -> Recipe:
    RECIPES[name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise ImgclfError(f"unknown model '{name}' (available: {', '.join(sorted(RECIPES))})") from None


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                 train_pixels: np.ndarray | None = None) -> keras.Model:
    """Build the registered model `name` for images of `input_shape` and `num_classes` classes.

    `train_pixels` (uint8 training images) feeds data-dependent initialisation where a
    model has it; without it such a model starts from a generic initialisation.
    """
    recipe = get_recipe(name)
    if recipe.needs_data:
        return recipe.build(input_shape, num_classes, train_pixels)
    return recipe.build(input_shape, num_classes)


# ----------------------------------------------------------------------------- seed

# Augmentation strengths of the reference recipe.
FLIP = "horizontal"  # mirror left-right only: upside-down objects are not CIFAR-like
ROTATION = 0.1  # fraction of a full turn (0.1 = up to +-36 degrees)
ZOOM = 0.1  # fraction of the image side


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
            layers.Dense(num_classes, activation="softmax", dtype="float32"),
        ],
        name="seed",
    )


register("seed", Recipe(
    build=seed_cnn,
    epochs=50,
    batch_size=32,
    learning_rate=1e-3,
    make_optimizer=lambda lr, steps, epochs: keras.optimizers.Adam(lr),
    # Batches of 32 take ~14 ms, and Keras adds Python overhead per call. Up to 25 steps
    # per graph call: CIFAR-10 epochs 19.2 -> 17.1 s (median of 50), the same accuracies.
    steps_per_execution=25,
    description="the original project's CNN: Adam, 50 epochs, augmentation layers in the model",
))

from . import fast  # noqa: E402,F401  (registers "fast")
