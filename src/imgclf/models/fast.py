"""The `fast` recipe family: the best time-to-accuracy training we know for small images on CPUs.

A Keras implementation of Keller Jordan's airbench94_muon (2024), which reaches 94% on
CIFAR-10 in 8 epochs: a small VGG-like net, a first layer that whitens 2x2 patches (kernel
computed from the training data and fixed), BatchNorm with fast momentum and no scale, GELU,
label smoothing, identity (Dirac) initialisation of the conv filters, the Muon optimizer for
conv filters (`muon.py`) and Nesterov SGD for BatchNorm offsets and the classifier, all with
a linear decay to zero, and alternating flip + 2-pixel translation of whole batches in the
input pipeline (`augment.py`). `fast` (widths 64/256/256), `fast-small` (64/128/128) and
`fast-tiny` (16/64/128) trade accuracy for time, `fast-large` (airbench95's 128/384/384)
time for accuracy, and `fast-deep` adds airbench96's residual third conv to each of
fast-large's blocks; docs/results.md has their figures.

BatchNorm and GELU are our own layers (`layers.py`), for speed on CPUs, and so are the convs'
filter gradients on small maps (`MatmulGradConv2D`).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from .augment import flip_translate
from .layers import FusedBatchNorm, MatmulGradConv2D, QuickGELU
from .muon import LinearDecay, Muon
from .recipes import FAST_BIAS_LR_PER_IMAGE, Recipe, recipe_defaults

WIDTHS = recipe_defaults("fast").options["widths"]  # channels of the three conv blocks (each recipe's: its row)
WHITEN_PATCH = 2  # side of the whitened patches, pixels
WHITEN_IMAGES = 5000  # training images used to estimate the patch covariance
WHITEN_EPS = 5e-4  # added to eigenvalues (of channel-standardised patches) before the inverse square root
WHITEN_BIAS_EPOCHS = 3  # the whitening layer's bias trains this long, then freezes (its kernel never trains)
BN_MOMENTUM = 0.6  # Keras convention: running stats keep 60% of their old value per step
BN_EPSILON = 1e-5
LABEL_SMOOTHING = recipe_defaults("fast").label_smoothing  # 0.2
PRECISE_BN_IMAGES = 4096  # training images used to re-estimate BatchNorm statistics each epoch
PRECISE_BN_BATCH = 512
# Optimisation (airbench94_muon). Muon's step size is per step, whatever the batch size; the
# SGD step sizes are per image of a mean loss (x the batch size gives the step).
MUON_LR = 0.24  # conv filters, per step
MUON_MOMENTUM = 0.6
SGD_MOMENTUM = 0.85  # Nesterov, for everything else
HEAD_LR_PER_IMAGE = 0.67  # the classifier (BatchNorm offsets: recipes.FAST_BIAS_LR_PER_IMAGE)
WEIGHT_DECAY_PER_IMAGE = 2e-6  # weight x this x batch size is subtracted per step, at full step size


def whitening_weights(pixels: np.ndarray, patch: int = WHITEN_PATCH, eps: float = WHITEN_EPS):
    """Conv kernel and bias (for 0-1 pixels) that map each patch onto its principal
    components, scaled to unit variance, with both signs (2 x patch*patch*3 filters).

    The covariance is that of per-channel standardised pixels (so `eps` means the same on
    any data); the standardisation is folded into the returned kernel and bias."""
    x = np.asarray(pixels[:WHITEN_IMAGES], np.float32) / 255.0
    channel_mean = x.mean(axis=(0, 1, 2))
    channel_std = x.std(axis=(0, 1, 2)) + 1e-6
    x = (x - channel_mean) / channel_std
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
    # conv((x - m) / s) = conv'(x) with kernel' = kernel / s and bias' = bias - sum(kernel' * m)
    kernel = kernel / channel_std[None, None, :, None]
    bias = bias - np.einsum("hwco,c->o", kernel, channel_mean)
    return kernel.astype(np.float32), bias.astype(np.float32)


def dirac_init(layer) -> None:
    """Make the first min(in, out) filters of a 3x3 conv identity maps, so each block
    starts close to passing its input through."""
    kernel = np.array(layer.kernel.numpy())
    n = min(kernel.shape[2], kernel.shape[3])
    kernel[:, :, :, :n] = 0
    centre_y, centre_x = kernel.shape[0] // 2, kernel.shape[1] // 2
    kernel[centre_y, centre_x, np.arange(n), np.arange(n)] = 1
    layer.kernel.assign(kernel)


def _conv_bn(x, width: int, pool: bool, residual=None):
    # PyTorch's default initialisation, U(+-1/sqrt(fan_in)), for the filters that are not identity maps
    x = MatmulGradConv2D(width, 3, padding="same", use_bias=False,
                         kernel_initializer=keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform"))(x)
    if pool:
        x = layers.MaxPooling2D(2)(x)
    x = FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False)(x)
    if residual is not None:
        x = layers.Add()([x, residual])
    return QuickGELU()(x)


def _block(x, width: int, depth: int):
    """A conv block: conv + pool, then conv; with `depth` 3, a third conv whose output (before
    its GELU) adds the block's first activation back (airbench96's block)."""
    x = first = _conv_bn(x, width, pool=True)
    x = _conv_bn(x, width, pool=False)
    if depth == 3:
        x = _conv_bn(x, width, pool=False, residual=first)
    return x


def fast_cnn(input_shape, num_classes: int, train_pixels: np.ndarray | None = None,
             widths: tuple[int, ...] = WIDTHS, depth: int = 2) -> keras.Model:
    """`depth`: convs per block, 2 (airbench94/95) or 3 (a residual third, airbench96)."""
    if depth not in (2, 3):
        raise ValueError(f"depth must be 2 or 3 convs per block, not {depth}")
    inputs = keras.Input(shape=input_shape)
    # The whitening runs in float32 whatever the precision: its weakest components are
    # differences of neighbouring pixels, scaled up ~50x; bfloat16's 8-bit mantissa on
    # the pixels would turn them into noise. (Its cost is ~0.1% of the model's.)
    x = layers.Rescaling(1.0 / 255, dtype="float32")(inputs)
    channels = WHITEN_PATCH * WHITEN_PATCH * input_shape[-1] * 2
    whiten = layers.Conv2D(channels, WHITEN_PATCH, padding="valid", name="whiten", dtype="float32")
    x = whiten(x)
    whiten.kernel.trainable = False  # fixed; its bias trains for the first epochs (see make_optimizer)
    if train_pixels is not None and len(train_pixels):
        whiten.set_weights(list(whitening_weights(train_pixels)))
    x = QuickGELU()(x)
    for width in widths:
        x = _block(x, width, depth)
    x = layers.GlobalMaxPooling2D()(x)
    # The classifier's weights have unit variance and its outputs are divided by its input width.
    unit_variance = keras.initializers.RandomUniform(-(3**0.5), 3**0.5)
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=unit_variance)(x)
    x = layers.Rescaling(1 / widths[-1])(x)
    outputs = layers.Activation("softmax", dtype="float32")(x)
    model = keras.Model(inputs, outputs, name="fast")
    for layer in model.layers:
        if isinstance(layer, layers.Conv2D) and layer.name != "whiten":
            dirac_init(layer)
    return model


def smoothed_crossentropy(y_true, y_pred):
    """Sparse categorical cross-entropy with label smoothing (Keras' sparse loss has none)."""
    one_hot = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), ops.shape(y_pred)[-1])
    return keras.losses.categorical_crossentropy(one_hot, y_pred, label_smoothing=LABEL_SMOOTHING)


