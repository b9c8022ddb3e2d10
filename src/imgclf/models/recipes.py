"""What a recipe is (an architecture plus how to train it), and every recipe's defaults in
one table. Nothing here imports Keras: the CLI's help, `TrainConfig.resolved` and the
registry (`registry.py`) all read the table, so `imgclf --help` stays instant and no copy
of it can drift.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from ..errors import ImgclfError


@dataclass(frozen=True)
class Recipe:
    build: Callable[..., Any]  # (input_shape, num_classes[, train_pixels]) -> keras.Model
    # (peak step size, steps/epoch, epochs, backbone_lr=1.0) -> keras optimizer; backbone_lr scales
    # the step sizes of everything but the classifier where the optimizer can (fast), else all
    make_optimizer: Callable[..., Any]
    loss: Any = "sparse_categorical_crossentropy"  # Keras loss (labels are class indices)
    # batch augmentation in tf.data, stateless: (uint8 images, seed[2], index, epoch) -> images
    augment: Callable | None = None
    make_callbacks: Callable[..., list] | None = None  # (steps/epoch, epochs, pixels) -> training-only callbacks
    needs_data: bool = False  # build() takes training pixels (data-dependent initialisation)
    steps_per_execution: int = 1  # at most this many training steps per call into the compiled graph
    # layers that keep float32 in int8 exports (`imgclf export --format litert-int8`), by name
    float_layers: tuple[str, ...] = ()


@dataclass(frozen=True)
class RecipeDefaults:
    epochs: int  # full passes over the training split
    batch_size: int  # images per optimisation step
    learning_rate: float  # peak step size at `batch_size`
    scale_lr_with_batch: bool  # another batch size scales the default step size in proportion
    description: str  # one line for the CLI and the run's log
    # Smaller training sets get smaller batches (`fitted_batch_size`), step sizes in proportion.
    fit_batch_to_data: bool = False
    # What the recipe was tuned on: (smallest, largest) training-set size and image side. A run
    # far outside them (FAR_OUTSIDE x) gets one warning.
    tuned_train_images: tuple[int, int] = (100, 1_000_000)
    tuned_image_sizes: tuple[int, int] = (16, 128)


MIN_STEPS_PER_EPOCH = 20  # a fitted batch leaves at least this many steps per epoch...
MIN_BATCH = 32  # ...unless that would make batches smaller than this
FAR_OUTSIDE = 2.0  # a factor beyond the tuned range that earns a warning


def fitted_batch_size(defaults: RecipeDefaults, train_images: int) -> int:
    """The recipe's batch size for a training set of `train_images`: its own when the data is
    large enough, else small enough for MIN_STEPS_PER_EPOCH steps an epoch (never below
    MIN_BATCH), and never more than the training set itself."""
    if not defaults.fit_batch_to_data:
        return defaults.batch_size
    fitted = max(MIN_BATCH, train_images // MIN_STEPS_PER_EPOCH)
    return max(1, min(defaults.batch_size, fitted, train_images))


def outside_tuning(defaults: RecipeDefaults, train_images: int, image_size: int) -> list[str]:
    """What about a run lies far outside what the recipe was tuned for (empty: nothing)."""
    notes = []
    low, high = defaults.tuned_train_images
    if train_images * FAR_OUTSIDE < low or train_images > high * FAR_OUTSIDE:
        notes.append(f"{train_images:,} training images (tuned on {low:,}-{high:,})")
    low, high = defaults.tuned_image_sizes
    if image_size * FAR_OUTSIDE < low or image_size > high * FAR_OUTSIDE:
        notes.append(f"{image_size}-pixel images (tuned on {low}-{high})")
    return notes


# The fast recipes' step sizes are per image of a mean loss (airbench94_muon's summed-loss step
# sizes); the BatchNorm offsets' step at the default batch is this x the batch size.
FAST_BATCH_SIZE = 1000  # images per step (airbench94_muon: 2000; 1000 is as accurate per epoch here)
FAST_BIAS_LR_PER_IMAGE = 0.053  # BatchNorm offsets and the whitening bias
_FAST_LR = FAST_BIAS_LR_PER_IMAGE * FAST_BATCH_SIZE

# The fast recipes were tuned on CIFAR-10: 32-pixel images, 10,000-50,000 training images.
_FAST_FIT = dict(fit_batch_to_data=True, tuned_train_images=(10_000, 50_000), tuned_image_sizes=(32, 32))

RECIPE_DEFAULTS: dict[str, RecipeDefaults] = {
    "seed": RecipeDefaults(50, 32, 1e-3, False,
                           "the original project's CNN: Adam, 50 epochs, augmentation layers in the model"),
    "fast": RecipeDefaults(8, FAST_BATCH_SIZE, _FAST_LR, True,
                           "airbench94_muon-style recipe, widths 64/256/256: whitening, BatchNorm, GELU, "
                           "label smoothing, Muon + Nesterov SGD", **_FAST_FIT),
    # 9 epochs fit a 10-minute budget on 2 cores, loading and evaluation included
    "fast-small": RecipeDefaults(9, FAST_BATCH_SIZE, _FAST_LR, True,
                                 "the fast recipe at widths 64/128/128: about half the compute per image", **_FAST_FIT),
    "fast-tiny": RecipeDefaults(3, FAST_BATCH_SIZE, _FAST_LR, True,
                                "the fast recipe at widths 16/64/128: a usable model in about a minute", **_FAST_FIT),
}


def recipe_defaults(name: str) -> RecipeDefaults:
    try:
        return RECIPE_DEFAULTS[name]
    except KeyError:
        raise ImgclfError(f"unknown model '{name}' (available: {', '.join(sorted(RECIPE_DEFAULTS))})") from None
