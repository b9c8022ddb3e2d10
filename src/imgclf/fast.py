"""The `fast` recipe: the best time-to-accuracy training we know for small images on CPUs.

Our Keras implementation of the ideas of Keller Jordan's airbench (2024), which reaches
94% on CIFAR-10 in ~10 epochs: a small VGG-like net (widths 64/256/256), a frozen
first layer that whitens 2x2 patches (computed from the training data), BatchNorm
with fast momentum and no scale, GELU, logits scaled by 1/9, label smoothing 0.2,
Nesterov SGD with warm-up then decay, random flip + 2-pixel translation applied
to whole batches in the input pipeline, and an exponential moving average of the
weights that the model is reset to every few steps (lookahead).
Every layer is a stock Keras layer: saved models load with plain Keras.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from .models import Recipe, register

WIDTHS = (64, 256, 256)  # channels of the three conv blocks
WHITEN_PATCH = 2  # side of the whitened patches, pixels
WHITEN_IMAGES = 2000  # training images used to estimate the patch covariance
WHITEN_EPS = 5e-4  # added to eigenvalues before the inverse square root
BN_MOMENTUM = 0.4  # Keras convention (PyTorch momentum 0.6): running stats adapt fast
BN_EPSILON = 1e-5
LOGIT_SCALE = 1 / 9  # temperature of the output layer
LABEL_SMOOTHING = 0.2
SGD_MOMENTUM = 0.85  # Nesterov
LR_PER_IMAGE = 0.0015  # peak learning rate per image in the batch (mean loss): lr = this x batch size
WARMUP_FRACTION = 0.2  # of all steps, linear from WARMUP_START x peak to peak
WARMUP_START = 0.2
WEIGHT_DECAY = 5e-5  # decoupled, per step and unit learning rate
EMA_MOMENTUM = 0.95  # per step
EMA_EVERY = 5  # steps between resets of the weights to their moving average (lookahead)
TRANSLATE = 2  # maximum random shift, pixels (reflect padding)
EPOCHS = 10
BATCH_SIZE = 512


def whitening_weights(pixels: np.ndarray, patch: int = WHITEN_PATCH, eps: float = WHITEN_EPS):
    """Conv kernel and bias that map each patch onto its principal components, scaled to
    unit variance, with both signs (2 x patch*patch*3 filters)."""
    x = np.asarray(pixels[:WHITEN_IMAGES], np.float32) / 255.0
    windows = np.lib.stride_tricks.sliding_window_view(x, (patch, patch), axis=(1, 2))  # N,H',W',C,kh,kw
    flat = windows.transpose(0, 1, 2, 4, 5, 3).reshape(-1, patch * patch * x.shape[-1])  # (kh, kw, c) order
    mean = flat.mean(axis=0)
    centred = flat - mean
    cov = centred.T @ centred / len(centred)
    eigenvalues, eigenvectors = np.linalg.eigh(cov.astype(np.float64))
    filters = eigenvectors[:, ::-1] / np.sqrt(eigenvalues[::-1] + eps)
    filters = np.concatenate([filters, -filters], axis=1).astype(np.float32)
    kernel = filters.reshape(patch, patch, x.shape[-1], -1)
    bias = -(mean @ filters)
    return kernel, bias.astype(np.float32)


def _conv_bn(x, width: int, pool: bool):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False)(x)
    if pool:
        x = layers.MaxPooling2D(2)(x)
    x = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False)(x)
    return layers.Activation("gelu")(x)


def fast_cnn(input_shape, num_classes: int, train_pixels: np.ndarray | None = None,
             widths: tuple[int, ...] = WIDTHS) -> keras.Model:
    inputs = keras.Input(shape=input_shape)
    x = layers.Rescaling(1.0 / 255)(inputs)
    channels = WHITEN_PATCH * WHITEN_PATCH * input_shape[-1] * 2
    whiten = layers.Conv2D(channels, WHITEN_PATCH, padding="valid", name="whiten", trainable=False)
    x = whiten(x)
    if train_pixels is not None and len(train_pixels):
        whiten.set_weights(list(whitening_weights(train_pixels)))
    x = layers.Activation("gelu")(x)
    for width in widths:
        x = _conv_bn(x, width, pool=True)
        x = _conv_bn(x, width, pool=False)
    x = layers.GlobalMaxPooling2D()(x)
    x = layers.Dense(num_classes, use_bias=False)(x)
    x = layers.Rescaling(LOGIT_SCALE)(x)
    outputs = layers.Activation("softmax", dtype="float32")(x)
    return keras.Model(inputs, outputs, name="fast")


def smoothed_crossentropy(y_true, y_pred):
    """Sparse categorical cross-entropy with label smoothing (Keras' sparse loss has none)."""
    one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1])
    return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=LABEL_SMOOTHING)


def make_optimizer(peak_lr: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, int(WARMUP_FRACTION * total))
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=WARMUP_START * peak_lr, warmup_target=peak_lr, warmup_steps=warmup,
        decay_steps=max(1, total - warmup), alpha=0.0,
    )
    return keras.optimizers.SGD(
        learning_rate=schedule, momentum=SGD_MOMENTUM, nesterov=True, weight_decay=WEIGHT_DECAY,
        use_ema=True, ema_momentum=EMA_MOMENTUM, ema_overwrite_frequency=EMA_EVERY,
    )


def flip_translate(images, seed: int):
    """Random horizontal flip and a random shift of up to TRANSLATE pixels, on a whole batch."""
    import tensorflow as tf

    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    flip = tf.random.uniform((batch, 1, 1, 1), seed=seed) < 0.5
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    padded = tf.pad(images, [[0, 0], [TRANSLATE, TRANSLATE], [TRANSLATE, TRANSLATE], [0, 0]], mode="REFLECT")
    dy = tf.random.uniform((batch, 1), 0, 2 * TRANSLATE + 1, dtype=tf.int32, seed=seed + 1)
    dx = tf.random.uniform((batch, 1), 0, 2 * TRANSLATE + 1, dtype=tf.int32, seed=seed + 2)
    rows = tf.gather(padded, dy + tf.range(height)[None, :], axis=1, batch_dims=1)
    return tf.gather(rows, dx + tf.range(width)[None, :], axis=2, batch_dims=1)


register("fast", Recipe(
    build=fast_cnn,
    epochs=EPOCHS,
    batch_size=BATCH_SIZE,
    learning_rate=LR_PER_IMAGE * BATCH_SIZE,
    make_optimizer=make_optimizer,
    loss=smoothed_crossentropy,
    augment=flip_translate,
    needs_data=True,
    scale_lr_with_batch=True,
    description="airbench-style fast recipe: whitening, BatchNorm, GELU, label smoothing, Nesterov SGD, EMA",
))
