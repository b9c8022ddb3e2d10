"""Every recipe registered once: one row of `RECIPE_DEFAULTS` per recipe holds its defaults
and the module that builds it (imported on first use, by `registry.get_recipe`), so the
table, and everything read from it (the CLI's help, `check`, `resolve`), needs no Keras.
`check` and `resolve` are where a `TrainConfig` meets its recipe.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..config import AUTO, MIN_IMAGE_SIDE, TrainConfig, augment_value
from ..errors import ImgclfError


@dataclass(frozen=True)
class Recipe:
    build: Callable[..., Any]  # (input_shape, num_classes[, train_pixels]) -> keras.Model
    # (peak step size, steps/epoch, epochs, backbone_lr=1.0, lr_scale=1.0) -> keras optimizer;
    # backbone_lr scales the step sizes of everything but the classifier where the optimizer can
    # (fast), else all; lr_scale is the peak step size's ratio to the recipe's default, for the
    # step sizes not derived from it (fast's Muon), so --learning-rate scales every step size
    make_optimizer: Callable[..., Any]
    loss: Any = "sparse_categorical_crossentropy"  # Keras loss (labels are class indices)
    # batch augmentation in tf.data, stateless: (uint8 images, seed[2], index, epoch) -> images
    augment: Callable | None = None
    make_callbacks: Callable[..., list] | None = None  # (steps/epoch, epochs, pixels) -> training-only callbacks
    needs_data: bool = False  # build() takes training pixels (data-dependent initialisation)
    steps_per_execution: int = 1  # at most this many training steps per call into the compiled graph
    # layers that keep float32 in int8 exports (`imgclf export --format litert-int8`), by name
    float_layers: tuple[str, ...] = ()
    # (the model's layers, its input left out) -> the index of the layer whose output Grad-CAM
    # explains (`inference.explain`); it must work on the recipe's models and on --init copies
    explain_layer: Callable[[list], int] | None = None
    # its own augmentation is layers in the model: build() takes augment=False to leave them out
    model_augment: bool = False


@dataclass(frozen=True)
class RecipeDefaults:
    """One recipe's registration: its defaults, and where its `Recipe` is built."""

    epochs: int  # full passes over the training split
    batch_size: int  # images per optimisation step
    learning_rate: float  # peak step size at `batch_size`
    scale_lr_with_batch: bool  # another batch size scales the default step size in proportion
    description: str  # one line for the CLI and the run's log
    # the module (relative to imgclf.models) whose `recipe(name)` returns the `Recipe`; it may
    # read `options`, this row's settings of its architecture
    module: str
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    # Smaller training sets get smaller batches (`fitted_batch_size`), step sizes in proportion.
    fit_batch_to_data: bool = False
    label_smoothing: float = 0.0  # of the loss (--label-smoothing)
    ema: float = 0.0  # decay of the weights' moving average, validated and saved; 0: none (--ema)
    # What the recipe was tuned on: (smallest, largest) training-set size and image side. A run
    # far outside them (FAR_OUTSIDE x) gets one warning.
    tuned_train_images: tuple[int, int] = (100, 1_000_000)
    tuned_image_sizes: tuple[int, int] = (16, 128)
    # Pretrained backbones (keras.applications): the ImageNet weights file (no classifier) in
    # Keras' cache, the epochs of phase 1 (head only) and phase 2's step size as a fraction of
    # phase 1's.
    backbone: bool = False
    min_image_size: int = MIN_IMAGE_SIDE  # the smallest image side the architecture takes
    weights_file: str = ""
    freeze_epochs: int = 0
    backbone_lr: float = 1.0


BUDGET_MAX_EPOCHS = 100  # --time-budget without --epochs picks at most this many

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


