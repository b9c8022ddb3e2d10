"""The training configuration and every list of choices: the bottom of the package.

`TrainConfig` is one frozen dataclass, every field typed and explained by its help, from
which the CLI's `train` options are made (`cli.py`). `TrainConfig.from_dict` rejects unknown
keys and wrong types, and `validate` rejects impossible values, before any data is read. What
depends on the model recipe (its defaults, the images it takes) is checked and filled in by
`models/recipes.py` (`check`, `resolve`). This module imports nothing of imgclf but
`errors`, so every layer can read the choices from it.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ImgclfError

AUTO = "auto"  # --model, --precision, --distribute: chosen from the data or the hardware
DATASETS = ("cifar10",)  # built in: Keras downloads them
# How an image of another shape becomes the model's (height, width): stretched to it
# ("squash", every pixel kept, shapes distorted), its centre cut to the model's aspect ratio
# ("crop", shapes kept, edges lost) or fitted inside with black borders ("pad", all kept).
RESIZE_MODES = ("squash", "crop", "pad")
DEFAULT_RESIZE = "squash"  # also how models saved without a resize mode were trained
PRECISIONS = (AUTO, "float32", "bfloat16", "float16")
DISTRIBUTE_MODES = (AUTO, "none", "mirrored", "multi-worker")  # training/distribute.py
WEIGHT_CHOICES = ("imagenet", "none")  # --weights of the pretrained backbones, besides a weights file
EXPORT_FORMATS = ("savedmodel", "onnx", "litert", "litert-int8")  # export/writers.py
BENCH_CONTENDERS = ("notebook", "reference", "fast")  # imgclf bench (bench/train.py)
CALIBRATIONS = ("temperature", "none")  # --calibrate: how the kept model's probabilities are calibrated
# --augment: the training-only augmentations (models/augment.py), each in the input pipeline;
# "recipe" is the recipe's own (the default), the presets are lists of the others
AUGMENTS = ("recipe", "randaugment", "mixup", "cutmix", "erasing")
AUGMENT_PRESETS = {"none": (), "light": ("recipe",), "strong": ("recipe", "randaugment", "mixup", "cutmix", "erasing")}
TUNE_OBJECTIVES = ("loss", "accuracy")  # imgclf tune: the kept model's validation log-loss or accuracy
DEFAULT_MLFLOW = "sqlite:///mlflow.db"  # --mlflow without a URI: a SQLite file in the working directory
MAX_IMAGE_PIXELS = 64_000_000  # refuse decompression bombs: a tiny file that expands to gigapixels
MIN_IMAGE_SIDE = 8  # pixels: the smallest image any recipe takes


def parse_image_size(value: int | str) -> tuple[int, int]:
    """(height, width) from a side N (int or "N") or "HxW"."""
    if isinstance(value, int):
        return value, value
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(value))
    if not match:
        raise ImgclfError(f"image_size must be a side N or HxW in pixels, e.g. 96 or 120x160 (got {value!r})")
    return int(match[1]), int(match[2] or match[1])


def image_size_value(text: str) -> int | str:
    """--image-size as TrainConfig keeps it: N (an int) or "HxW"."""
    parse_image_size(text)
    return int(text) if text.strip().isdigit() else text.strip()


def augment_value(text: str) -> str:
    """--augment: a preset (none, light, strong) or a comma-separated list of AUGMENTS, as the
    list it stands for ("none" when empty), in AUGMENTS' order."""
    text = str(text).strip().lower()
    names = AUGMENT_PRESETS.get(text)
    if names is None:
        names = tuple(name.strip() for name in text.split(",") if name.strip())
        unknown = [name for name in names if name not in AUGMENTS]
        if unknown or not names:
            raise ImgclfError(f"unknown augmentation {', '.join(map(repr, unknown)) or repr(text)} (augment takes "
                              f"{', '.join(AUGMENT_PRESETS)} or a comma-separated list of {', '.join(AUGMENTS)})")
    return ",".join(name for name in AUGMENTS if name in names) or "none"


def augment_names(value: str | None) -> tuple[str, ...]:
    """The augmentations a (resolved or not) --augment value stands for."""
    value = augment_value(value or "recipe")
    return () if value == "none" else tuple(value.split(","))


def _option(default: Any, help: str, **option: Any) -> Any:
    """A field that is also a `train` option (cli.py makes them). `help` may name {default}
    and the recipe table's values (cli.py formats it); `option` may give flag, metavar,
    choices, type (text -> value, raising ImgclfError) and group ("data")."""
    return dataclasses.field(default=default, metadata={"help": help, **option})


