"""The model registry: a recipe's name gives its `Recipe` (architecture + how to train it),
built by the module its row in `recipes.RECIPE_DEFAULTS` names, so one `--model` flag selects
a whole recipe and a recipe is registered in one place.

Every model takes raw 0-255 RGB pixels (scaling to [0, 1] is its first layer, so a saved
model can be used on raw images and can never scale twice) and outputs float32 softmax
probabilities, whatever the compute precision.
"""

from __future__ import annotations

import importlib

import numpy as np

from .recipes import Recipe, recipe_defaults


def get_recipe(name: str) -> Recipe:
    """The recipe `name`: `recipe(name)` of the module its row names (imported now, with Keras)."""
    module = importlib.import_module(recipe_defaults(name).module, __package__)  # one error for an unknown name
    return module.recipe(name)


def create_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                 train_pixels: np.ndarray | None = None, weights: str | None = None, own_augment: bool = True):
    """Build the registered model `name` for images of `input_shape` and `num_classes` classes.

    `train_pixels` (uint8 training images) feeds data-dependent initialisation where a
    model has it; without it such a model starts from a generic initialisation. `weights`:
    the pretrained backbones' starting point ("imagenet", "none" or a weights file).
    `own_augment=False`: without the recipe's augmentation layers, where it has some.
    """
    recipe = get_recipe(name)
    if recipe.model_augment and not own_augment:
        return recipe.build(input_shape, num_classes, augment=False)
    if recipe_defaults(name).backbone:  # build() takes weights=; training runs in two phases
        return recipe.build(input_shape, num_classes, weights=weights)
    if recipe.needs_data:
        return recipe.build(input_shape, num_classes, train_pixels)
    return recipe.build(input_shape, num_classes)