def _fast(epochs: int, widths: tuple[int, int, int], description: str, depth: int = 2) -> RecipeDefaults:
    """A fast recipe: `widths` are the channels of its three conv blocks, `depth` their convs
    (3: a residual third). They were tuned on CIFAR-10: 32-pixel images, 10,000-50,000
    training images."""
    return RecipeDefaults(epochs, FAST_BATCH_SIZE, FAST_BIAS_LR_PER_IMAGE * FAST_BATCH_SIZE, True,
                          description.format(widths="/".join(map(str, widths))), ".fast",
                          {"widths": widths, "depth": depth},
                          fit_batch_to_data=True, label_smoothing=0.2, tuned_train_images=(10_000, 50_000),
                          tuned_image_sizes=(32, 32))


RECIPE_DEFAULTS: dict[str, RecipeDefaults] = {
    "seed": RecipeDefaults(50, 32, 1e-3, False,
                           "the original project's CNN: Adam, 50 epochs, augmentation layers in the model", ".seed"),
    "fast": _fast(8, (64, 256, 256), "airbench94_muon-style recipe, widths {widths}: whitening, BatchNorm, GELU, "
                                     "label smoothing, Muon + Nesterov SGD"),
    # 9 epochs fit a 10-minute budget on 2 cores, loading and evaluation included; ~45% of the
    # fast recipe's FLOPs per image
    "fast-small": _fast(9, (64, 128, 128), "the fast recipe at widths {widths}: about half the compute per image"),
    # the first usable model soonest. The first block, at full resolution, costs the most per
    # channel, the last the least: 16/64/128 beat 32/64/64 in accuracy and in time.
    "fast-tiny": _fast(3, (16, 64, 128), "the fast recipe at widths {widths}: a usable model in about a minute"),
    # airbench95's widths with the fast recipe's training (Muon, whitening, smoothing): 2.55x the
    # fast recipe's FLOPs per image, 2.1x its epoch time; 8 epochs (91.1% with TTA on CIFAR-10)
    # fit twice the 14-epoch fast run's time on 2 cores (docs/results.md)
    "fast-large": _fast(8, (128, 384, 384), "the fast recipe at widths {widths} (airbench95's): for long budgets, "
                                           "~2.5x the compute per image"),
    # airbench96's block (a third conv per block, its output added to the block's first
    # activation) at fast-large's widths: 1.37x fast-large's FLOPs per image
    "fast-deep": _fast(8, (128, 384, 384), "fast-large with a residual third conv per block (airbench96's "
                                          "block): ~3.5x the fast recipe's compute per image", depth=3),
}


# Pretrained backbones: 10 epochs, 3 of them on the frozen base (the head alone, Adam at 1e-3),
# then the unfrozen layers at 0.1x that step size with cosine decay to 0 (the keras-io transfer
# guide's two phases; fastai's fine_tune). Batches of 32, fewer for tiny sets. `application`:
# the keras.applications constructor; `preprocessing`: whether it takes include_preprocessing
# (ResNet50's preprocessing is a layer of ours).
def _backbone(application: str, parameters: str, weights_file: str, preprocessing: bool = True) -> RecipeDefaults:
    return RecipeDefaults(10, 32, 1e-3, False,
                          f"keras.applications {application} ({parameters} parameters), ImageNet weights",
                          ".backbones", {"application": application, "preprocessing": preprocessing},
                          fit_batch_to_data=True, tuned_image_sizes=(96, 320), backbone=True, min_image_size=32,
                          weights_file=weights_file, freeze_epochs=3, backbone_lr=0.1)