@dataclass(frozen=True)
class TrainConfig:
    # --- data ---
    dataset: str = _option("cifar10", "built-in dataset, downloaded by Keras (default: {default})",
                           choices=DATASETS, group="data")  # used when neither data_dir nor labels is given
    data_dir: str | None = _option(None, "folder with one subfolder per class (train/ and test/ inside are splits)",
                                   group="data")
    labels: str | None = _option(None, "CSV file with columns path,label (paths relative to the CSV's folder)",
                                 group="data")
    image_size: int | str = _option(32, "pixels the images are resized to: a side N, or HxW (default: {default})",
                                    metavar="N|HxW", type=image_size_value, group="data")
    resize: str = _option(DEFAULT_RESIZE, "images of another shape: squash (stretch), crop (centre) or pad (black "
                          "borders); predict, evaluate, export and serve resize the same way (default: {default})",
                          choices=RESIZE_MODES, group="data")
    val_split: float = _option(0.2, "fraction of the labelled training data held out for validation "
                                    "(default: {default})")
    limit: int | None = _option(None, "use at most N images (stratified sample), for quick tries", metavar="N",
                                group="data")
    # decoded images are held in memory (uint8) up to this size, else streamed
    memory_limit_mb: int = _option(4096, "hold decoded images in memory up to this size, else stream them from "
                                         "disk (default: {default})")
    cache: str | None = _option(None, "images streamed from disk: decode them once into a cache in DIR (tf.data's), "
                                      "which later epochs read instead of the files", metavar="DIR")
    # --- model and optimisation ---
    model: str = _option("seed", "model recipe from the registry: {recipes}, or auto (picked from the data and the "
                                 "weights at hand) (default: {default})")
    weights: str | None = _option(  # None: imagenet for the backbones
        None, "pretrained backbones: Keras' ImageNet download (cached in ~/.keras/models), none (from scratch) or a "
              "weights file of the backbone without its classifier (default: imagenet)",
        metavar="|".join(WEIGHT_CHOICES) + "|PATH")
    freeze_epochs: int | None = _option(
        None, "pretrained backbones and --init: epochs training only the new classifier on the frozen rest "
              "(default: {backbone_freeze_epochs} for backbones, {init_freeze_epochs} with --init)")
    unfreeze: str = _option("all", "pretrained backbones, after --freeze-epochs: train all layers, or only the top "
                                   "N blocks (0: none) (default: {default})", metavar="all|N")
    init: str | None = _option(None, "start from a model trained earlier (its recipe and weights) with a new head "
                                     "for these classes", metavar="RUN_DIR|MODEL.keras")
    backbone_lr: float | None = _option(
        None, "step sizes of all but the new classifier, as a fraction of the recipe's (default: {init_backbone_lr} "
              "with --init, {backbone_backbone_lr} for pretrained backbones after --freeze-epochs, else 1)")
    epochs: int | None = _option(None, "full passes over the training split; default: the model's ({recipe_epochs}); "
                                       "with --time-budget, the most it may pick")
    time_budget: float | None = _option(
        None, "train for as many epochs as fit in MINUTES on this machine, loading and the final evaluation "
              "included: the run times its first steps, picks the epochs (the step-size schedule spans them; at "
              "most --epochs, else 100) and says what it picked (one device)", metavar="MINUTES")
    batch_size: int | None = _option(None, "images per optimisation step; default: the model's ({recipe_batch_size})")
    learning_rate: float | None = _option(None, "peak step size; default: the model's")
    distribute: str = _option(AUTO, "devices: auto (every GPU when there are several), none, mirrored (tf.distribute "
                                    "MirroredStrategy; --batch-size is then global), multi-worker (several machines, "
                                    "from TF_CONFIG or --workers) (default: {default})", choices=DISTRIBUTE_MODES)
    precision: str = _option(AUTO, "compute precision (default: auto = bfloat16 where the hardware has it, else "
                                   "float32)", choices=PRECISIONS)
    seed: int = _option(42, "fixes split, initialisation, augmentation (default: {default})")
    split_seed: int | None = _option(None, "fixes the split (and --limit's sample) alone, so that runs of other "
                                           "--seed values share one validation split (default: --seed)")
    deterministic: bool = _option(False, "deterministic ops: two runs on the same machine give identical histories "
                                         "(slower)")
    # "balanced": n_images / (n_classes * images of the class), on the training split; a JSON
    # object's missing classes weigh 1
    class_weight: str | dict | None = _option(
        None, "weigh each class's loss: balanced (inverse to its images), none (default), or a JSON object such as "
              "'{{\"cat\": 3}}'; config.json keeps the weights used", metavar="balanced|none|JSON")
    # --- improving a model: regularisation, early stopping, tracking ---
    augment: str | None = _option(
        None, "training-only augmentation: none, light (the recipe's own), strong (recipe,randaugment,mixup,cutmix,"
              "erasing) or a comma-separated list of " + ", ".join(AUGMENTS) + " (default: recipe)",
        metavar="none|light|strong|LIST", type=augment_value, group="improving a model")
    label_smoothing: float | None = _option(
        None, "label smoothing of the loss, 0 to <1 (default: the recipe's: {recipe_label_smoothing})",
        group="improving a model")
    weight_decay: float | None = _option(
        None, "decoupled weight decay: each step subtracts W x the step-size schedule x each weight (default: the "
              "recipe's own regularisation only)", metavar="W", group="improving a model")
    ema: float | None = _option(
        None, "keep an exponential moving average of the weights with this decay (e.g. 0.99); it is what "
              "validation measures and what is saved; 0 turns it off (default: the recipe's: {recipe_ema})",
        metavar="DECAY", group="improving a model")
    patience: int | None = _option(
        None, "stop when the validation loss has not improved (by more than --min-delta) for N epochs; the best "
              "model stays the kept one", metavar="N", group="improving a model")
    min_delta: float = _option(0.0, "with --patience: the smallest decrease of the validation loss that counts as "
                                    "an improvement (default: {default})", group="improving a model")
    mlflow: str | None = _option(
        None, f"also log the run to MLflow: its config, each epoch's metrics, its models and report; to a "
              f"tracking URI, by default {DEFAULT_MLFLOW} (needs pip install 'imgclf[mlflow]')",
        metavar="URI", nargs="?", const=DEFAULT_MLFLOW, group="improving a model")
    tta: bool = _option(False, "final evaluation with test-time augmentation (mirror image and 1-pixel shifts)")
    train_on_all: bool = _option(False, "no validation split: train on all labelled data, monitor on the test split")
    calibrate: str = _option("temperature", "calibrate the kept model's probabilities at the end: temperature "
                                            "(one temperature fitted on the validation split, put into the model) "
                                            "or none; --train-on-all has no validation split and skips it "
                                            "(default: {default})", choices=CALIBRATIONS)
    # --- output ---
    out: str | None = _option(None, "run folder (default: runs/<model>-<time>); one that holds a run is refused "
                                    "(see --resume and --overwrite)")
    overwrite: bool = _option(False, "--out holds a run: move it aside to <out>.old-<time> (nothing is deleted) "
                                     "and start afresh")
    name: str | None = _option(None, "run name under runs/ (default: <model>-<time>)")
    verbose: int = 1  # 0 silent, 1 progress bar and one line per epoch (the CLI's --quiet: 0)

    @classmethod
    def from_dict(cls, values: dict[str, Any], validate: bool = True) -> "TrainConfig":
        """Build a config from plain values, rejecting unknown keys and wrong types, and
        impossible values unless `validate` is false (`models.recipes.check` will say them,
        with the recipe's, in one line)."""
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ImgclfError(f"unknown configuration key(s): {', '.join(unknown)}")
        hints = typing.get_type_hints(cls)
        for key, value in values.items():
            _check_type(key, value, hints[key])
        config = cls(**values)
        if validate:
            config.validate()
        return config

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
    def data_seed(self) -> int:
        """What fixes the train/validation split and --limit's sample: --split-seed, else --seed."""
        return self.seed if self.split_seed is None else self.split_seed

    @property
    def size(self) -> tuple[int, int]:
        """(height, width) of the images the model takes."""
        return parse_image_size(self.image_size)

    def validate(self) -> None:
        """Reject impossible values with a one-line message (what the recipe allows:
        `models.recipes.check`)."""
        problems = self.problems()
        if problems:
            raise ImgclfError("; ".join(problems))

    def problems(self) -> list[str]:
        """What `validate` rejects, one line each."""
        problems = []
        if self.epochs is not None and self.epochs < 1:
            problems.append(f"epochs must be at least 1 (got {self.epochs})")
        if self.time_budget is not None and not 0 < self.time_budget < float("inf"):
            problems.append(f"time_budget must be a positive number of minutes (got {self.time_budget})")
        if self.batch_size is not None and self.batch_size < 1:
            problems.append(f"batch_size must be at least 1 (got {self.batch_size})")
        if not 0.0 < self.val_split < 1.0:
            problems.append(f"val_split must be between 0 and 1, exclusive (got {self.val_split})")
        try:
            if min(self.size) < MIN_IMAGE_SIDE:
                problems.append(f"image_size must be at least {MIN_IMAGE_SIDE} pixels a side (got {self.image_size})")
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
        if not (self.unfreeze == "all" or self.unfreeze.isdigit()):
            problems.append(f"unfreeze must be 'all' or a number of blocks (got {self.unfreeze!r})")
        if self.weights is not None and self.weights not in WEIGHT_CHOICES and not Path(self.weights).is_file():
            problems.append(f"weights must be {' or '.join(WEIGHT_CHOICES)} or a weights file (no file {self.weights})")
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
        if self.distribute not in DISTRIBUTE_MODES:
            problems.append(f"distribute must be one of {', '.join(DISTRIBUTE_MODES)} (got {self.distribute!r})")
        if self.calibrate not in CALIBRATIONS:
            problems.append(f"calibrate must be one of {', '.join(CALIBRATIONS)} (got {self.calibrate!r})")
        if self.augment is not None:
            try:
                augment_value(self.augment)
            except ImgclfError as exc:
                problems.append(str(exc))
        if self.label_smoothing is not None and not 0.0 <= self.label_smoothing < 1.0:
            problems.append(f"label_smoothing must be in [0, 1) (got {self.label_smoothing})")
        if self.weight_decay is not None and not 0.0 <= self.weight_decay < 1.0:
            problems.append(f"weight_decay must be in [0, 1) (got {self.weight_decay})")
        if self.ema is not None and not 0.0 <= self.ema < 1.0:
            problems.append(f"ema must be a decay from 0 (none) to below 1, e.g. 0.99 (got {self.ema})")
        if self.patience is not None and self.patience < 1:
            problems.append(f"patience must be at least 1 epoch (got {self.patience})")
        if not self.min_delta >= 0.0:
            problems.append(f"min_delta must not be negative (got {self.min_delta})")
        if self.patience is not None and self.train_on_all:
            problems.append("patience watches the validation loss, and train_on_all leaves no validation split")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {', '.join(PRECISIONS)} (got {self.precision!r})")
        if self.data_dir is not None and self.labels is not None:
            problems.append("give either data_dir or labels, not both")
        return problems