class PreciseBatchNorm(keras.callbacks.Callback):
    """After the last step of each epoch, before Keras validates, re-estimate BatchNorm's
    running statistics with forward passes over a fixed sample of training images.

    With this recipe's high learning rate the running averages lag the fast-moving weights,
    and inference-mode accuracy trails training-mode accuracy by 10+ points mid-run;
    measured on CIFAR-10 after 5 of 14 epochs: 61.7% -> 70.4% validation accuracy."""

    def __init__(self, pixels: np.ndarray, steps_per_epoch: int):
        super().__init__()
        self.pixels = pixels[:PRECISE_BN_IMAGES]
        self.steps_per_epoch = steps_per_epoch

    @property
    def forward_images(self) -> int:  # images it passes through the model each epoch (training/budget.py)
        return len(self.pixels)

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.steps_per_epoch == 0:
            self.recompute(self.model, self.pixels)

    def refresh(self, model) -> None:
        """Re-estimate for other weights of the model (--ema's averaged weights)."""
        self.recompute(model, self.pixels)

    @staticmethod
    def recompute(model, pixels: np.ndarray) -> None:
        """Set every BatchNorm layer's statistics to the average over `pixels`' batches
        (momentum k/(k+1) on the k-th batch; the layers' own momentum is restored)."""
        norms = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
        momenta = [layer.momentum for layer in norms]
        try:
            for k, start in enumerate(range(0, len(pixels), PRECISE_BN_BATCH)):
                for layer in norms:
                    layer.momentum = k / (k + 1)
                model(pixels[start:start + PRECISE_BN_BATCH].astype("float32"), training=True)
        finally:
            for layer, momentum in zip(norms, momenta):
                layer.momentum = momentum


