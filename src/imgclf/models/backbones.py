"""Pretrained backbones from `keras.applications`, fine-tuned in two phases.

    raw 0-255 RGB -> the backbone's own preprocessing -> backbone (BatchNorm in inference
    mode) -> global average pooling -> dropout -> softmax classifier

Phase 1 trains the new classifier on the frozen backbone; phase 2 unfreezes it (all of it,
or its top N blocks) at a lower step size (`recipes._backbone`: the defaults, and why).
BatchNorm stays in inference mode in both phases, as the keras-io transfer-learning guide
does: its statistics were estimated on ImageNet, and small batches of a few hundred photos
would only blur them. `--weights` picks the starting point: Keras' ImageNet download (cached
in `recipes.keras_weights_cache()`), a weights file, or none.
"""

from __future__ import annotations

import re
import socket
from functools import partial

import keras
from keras import layers

from ..errors import DataError
from .layers import CaffePreprocess
from .recipes import Recipe, cached_weights, keras_weights_cache, recipe_defaults

DROPOUT = 0.2  # before the classifier
DOWNLOAD_TIMEOUT = 20.0  # seconds without an answer before the ImageNet download is given up
# The blocks of each backbone, by layer name (`unfreeze`): MobileNetV3's expanded_conv_N,
# EfficientNetV2's blockNx, ResNet's convN_blockM, ConvNeXt's stage_N_block_M.
BLOCK = re.compile(r"expanded_conv_\d*|block\d+[a-z]|conv\d_block\d+|stage_\d+_block_\d+")
STEPS_PER_CALL = 8


def build_backbone_model(name: str, input_shape: tuple[int, int, int], num_classes: int,
                         weights: str | None = "imagenet") -> keras.Model:
    """The `name` backbone (the keras.applications constructor its row in
    `recipes.RECIPE_DEFAULTS` names) with a new classifier of `num_classes` units; `weights`:
    "imagenet", a weights file of the backbone without its classifier, or None/"none" (random
    initialisation)."""
    row = recipe_defaults(name)
    constructor, has_preprocessing = row.options["application"], row.options["preprocessing"]
    smallest = row.min_image_size
    if min(input_shape[:2]) < smallest:
        raise DataError(f"the {name} backbone takes images of at least {smallest}x{smallest} pixels "
                        f"(got {input_shape[0]}x{input_shape[1]}): use a larger --image-size")
    weights = None if weights in (None, "none") else weights
    options = {"include_preprocessing": True} if has_preprocessing else {}
    base = _application(name, constructor, input_shape, weights, options)
    inputs = keras.Input(shape=input_shape)
    x = inputs if has_preprocessing else CaffePreprocess(name="caffe_preprocess")(inputs)  # ResNet50's
    # Pretrained: BatchNorm in inference mode, frozen or not. From scratch it must learn its statistics.
    x = base(x, training=False) if weights else base(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(DROPOUT, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="softmax", dtype="float32", name="classifier")(x)
    return keras.Model(inputs, outputs, name=name)


def _application(name: str, constructor: str, input_shape, weights, options) -> keras.Model:
    build = getattr(keras.applications, constructor)
    if weights == "imagenet" and cached_weights(name) is None:
        return _download(name, lambda: build(include_top=False, weights="imagenet", input_shape=input_shape,
                                             **options))
    try:
        return build(include_top=False, weights=weights, input_shape=input_shape, **options)
    except Exception as exc:  # Keras raises ValueError, OSError or h5py's errors for a wrong file
        what = "its ImageNet weights" if weights == "imagenet" else f"the weights file {weights}"
        raise DataError(f"{name}: cannot load {what} ({type(exc).__name__}: {_first_line(exc)}); --weights "
                        f"needs a weights file of {constructor}(include_top=False)") from None


def _download(name: str, build):
    """Keras' own download of the ImageNet weights into its cache, given up after
    DOWNLOAD_TIMEOUT seconds without an answer, with one line saying what to do offline."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        return build()
    except Exception as exc:
        file = recipe_defaults(name).weights_file
        raise DataError(f"cannot download the ImageNet weights of {name} ({_first_line(exc)[-160:]}); offline, "
                        f"copy {file} into {keras_weights_cache()} or give --weights PATH (a weights file), "
                        "or train from scratch with --weights none") from None
    finally:
        socket.setdefaulttimeout(previous)


def base_model(model: keras.Model) -> keras.Model:
    """The pretrained backbone inside a model built here."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            return layer
    raise DataError(f"the model {model.name} has no backbone to freeze or unfreeze")


def set_phase(model: keras.Model, phase: int, unfreeze: str = "all") -> None:
    """Phase 1: only the classifier trains (the backbone frozen). Phase 2: the backbone's top
    `unfreeze` blocks ("all": every layer) train too. A model without a nested backbone (an
    imgclf model given to --init) freezes all but its last Dense layer, and counts `unfreeze`
    in layers with weights. Compile the model again afterwards."""
    if not any(isinstance(layer, keras.Model) for layer in model.layers):
        _set_phase_flat(model, phase, unfreeze)
        return
    base = base_model(model)
    base.trainable = phase == 2 and unfreeze != "0"
    if not base.trainable or unfreeze == "all":
        return
    starts = _block_starts(base)
    first = list(starts.values())[-int(unfreeze)] if int(unfreeze) <= len(starts) else 0
    for index, layer in enumerate(base.layers):
        layer.trainable = index >= first


def _set_phase_flat(model: keras.Model, phase: int, unfreeze: str) -> None:
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    weighted = [layer for layer in model.layers if layer.weights and layer is not head]
    top = 0 if phase == 1 else len(weighted) if unfreeze == "all" else min(int(unfreeze), len(weighted))
    unfrozen = {id(layer) for layer in weighted[len(weighted) - top:]}
    for layer in model.layers:
        layer.trainable = layer is head or id(layer) in unfrozen


def blocks(model: keras.Model) -> list[str]:
    """The backbone's block names, input to output (what `unfreeze` N counts from the top)."""
    return list(_block_starts(base_model(model)))


def _block_starts(base: keras.Model) -> dict[str, int]:
    """Block name -> index of its first layer, input to output."""
    starts: dict[str, int] = {}
    for index, layer in enumerate(base.layers):
        match = BLOCK.search(layer.name)
        if match:
            starts.setdefault(match.group(), index)
    return starts


def make_optimizer(learning_rate: float, steps_per_epoch: int, epochs: int, backbone_lr: float = 1.0,
                   lr_scale: float = 1.0):
    """Adam, its step size decaying to 0 over the phase by a cosine."""
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate * backbone_lr, max(1, steps_per_epoch * epochs))
    return keras.optimizers.Adam(schedule)


