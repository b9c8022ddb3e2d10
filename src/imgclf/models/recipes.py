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
    make_optimizer: Callable[[float, int, int], Any]  # (peak step size, steps/epoch, epochs) -> keras optimizer
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


# The fast recipes' step sizes are per image of a mean loss (airbench94_muon's summed-loss step
# sizes); the BatchNorm offsets' step at the default batch is this x the batch size.
FAST_BATCH_SIZE = 1000  # images per step (airbench94_muon: 2000; 1000 is as accurate per epoch here)
FAST_BIAS_LR_PER_IMAGE = 0.053  # BatchNorm offsets and the whitening bias
_FAST_LR = FAST_BIAS_LR_PER_IMAGE * FAST_BATCH_SIZE

RECIPE_DEFAULTS: dict[str, RecipeDefaults] = {
    "seed": RecipeDefaults(50, 32, 1e-3, False,
                           "the original project's CNN: Adam, 50 epochs, augmentation layers in the model"),
    "fast": RecipeDefaults(8, FAST_BATCH_SIZE, _FAST_LR, True,
                           "airbench94_muon-style recipe, widths 64/256/256: whitening, BatchNorm, GELU, "
                           "label smoothing, Muon + Nesterov SGD"),
    # 9 epochs fit a 10-minute budget on 2 cores, loading and evaluation included
    "fast-small": RecipeDefaults(9, FAST_BATCH_SIZE, _FAST_LR, True,
                                 "the fast recipe at widths 64/128/128: about half the compute per image"),
    "fast-tiny": RecipeDefaults(3, FAST_BATCH_SIZE, _FAST_LR, True,
                                "the fast recipe at widths 16/64/128: a usable model in about a minute"),
}


def recipe_defaults(name: str) -> RecipeDefaults:
    try:
        return RECIPE_DEFAULTS[name]
    except KeyError:
        raise ImgclfError(f"unknown model '{name}' (available: {', '.join(sorted(RECIPE_DEFAULTS))})") from None
