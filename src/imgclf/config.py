"""The training configuration: one frozen dataclass, every field typed and explained.

`TrainConfig.from_dict` rejects unknown keys and wrong types, and `validate`
rejects impossible values, before any data is read or any model is built.
"""

from __future__ import annotations

import dataclasses
import json
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .data.decode import MAX_IMAGE_PIXELS, RESIZE_MODES
from .errors import ImgclfError
from .models.recipes import AUTO, RECIPE_DEFAULTS, WEIGHT_CHOICES, fitted_batch_size, recipe_defaults
from .training.distribute import DISTRIBUTE

PRECISIONS = ("auto", "float32", "bfloat16", "float16")
# Fine-tuning from --init: the pretrained layers at 0.3x the recipe's step sizes. On five new
# CIFAR-10 classes, 50 images each: 76.1% at 1x, 79.2% at 0.3x, 78.9% at 0.1x (docs/experiments.md).
INIT_BACKBONE_LR = 0.3
# ...after INIT_FREEZE_EPOCHS epochs of the new classifier alone: 81.3% against 79.2% without
# (1 epoch: 80.1%, 4: 80.6%; docs/experiments.md).
INIT_FREEZE_EPOCHS = 2
MAX_CONFIG_BYTES = 2**20  # a configuration file is a small JSON object


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    dataset: str = "cifar10"  # built-in dataset used when neither data_dir nor labels is given
    data_dir: str | None = None  # folder with one subfolder per class; train/ and test/ inside are splits
    labels: str | None = None  # CSV file with columns path,label (paths relative to the CSV's folder)
    image_size: int | str = 32  # the images the model takes, in pixels: a side N (square) or "HxW"
    resize: str = "squash"  # images of another shape: squash (stretch), crop (centre) or pad (black borders)
    val_split: float = 0.2  # fraction of the labelled training data held out for validation
    limit: int | None = None  # use at most this many training images (stratified sample), for quick tries
    memory_limit_mb: int = 4096  # decoded images are held in memory (uint8) up to this size, else streamed
    cache: str | None = None  # images streamed from disk: keep them decoded (uint8) in tf.data's file cache here
    # --- model and optimisation ---
    model: str = "seed"  # recipe name (`imgclf.models.recipes.RECIPE_DEFAULTS`), or "auto" (picked from the data)
    # pretrained backbones: "imagenet" (Keras' download and cache), "none" (random) or a weights file;
    # None: imagenet
    weights: str | None = None
    # epochs training only the new classifier on the frozen rest; None: the backbone recipe's, 2 with init
    freeze_epochs: int | None = None
    unfreeze: str = "all"  # backbones after freeze_epochs: train "all" layers, or only the top N blocks ("0": none)
    init: str | None = None  # start from this model (.keras, or a run folder) with a new head; its recipe is used
    # step sizes of all but the new classifier, as a fraction of the recipe's; None: 0.3 with init,
    # the recipe's for pretrained backbones (their step size after the unfreeze), else 1
    backbone_lr: float | None = None
    epochs: int | None = None  # full passes over the training split; None: the model's default (seed: 50)
    batch_size: int | None = None  # images per optimisation step; None: the model's default (seed: 32)
    learning_rate: float | None = None  # peak step size; None: the model's default (seed: Adam 0.001)
    # devices: auto (all GPUs when there are several), none, mirrored (training/distribute.py)
    distribute: str = "auto"
    precision: str = "auto"  # auto (bfloat16 where the CPU/GPU has it), float32, bfloat16 or float16
    seed: int = 42  # fixes the split, the initialisation and the augmentation
    deterministic: bool = False  # deterministic TensorFlow ops: two runs on one machine give identical histories
    # loss weight per class: "balanced" (n_images / (n_classes * images of the class), on the
    # training split), "none", or {class name: weight} (a JSON object; missing classes weigh 1).
    # config.json keeps the weights used.
    class_weight: str | dict | None = None
    tta: bool = False  # final evaluation with test-time augmentation (mirror image and 1-pixel shifts)
    train_on_all: bool = False  # no validation split: train on all labelled data, monitor on the test split
    # --- output ---
    out: str | None = None  # run folder; default runs/<name>
    overwrite: bool = False  # out holds a run: move it aside to <out>.old-<time> and start afresh (else refuse)
    name: str | None = None  # run name used for the default run folder; default <model>-<timestamp>
    verbose: int = 1  # 0 silent, 1 progress bar and one line per epoch

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build a config from plain values, rejecting unknown keys and wrong types."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ImgclfError(f"unknown configuration key(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            _check_type(key, value, hints[key])
        config = cls(**values)
        config.validate()
        return config

    @classmethod
    def from_json(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(read_config_file(path))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes: Any) -> "TrainConfig":
        return self.from_dict({**self.to_dict(), **changes})

    def class_weights(self) -> dict[str, float]:
        """The {class name: weight} given (a dict, or a JSON object in a string)."""
        value = self.class_weight
        if isinstance(value, str):
            try:
                value = json.loads(value)
            except ValueError:
                raise ImgclfError(f"class_weight must be balanced, none or a JSON object of class weights "
                                  f"(got {self.class_weight!r})") from None
        if not isinstance(value, dict) or not all(
                isinstance(w, (int, float)) and not isinstance(w, bool) and w > 0 for w in value.values()):
            raise ImgclfError("class_weight must map class names to positive numbers, e.g. {\"cat\": 3}")
        return {str(k): float(w) for k, w in value.items()}

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images the model takes."""
        return parse_image_size(self.image_size)

    @property
    def pretrained(self) -> bool:
        """A backbone recipe starting from pretrained weights (imagenet or a file)."""
        return backbone_recipe(self.model) and self.weights != "none"

    def resolved(self, train_images: int | None = None, replicas: int = 1) -> "TrainConfig":
        """This config with the model recipe's defaults filled in where a value is None; with
        `train_images`, a batch size fitted to a training set that small (`fitted_batch_size`).
        The batch is global: the recipe's per-device batch times `replicas` by default."""
        recipe = recipe_defaults(self.model)
        batch_size = self.batch_size
        if batch_size is None:
            per_device = recipe.batch_size if train_images is None else fitted_batch_size(recipe, train_images)
            batch_size = per_device * replicas
        learning_rate = self.learning_rate
        if learning_rate is None:
            scale = batch_size / recipe.batch_size if recipe.scale_lr_with_batch else 1.0
            learning_rate = recipe.learning_rate * scale
        backbone_lr = self.backbone_lr
        if backbone_lr is None:
            backbone_lr = INIT_BACKBONE_LR if self.init else recipe.backbone_lr if self.pretrained else 1.0
        freeze_epochs = self.freeze_epochs
        if freeze_epochs is None:
            freeze_epochs = recipe.freeze_epochs if self.pretrained else INIT_FREEZE_EPOCHS if self.init else 0
        return self.replace(
            backbone_lr=backbone_lr,
            weights=(self.weights or "imagenet") if recipe.backbone else None,
            freeze_epochs=freeze_epochs,
            epochs=self.epochs if self.epochs is not None else recipe.epochs,
            batch_size=batch_size,
            learning_rate=learning_rate,
        )

    def validate(self) -> None:
        """Reject impossible values with a one-line message."""
        problems = []
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be at least 1 (got {self.epochs})")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be at least 1 (got {self.batch_size})")
        if not 0.0 < self.val_split < 1.0:
            problems.append(f"val_split must be between 0 and 1, exclusive (got {self.val_split})")
        try:
            if min(self.size) < 8:
                problems.append(f"image_size must be at least 8 pixels a side (got {self.image_size})")
            height, width = self.size
            if height * width > MAX_IMAGE_PIXELS:
                problems.append(f"image_size {height}x{width} is {height * width / 1e6:,.0f} megapixels: one image "
                                f"alone is {height * width * 12 / 2**30:,.0f} GiB as float32, over the limit of "
                                f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels on any image")
        except ImgclfError as exc:
            problems.append(str(exc))
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {', '.join(RESIZE_MODES)} (got {self.resize!r})")
        if self.freeze_epochs is not None and self.freeze_epochs < 0:
            problems.append(f"freeze_epochs must not be negative (got {self.freeze_epochs})")
        if self.class_weight not in (None, "balanced", "none"):
            try:
                self.class_weights()
            except ImgclfError as exc:
                problems.append(str(exc))
        if self.freeze_epochs and not (self.init or backbone_recipe(self.model)):
            problems.append("freeze_epochs needs a model to fine-tune: a pretrained backbone or --init")
        if not (self.unfreeze == "all" or self.unfreeze.isdigit()):
            problems.append(f"unfreeze must be 'all' or a number of blocks (got {self.unfreeze!r})")
        if self.weights is not None and self.weights not in WEIGHT_CHOICES and not Path(self.weights).is_file():
            problems.append(f"weights must be {' or '.join(WEIGHT_CHOICES)} or a weights file (no file {self.weights})")
        smallest = recipe_defaults(self.model).min_image_size if self.model in RECIPE_DEFAULTS else 8
        try:
            if min(self.size) < smallest:
                problems.append(f"the {self.model} recipe takes images of at least {smallest}x{smallest} pixels "
                                f"(got image_size {self.image_size})")
        except ImgclfError:
            pass  # said above
        if self.weights is not None and self.model != AUTO and not backbone_recipe(self.model):
            problems.append(f"weights is for the pretrained backbones, not the {self.model} recipe")
        if self.learning_rate is not None and not self.learning_rate > 0:
            problems.append(f"learning_rate must be positive (got {self.learning_rate})")
        if self.backbone_lr is not None and not 0 < self.backbone_lr <= 1:
            problems.append(f"backbone_lr must be in (0, 1] (got {self.backbone_lr})")
        if self.limit is not None and self.limit < 2:
            problems.append(f"limit must be at least 2 images (got {self.limit})")
        if self.memory_limit_mb < 0:
            problems.append(f"memory_limit_mb must not be negative (got {self.memory_limit_mb})")
        if self.verbose not in (0, 1):
            problems.append(f"verbose must be 0 or 1 (got {self.verbose})")
        if self.distribute not in DISTRIBUTE:
            problems.append(f"distribute must be one of {', '.join(DISTRIBUTE)} (got {self.distribute!r})")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.model not in RECIPE_DEFAULTS and self.model != AUTO:
            problems.append(f"unknown model '{self.model}' (available: {AUTO}, {', '.join(sorted(RECIPE_DEFAULTS))})")
        if self.data_dir is not None and self.labels is not None:
            problems.append("give either data_dir or labels, not both")
        if problems:
            raise ImgclfError("; ".join(problems))


def backbone_recipe(model: str) -> bool:
    return model in RECIPE_DEFAULTS and recipe_defaults(model).backbone


def model_data_config(config: TrainConfig, loaded) -> TrainConfig:
    """`config` reading data the way the model `loaded` (a modelio.LoadedModel) takes it: its
    image size and resize mode."""
    height, width = loaded.image_size
    return config.replace(image_size=height if height == width else f"{height}x{width}", resize=loaded.resize)


def parse_image_size(value: int | str) -> tuple[int, int]:
    """(height, width) from a side N (int or "N") or "HxW"."""
    if isinstance(value, int):
        return value, value
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(value))
    if not match:
        raise ImgclfError(f"image_size must be a side N or HxW in pixels, e.g. 96 or 120x160 (got {value!r})")
    return int(match[1]), int(match[2] or match[1])


def read_config_file(path: str | Path) -> dict[str, Any]:
    """The JSON object in a configuration file (a run's config.json or a user's --config)."""
    from .data.decode import BadImage, read_user_file

    try:
        values = json.loads(read_user_file(path, MAX_CONFIG_BYTES).decode("utf-8"))
    except (BadImage, ValueError) as exc:
        raise ImgclfError(f"cannot read configuration file {path}: {exc}") from None
    if not isinstance(values, dict):
        raise ImgclfError(f"configuration file {path} must hold a JSON object")
    return values


def _check_type(key: str, value: Any, hint: Any) -> None:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for typ in allowed:
        if typ is type(None) and value is None:
            return
        if typ is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return
        if typ is int and isinstance(value, int) and not isinstance(value, bool):
            return
        if typ is bool and isinstance(value, bool):
            return
        if typ in (str, dict) and isinstance(value, typ):
            return
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise ImgclfError(f"configuration key '{key}' must be {names} (got {value!r})")
