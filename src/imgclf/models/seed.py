"""The seed recipe: the original project's CNN, trained as the original project did."""

from __future__ import annotations

import keras
from keras import layers

from .recipes import Recipe

FLIP = "horizontal"  # mirror left-right only: upside-down objects are not CIFAR-like
ROTATION = 0.1  # fraction of a full turn (0.1 = up to +-36 degrees)
ZOOM = 0.1  # fraction of the image side
# Batches of 32 take ~14 ms and Keras adds Python overhead per graph call: 25 steps per call
# make CIFAR-10 epochs 19.2 -> 17.1 s (median of 50) with the same updates.
STEPS_PER_CALL = 25


def seed_cnn(input_shape: tuple[int, int, int], num_classes: int, augment: bool = True) -> keras.Model:
    """The architecture of the original project: augmentation, three Conv2D + MaxPooling2D
    blocks, Dense layers with Dropout and a softmax output. Pixels arrive as 0-255; scaling
    is the first layer. `augment=False` (--augment without `recipe`) leaves the augmentation
    layers out."""
    own = [layers.RandomFlip(FLIP), layers.RandomRotation(ROTATION), layers.RandomZoom(ZOOM)] if augment else []
    return keras.Sequential(
        [
            keras.Input(shape=input_shape),
            layers.Rescaling(1.0 / 255),
            *own,
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


def recipe(name: str) -> Recipe:
    """The seed recipe (registered in `recipes.RECIPE_DEFAULTS`)."""
    return Recipe(
        build=seed_cnn,
        make_optimizer=lambda lr, steps, epochs, backbone_lr=1.0, lr_scale=1.0: keras.optimizers.Adam(lr * backbone_lr),
        steps_per_execution=STEPS_PER_CALL,
        explain_layer=last_conv,
        model_augment=True,
    )


def last_conv(layers: list) -> int:
    """Grad-CAM's layer: the last convolution (8x8 at 32 pixels, ReLU'd, before its pooling)."""
    return max(i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D))