def make_optimizer(peak_lr: float, steps_per_epoch: int, epochs: int, backbone_lr: float = 1.0,
                   lr_scale: float = 1.0) -> keras.optimizers.Optimizer:
    """`peak_lr`: the BatchNorm offsets' step size (the others keep their ratio to it);
    `lr_scale`: its ratio to the recipe's default, which scales Muon's per-step size too.
    `backbone_lr` scales every step size but the classifier's (fine-tuning a model from --init)."""
    head_lr = peak_lr * HEAD_LR_PER_IMAGE / FAST_BIAS_LR_PER_IMAGE
    body_lr = peak_lr * backbone_lr
    return Muon(
        learning_rate=LinearDecay(steps_per_epoch * epochs), muon_lr=MUON_LR * lr_scale * backbone_lr,
        muon_momentum=MUON_MOMENTUM, sgd_momentum=SGD_MOMENTUM,
        lr_multipliers={"beta": body_lr, "bias": body_lr, "kernel": head_lr, "default": body_lr},
        weight_decay_l2={"beta": WEIGHT_DECAY_PER_IMAGE / FAST_BIAS_LR_PER_IMAGE,
                         "bias": WEIGHT_DECAY_PER_IMAGE / FAST_BIAS_LR_PER_IMAGE,
                         "kernel": WEIGHT_DECAY_PER_IMAGE / HEAD_LR_PER_IMAGE},
        early_stop_path="whiten/bias", early_stop_steps=steps_per_epoch * WHITEN_BIAS_EPOCHS)


def make_callbacks(steps_per_epoch: int, epochs: int, pixels: np.ndarray | None = None) -> list:
    return [PreciseBatchNorm(pixels, steps_per_epoch)] if pixels is not None and len(pixels) else []


def recipe(name: str) -> Recipe:
    """The fast recipe `name` at the widths of its row in `recipes.RECIPE_DEFAULTS`."""
    options = recipe_defaults(name).options
    widths, depth = options["widths"], options.get("depth", 2)
    return Recipe(
        build=lambda input_shape, num_classes, train_pixels=None: fast_cnn(input_shape, num_classes, train_pixels,
                                                                           widths=widths, depth=depth),
        make_optimizer=make_optimizer,
        loss=smoothed_crossentropy,
        augment=flip_translate,
        make_callbacks=make_callbacks,
        needs_data=True,
        # 8-bit whitening outputs cost 1-2% of top-1 agreement with the float model (97.8% on
        # CIFAR-10; 99.2% with the whitening in float32, for 0.1% of the FLOPs and 2 kB).
        float_layers=("whiten",),
        explain_layer=lambda layers: explain_layer(layers, depth),
    )


def explain_layer(layers: list, depth: int = 2) -> int:
    """Grad-CAM's layer: the activation at the end of the first conv block (half the input's
    side, 15x15 at 32 pixels). Deeper maps are too coarse to point at an object: on a square
    that alone tells the classes apart (tests/inference/test_explain.py), the heatmap's peak
    fell inside it on 100% of the images here, on 39-54% at the second block's end (7x7) and
    10-19% at the third's (3x3)."""
    return [i for i, layer in enumerate(layers) if isinstance(layer, QuickGELU)][depth]  # [0]: the whitening's