RECIPE_DEFAULTS.update({
    "mobilenetv3small": _backbone("MobileNetV3Small", "0.9M", "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"),
    "mobilenetv3large": _backbone("MobileNetV3Large", "3.0M", "weights_mobilenet_v3_large_224_1.0_float_no_top_v2.h5"),
    "efficientnetv2b0": _backbone("EfficientNetV2B0", "5.9M", "efficientnetv2-b0_notop.h5"),
    "resnet50": _backbone("ResNet50", "23.6M", "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                          preprocessing=False),
    "convnexttiny": _backbone("ConvNeXtTiny", "27.8M", "convnext_tiny_notop.h5"),
})
BACKBONES = tuple(name for name, row in RECIPE_DEFAULTS.items() if row.backbone)

# --model auto: the backbone it prefers, in order, when their ImageNet weights are at hand
# (MobileNetV3Large first: the cheapest per image of those above 75% on ImageNet)
AUTO_BACKBONES = ("mobilenetv3large", "efficientnetv2b0", "mobilenetv3small", "convnexttiny", "resnet50")
AUTO_SMALL_SIDE = 48  # images this small (pixels a side)...
AUTO_MANY_IMAGES = 5000  # ...and this many training images: the fast recipe beats ImageNet backbones


def keras_weights_cache() -> Path:
    """Where Keras keeps downloaded application weights ($KERAS_HOME/models, ~/.keras/models)."""
    return Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras").expanduser() / "models"


def cached_weights(name: str) -> Path | None:
    """The backbone's ImageNet weights file in Keras' cache, if it was downloaded before."""
    path = keras_weights_cache() / RECIPE_DEFAULTS[name].weights_file
    return path if path.is_file() else None


def pick_recipe(train_images: int, image_size: tuple[int, int], weights: str | None) -> tuple[str, str]:
    """--model auto: (recipe, why) from the training-set size, the image size and whether
    pretrained weights are at hand (`weights`: the --weights given, None when not given)."""
    side = max(image_size)
    if side <= AUTO_SMALL_SIDE and train_images >= AUTO_MANY_IMAGES:
        return "fast", (f"{train_images:,} training images of {side} pixels: CIFAR-like data, where the fast "
                        "recipe trains from scratch to higher accuracy than an ImageNet backbone")
    if weights == "none":
        return "fast", "--weights none: no pretrained weights, and the fast recipe is the best from scratch"
    if weights == "imagenet" or weights is None:
        at_hand = [name for name in AUTO_BACKBONES if cached_weights(name)]
        if at_hand:
            return at_hand[0], (f"{train_images:,} training images: fine-tuning pretrained weights beats training "
                                f"from scratch, and {at_hand[0]}'s ImageNet weights are in {keras_weights_cache()}")
        if weights == "imagenet":
            return AUTO_BACKBONES[0], "--weights imagenet asked for a pretrained backbone"
        return "fast", (f"no ImageNet weights in {keras_weights_cache()} (--weights imagenet downloads them), "
                        f"so training from scratch: the fast recipe, its batch fitted to {train_images:,} images")
    return AUTO_BACKBONES[0], f"--weights {weights}: a weights file for the {AUTO_BACKBONES[0]} backbone"


def recipe_defaults(name: str) -> RecipeDefaults:
    try:
        return RECIPE_DEFAULTS[name]
    except KeyError:
        raise ImgclfError(f"unknown model '{name}' (available: {', '.join(sorted(RECIPE_DEFAULTS))})") from None


# Fine-tuning from --init: the pretrained layers at 0.3x the recipe's step sizes. On five new
# CIFAR-10 classes, 50 images each: 76.1% at 1x, 79.2% at 0.3x, 78.9% at 0.1x (docs/experiments.md).
INIT_BACKBONE_LR = 0.3
# ...after INIT_FREEZE_EPOCHS epochs of the new classifier alone: 81.3% against 79.2% without
# (1 epoch: 80.1%, 4: 80.6%; docs/experiments.md).
INIT_FREEZE_EPOCHS = 2


def is_backbone(model: str) -> bool:
    return model in RECIPE_DEFAULTS and RECIPE_DEFAULTS[model].backbone


def pretrained(config: TrainConfig) -> bool:
    """A backbone recipe starting from pretrained weights (imagenet or a file)."""
    return is_backbone(config.model) and config.weights != "none"


def check(config: TrainConfig) -> None:
    """Reject, in one line, what `TrainConfig.validate` rejects and what the recipe cannot do:
    an unknown name, images smaller than it takes, options for backbones only. Cheap (no
    Keras): run it before any data is read."""
    problems = config.problems()
    known = config.model in RECIPE_DEFAULTS
    if config.freeze_epochs and not (config.init or is_backbone(config.model)):
        problems.append("freeze_epochs needs a model to fine-tune: a pretrained backbone or --init")
    smallest = RECIPE_DEFAULTS[config.model].min_image_size if known else MIN_IMAGE_SIDE
    try:
        if min(config.size) < smallest:
            problems.append(f"the {config.model} recipe takes images of at least {smallest}x{smallest} pixels "
                            f"(got image_size {config.image_size})")
    except ImgclfError:
        pass  # said by config.problems()
    if config.weights is not None and config.model != AUTO and not is_backbone(config.model):
        problems.append(f"weights is for the pretrained backbones, not the {config.model} recipe")
    if not known and config.model != AUTO:
        problems.append(f"unknown model '{config.model}' (available: {AUTO}, {', '.join(sorted(RECIPE_DEFAULTS))})")
    if problems:
        raise ImgclfError("; ".join(problems))


def default_learning_rate(model: str, batch_size: int) -> float:
    """The recipe's step size at this batch size (in proportion to it where the recipe says)."""
    recipe = recipe_defaults(model)
    return recipe.learning_rate * (batch_size / recipe.batch_size if recipe.scale_lr_with_batch else 1.0)


def learning_rate_scale(config: TrainConfig) -> float:
    """A resolved config's step size as a multiple of its recipe's default at its batch size:
    what scales the step sizes an optimizer does not take from the peak step size (Muon's)."""
    return config.learning_rate / default_learning_rate(config.model, config.batch_size)


def resolve(config: TrainConfig, train_images: int | None = None, replicas: int = 1) -> TrainConfig:
    """`config` with its recipe's defaults filled in where a value is None; with
    `train_images`, a batch size fitted to a training set that small (`fitted_batch_size`).
    The batch is global: the recipe's per-device batch times `replicas` by default."""
    recipe = recipe_defaults(config.model)
    batch_size = config.batch_size
    if batch_size is None:
        per_device = recipe.batch_size if train_images is None else fitted_batch_size(recipe, train_images)
        batch_size = per_device * replicas
    learning_rate = config.learning_rate
    if learning_rate is None:
        learning_rate = default_learning_rate(config.model, batch_size)
    backbone_lr = config.backbone_lr
    if backbone_lr is None:
        backbone_lr = INIT_BACKBONE_LR if config.init else recipe.backbone_lr if pretrained(config) else 1.0
    epochs = config.epochs
    if epochs is None:
        epochs = BUDGET_MAX_EPOCHS if config.time_budget else recipe.epochs
    freeze_epochs = config.freeze_epochs
    if freeze_epochs is None:
        freeze_epochs = recipe.freeze_epochs if pretrained(config) else INIT_FREEZE_EPOCHS if config.init else 0
    return config.replace(
        augment=augment_value(config.augment or "recipe"),
        label_smoothing=recipe.label_smoothing if config.label_smoothing is None else config.label_smoothing,
        ema=recipe.ema if config.ema is None else config.ema,
        backbone_lr=backbone_lr,
        weights=(config.weights or "imagenet") if recipe.backbone else None,
        freeze_epochs=freeze_epochs,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
    )


# A saved model names the recipe that trained it under this key of its metadata (modelio);
# files written before it was unified used the other.
SAVED_RECIPE_KEY = "recipe"
OLD_SAVED_RECIPE_KEY = "model_name"


def saved_recipe(metadata: dict) -> str | None:
    """The recipe named in a saved model's metadata, new files or old."""
    return metadata.get(SAVED_RECIPE_KEY) or metadata.get(OLD_SAVED_RECIPE_KEY)
