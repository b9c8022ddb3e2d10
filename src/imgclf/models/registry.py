"""The model registry: each name maps to a `Recipe` (architecture + how to train it) and to
its defaults in `recipes.RECIPE_DEFAULTS`, so one `--model` flag selects a whole recipe.

Every model takes raw 0-255 RGB pixels (scaling to [0, 1] is its first layer, so a saved
model can be used on raw images and can never scale twice) and outputs float32 softmax
probabilities, whatever the compute precision.
"""

from __future__ import annotations

import numpy as np

from . import backbones, fast, seed
from .recipes import RECIPE_DEFAULTS, Recipe, recipe_defaults

RECIPES: dict[str, Recipe] = {"seed": seed.RECIPE, **fast.RECIPES, **backbones.RECIPES}
if sorted(RECIPES) != sorted(RECIPE_DEFAULTS):
    raise RuntimeError("every recipe needs its row in recipes.RECIPE_DEFAULTS, and every row a recipe")


def get_recipe(name: str) -> Recipe:
    recipe_defaults(name)  # the one error message for an unknown name
    return RECIPES[name]


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                 train_pixels: np.ndarray | None = None, weights: str | None = None):
    """Build the registered model `name` for images of `input_shape` and `num_classes` classes.

    `train_pixels` (uint8 training images) feeds data-dependent initialisation where a
    model has it; without it such a model starts from a generic initialisation. `weights`:
    the pretrained backbones' starting point ("imagenet", "none" or a weights file).
    """
    recipe = get_recipe(name)
    if RECIPE_DEFAULTS[name].backbone:  # build() takes weights=; training runs in two phases
        return recipe.build(input_shape, num_classes, weights=weights)
    if recipe.needs_data:
        return recipe.build(input_shape, num_classes, train_pixels)
    return recipe.build(input_shape, num_classes)