def min_confidence_value(text: str | float) -> float:
    """--min-confidence: a probability strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 < value < 1.0:
        raise ImgclfError(f"min_confidence must be a probability between 0 and 1, exclusive (got {text})")
    return value


def model_data_config(config: TrainConfig, loaded) -> TrainConfig:
    """`config` reading data the way the model `loaded` (a modelio.LoadedModel) takes it: its
    image size and resize mode."""
    height, width = loaded.image_size
    return config.replace(image_size=height if height == width else f"{height}x{width}", resize=loaded.resize)


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


# `imgclf serve`: what one request may hold; more gets a 4xx answer, and the service goes on.
MAX_BODY_MB_CEILING = 1e6  # MB: larger limits are typing mistakes
MAX_MEGAPIXELS_CEILING = 1e4  # megapixels, likewise


@dataclass(frozen=True)
class ServeLimits:
    max_body_mb: float = 20.0  # whole request, files and multipart overhead (1 MB = 10^6 bytes)
    max_images: int = 32  # files per request
    # Decoding an image takes several bytes per pixel before it is shrunk: 16 Mpx (~200 MB at
    # most in flight per decode, a few decodes at a time) keeps a worker's memory bounded.
    max_pixels: int = 16_000_000

    def __post_init__(self):  # the one check, for the CLI and `create_app` alike
        problems = []
        if not 0 < self.max_body_mb < MAX_BODY_MB_CEILING:
            problems.append(f"the request size limit must be above 0 and below {MAX_BODY_MB_CEILING:,.0f} MB "
                            f"(got {self.max_body_mb})")
        if not self.max_images >= 1:
            problems.append(f"the images per request must be at least 1 (got {self.max_images})")
        if not 0 < self.max_pixels < MAX_MEGAPIXELS_CEILING * 1e6:
            problems.append(f"the image size limit must be above 0 and below {MAX_MEGAPIXELS_CEILING:,.0f} "
                            f"megapixels (got {self.max_pixels / 1e6:g})")
        if problems:
            raise ImgclfError("; ".join(problems))

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1_000_000)

    @property
    def max_megapixels(self) -> float:
        return self.max_pixels / 1e6