# Photo augmentation: a random resized crop (RandomResizedCrop's usual ranges, area at least
# CROP_AREA of the image), a mirror half the time and a mild colour jitter.
CROP_AREA = 0.35
CROP_RATIO = (3 / 4, 4 / 3)
JITTER = 0.2  # brightness, contrast and saturation each scaled by a factor in 1 +- JITTER


def photo_augment(images, seed, index, epoch):
    """The batch augmentation of the backbone recipes, in tf.data with stateless random ops
    (a batch depends only on its seed, so resumed runs see the same images)."""
    import math

    import tensorflow as tf

    n = tf.shape(images)[0]
    height, width = images.shape[1], images.shape[2]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 7))

    def uniform(i, low=0.0, high=1.0, shape=None):
        return tf.random.stateless_uniform(shape if shape is not None else (n,), seeds[i], low, high)

    area = uniform(0, CROP_AREA, 1.0)
    ratio = tf.exp(uniform(1, math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])))
    crop_h = tf.minimum(tf.sqrt(area / ratio), 1.0)
    crop_w = tf.minimum(tf.sqrt(area * ratio), 1.0)
    top = uniform(2) * (1.0 - crop_h)
    left = uniform(3) * (1.0 - crop_w)
    mirror = uniform(4) < 0.5
    x0, x1 = tf.where(mirror, left + crop_w, left), tf.where(mirror, left, left + crop_w)  # x1 < x0 flips
    boxes = tf.stack([top, x0, top + crop_h, x1], axis=1)
    out = tf.image.crop_and_resize(tf.cast(images, tf.float32), boxes, tf.range(n), (height, width))
    brightness, contrast, saturation = tf.unstack(uniform(5, 1 - JITTER, 1 + JITTER, (3, n, 1, 1, 1)))
    out = out * brightness
    mean = tf.reduce_mean(out, axis=[1, 2, 3], keepdims=True)
    out = (out - mean) * contrast + mean
    gray = tf.reduce_mean(out, axis=3, keepdims=True)
    out = (out - gray) * saturation + gray
    return tf.clip_by_value(out, 0.0, 255.0)


def recipe(name: str) -> Recipe:
    """The backbone recipe `name` (registered in `recipes.RECIPE_DEFAULTS`)."""
    return Recipe(build=partial(build_backbone_model, name), make_optimizer=make_optimizer, augment=photo_augment,
                  steps_per_execution=STEPS_PER_CALL, explain_layer=backbone_output)


def backbone_output(layers: list) -> int:
    """Grad-CAM's layer: the backbone, whose output is its last feature map (1/32 of the input)."""
    return next(i for i, layer in enumerate(layers) if isinstance(layer, keras.Model))


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
