"""The `fast` recipe: the best time-to-accuracy training we know for small images on CPUs.

Our Keras implementation of the ideas of Keller Jordan's airbench (2024), which reaches
94% on CIFAR-10 in ~10 epochs: a small VGG-like net (widths 64/256/256), a frozen
first layer that whitens 2x2 patches (computed from the training data), BatchNorm
with fast momentum and no scale, GELU, logits scaled by 1/9, label smoothing 0.2,
Nesterov SGD with coupled weight decay and 64x faster BatchNorm offsets, linear
warm-up then decay, identity (Dirac) initialisation of the conv filters, random flip
+ 2-pixel translation applied to whole batches in the input pipeline, and lookahead:
every few steps the weights are reset to their moving average.
Two layers are our own, for speed on CPUs: BatchNorm through TensorFlow's fused kernel and
GELU's sigmoid approximation with a hand-written gradient (1.25x more images/s together,
measured on the fast model, bfloat16, 2 cores). They are registered Keras layers: saved
models load with plain Keras once `imgclf` is imported.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import layers, ops

from .checkpoint import Stateful
from .models import Recipe, register
from .muon import LinearDecay, Muon, _path

WIDTHS = (64, 256, 256)  # channels of the three conv blocks
SMALL_WIDTHS = (64, 128, 128)  # `fast-small`: ~45% of the FLOPs per image
WHITEN_PATCH = 2  # side of the whitened patches, pixels
WHITEN_IMAGES = 5000  # training images used to estimate the patch covariance
WHITEN_EPS = 5e-4  # added to eigenvalues (of channel-standardised patches) before the inverse square root
WHITEN_BIAS_EPOCHS = 3  # the whitening layer's bias trains this long, then freezes (its kernel never trains)
BN_MOMENTUM = 0.6  # Keras convention: running stats keep 60% of their old value per step
BN_EPSILON = 1e-5
LOGIT_SCALE = 1 / 9  # temperature of the output layer
LABEL_SMOOTHING = 0.2
SGD_MOMENTUM = 0.85  # Nesterov
LR_PER_IMAGE = 0.001465  # peak step size per image in the batch (mean loss): lr = this x batch size
BIAS_LR_SCALE = 64.0  # BatchNorm offsets learn this much faster (same absolute weight decay)
WEIGHT_DECAY = 0.00133  # coupled (L2 gradient term), relative to the learning rate
WARMUP_FRACTION = 0.23  # of all steps: linear from WARMUP_START x peak up to the peak
WARMUP_START = 0.2
FINAL_LR_FRACTION = 0.07  # then linear down to this fraction of the peak at the last step
LOOKAHEAD_EVERY = 5  # steps (of BATCH_SIZE images) between lookahead updates (weights reset to their moving average)
LOOKAHEAD_DECAY = 0.95**5  # moving-average decay at the end of training; it ramps up as progress^3
TRANSLATE = 2  # maximum random shift, pixels (reflect padding)
# Flip: each image mirrored in alternate epochs (airbench's "alternating flip").
PRECISE_BN_IMAGES = 4096  # training images used to re-estimate BatchNorm statistics each epoch
PRECISE_BN_BATCH = 512
EPOCHS = 10
SMALL_EPOCHS = 6  # fits a 10-minute budget on 2 cores, loading and evaluation included
BATCH_SIZE = 1024


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


@keras.saving.register_keras_serializable(package="imgclf")
class FusedBatchNorm(layers.BatchNormalization):
    """Keras' BatchNormalization, computed by TensorFlow's fused kernel (oneDNN on CPUs) in
    the compute precision. Keras 3's own layer upcasts to float32 and runs moments and
    normalisation as separate ops, forward and backward: on the fast model in bfloat16 that
    is ~17% of a training step, the fused kernel ~5%. Same weights, same statistics (the
    batch variance for the running average is the unbiased one, a factor n/(n-1) with
    n >= 4,000 values per channel); other backends, masks or layouts use Keras' own code."""

    def call(self, inputs, training=None, mask=None):
        if keras.backend.backend() != "tensorflow" or mask is not None or len(inputs.shape) != 4 \
                or self.axis not in (-1, 3):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        offset = self.beta if self.center else tf.zeros_like(self.moving_mean)
        scale = self.gamma if self.scale else tf.ones_like(self.moving_mean)
        if training and self.trainable:
            outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, epsilon=self.epsilon, is_training=True)
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
                inputs, scale, offset, mean=self.moving_mean, variance=self.moving_variance,
                epsilon=self.epsilon, is_training=False)
        return ops.cast(outputs, self.compute_dtype)


GELU_SIGMOID_SCALE = 1.702  # gelu(x) ~ x * sigmoid(1.702 x): max error 0.02


def _quick_gelu_tf(x):
    import tensorflow as tf

    @tf.custom_gradient
    def quick_gelu(x):
        gate = tf.sigmoid(GELU_SIGMOID_SCALE * x)

        def grad(upstream):
            return upstream * gate * (1 + GELU_SIGMOID_SCALE * x * (1 - gate))
        return x * gate, grad
    return quick_gelu(x)


@keras.saving.register_keras_serializable(package="imgclf")
class QuickGELU(layers.Layer):
    """GELU's sigmoid approximation x * sigmoid(1.702 x). In TensorFlow, one sigmoid forward
    and a closed-form gradient: ~1.2x faster training steps than the exact (erf) GELU on the
    fast model, whose element-wise ops TensorFlow does not fuse on CPUs."""

    def call(self, inputs):
        if keras.backend.backend() == "tensorflow":
            return _quick_gelu_tf(inputs)
        return inputs * ops.sigmoid(GELU_SIGMOID_SCALE * inputs)

    def compute_output_shape(self, input_shape):
        return input_shape


TORCH_INIT = keras.initializers.VarianceScaling(1 / 3, "fan_in", "uniform")  # PyTorch's default: U(+-1/sqrt(fan_in))


def _conv_bn(x, width: int, pool: bool, torch_init: bool = False):
    x = layers.Conv2D(width, 3, padding="same", use_bias=False,
                      kernel_initializer=TORCH_INIT if torch_init else "glorot_uniform")(x)
    if pool:
        x = layers.MaxPooling2D(2)(x)
    x = FusedBatchNorm(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, scale=False)(x)
    return QuickGELU()(x)


def fast_cnn(input_shape, num_classes: int, train_pixels: np.ndarray | None = None,
             widths: tuple[int, ...] = WIDTHS, unit_head: bool = False) -> keras.Model:
    """`unit_head` (airbench94_muon): the classifier's weights have unit variance and its
    outputs are divided by its input width, and the conv filters that are not identity maps
    start as PyTorch's would; otherwise PyTorch's default classifier scaled by 1/9."""
    inputs = keras.Input(shape=input_shape)
    # The whitening runs in float32 whatever the precision: its weakest components are
    # differences of neighbouring pixels, scaled up ~50x; bfloat16's 8-bit mantissa on
    # the pixels would turn them into noise. (Its cost is ~0.1% of the model's.)
    x = layers.Rescaling(1.0 / 255, dtype="float32")(inputs)
    channels = WHITEN_PATCH * WHITEN_PATCH * input_shape[-1] * 2
    whiten = layers.Conv2D(channels, WHITEN_PATCH, padding="valid", name="whiten", dtype="float32")
    x = whiten(x)
    whiten.kernel.trainable = False  # fixed; its bias trains for the first epochs (FastSGD)
    if train_pixels is not None and len(train_pixels):
        whiten.set_weights(list(whitening_weights(train_pixels)))
    x = QuickGELU()(x)
    for width in widths:
        x = _conv_bn(x, width, pool=True, torch_init=unit_head)
        x = _conv_bn(x, width, pool=False, torch_init=unit_head)
    x = layers.GlobalMaxPooling2D()(x)
    if unit_head:
        initializer = keras.initializers.RandomUniform(-3 ** 0.5, 3 ** 0.5)
    else:  # PyTorch's default Linear initialisation, as in airbench94
        initializer = TORCH_INIT
    x = layers.Dense(num_classes, use_bias=False, kernel_initializer=initializer)(x)
    x = layers.Rescaling(1 / widths[-1] if unit_head else LOGIT_SCALE)(x)
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


class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from WARMUP_START x peak to the peak, then linear decay to
    FINAL_LR_FRACTION x peak at the last step."""

    def __init__(self, peak: float, total_steps: int):
        self.peak = peak
        self.total = max(1, total_steps)
        self.warmup = max(1, int(WARMUP_FRACTION * self.total))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = WARMUP_START + (1 - WARMUP_START) * step / self.warmup
        down = 1 - (1 - FINAL_LR_FRACTION) * (step - self.warmup) / max(1, self.total - self.warmup)
        return self.peak * ops.where(step < self.warmup, up, ops.maximum(down, FINAL_LR_FRACTION))

    def get_config(self):
        return {"peak": self.peak, "total_steps": self.total}


class FastSGD(keras.optimizers.SGD):
    """Nesterov SGD with coupled weight decay (added to the gradient, so momentum carries it),
    a larger step size for BatchNorm offsets, and the whitening layer's bias frozen after
    `whiten_bias_steps`. Training-only: saved models never hold it."""

    def __init__(self, weight_decay_l2: float = WEIGHT_DECAY, bias_lr_scale: float = BIAS_LR_SCALE,
                 whiten_bias_steps: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.weight_decay_l2 = weight_decay_l2
        self.bias_lr_scale = bias_lr_scale
        self.whiten_bias_steps = whiten_bias_steps

    def update_step(self, gradient, variable, learning_rate):
        scale = self.bias_lr_scale if _is_norm_offset(variable) else 1.0
        gradient = ops.add(ops.cast(gradient, variable.dtype), ops.multiply(variable, self.weight_decay_l2 / scale))
        learning_rate = ops.multiply(learning_rate, scale)
        if _path(variable).endswith("whiten/bias"):
            learning_rate = ops.where(self.iterations < self.whiten_bias_steps, learning_rate, 0.0)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "weight_decay_l2": self.weight_decay_l2,
                "bias_lr_scale": self.bias_lr_scale, "whiten_bias_steps": self.whiten_bias_steps}


def _is_norm_offset(variable) -> bool:
    return _path(variable).rsplit("/", 1)[-1] == "beta"


def make_optimizer(peak_lr: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    schedule = WarmupLinear(peak_lr, steps_per_epoch * epochs)
    return FastSGD(learning_rate=schedule, momentum=SGD_MOMENTUM, nesterov=True,
                   whiten_bias_steps=steps_per_epoch * WHITEN_BIAS_EPOCHS)


class Lookahead(keras.callbacks.Callback, Stateful):
    """Every LOOKAHEAD_EVERY steps: move a moving average of all float weights (BatchNorm
    statistics included) towards the current weights, then reset the weights to it. The
    average's decay grows as progress^3, so it only slows the end of training; the last
    step leaves the model at the average."""

    def __init__(self, total_steps: int):
        super().__init__()
        self.total = max(1, total_steps)
        self.step = 0
        self.average = None

    def on_train_begin(self, logs=None):
        self.variables = [v for v in self.model.weights if "float" in str(v.dtype)]
        if self.average is None:
            self.average = [np.array(v.numpy()) for v in self.variables]

    def on_train_batch_end(self, batch, logs=None):
        self.step += 1
        if self.step % LOOKAHEAD_EVERY == 0 or self.step == self.total:
            decay = 1.0 if self.step >= self.total else LOOKAHEAD_DECAY * (self.step / self.total) ** 3
            for average, variable in zip(self.average, self.variables):
                average += (1 - decay) * (variable.numpy() - average)
                variable.assign(average)

    def get_state(self):
        return {"step": self.step}, list(self.average or [])

    def set_state(self, info, arrays):
        self.step = int(info["step"])
        self.average = [np.array(a) for a in arrays] or None


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

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.steps_per_epoch == 0:
            self.recompute(self.model, self.pixels)

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


def make_callbacks(steps_per_epoch: int, epochs: int, pixels: np.ndarray | None = None) -> list:
    callbacks = [Lookahead(steps_per_epoch * epochs)]
    if pixels is not None and len(pixels):
        callbacks.append(PreciseBatchNorm(pixels, steps_per_epoch))
    return callbacks


def flip_translate(images, seed, index, epoch):
    """Alternating flip and a random shift of up to TRANSLATE pixels (reflect padding), on a
    whole batch. Each image is mirrored in every other epoch (which half of the epochs
    depends on a hash of its index): over two epochs every image is seen both ways.
    `seed`: 2-element tensor; stateless, so the same arguments give the same batch."""
    import tensorflow as tf

    y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    parity = tf.strings.to_hash_bucket_fast(tf.strings.as_string(index * 1_000_003 + seed[0]), 2)
    flip = tf.reshape(tf.math.floormod(parity + tf.cast(epoch, tf.int64), 2) == 1, (-1, 1, 1, 1))
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    padded = tf.pad(images, [[0, 0], [TRANSLATE, TRANSLATE], [TRANSLATE, TRANSLATE], [0, 0]], mode="REFLECT")
    dy = tf.random.stateless_uniform((batch, 1), y_seed, 0, 2 * TRANSLATE + 1, dtype=tf.int32)
    dx = tf.random.stateless_uniform((batch, 1), x_seed, 0, 2 * TRANSLATE + 1, dtype=tf.int32)
    rows = tf.gather(padded, dy + tf.range(height)[None, :], axis=1, batch_dims=1)
    return tf.gather(rows, dx + tf.range(width)[None, :], axis=2, batch_dims=1)


# The Muon recipe (airbench94_muon): per-image step sizes are for a mean loss, i.e. the
# reference's summed-loss step sizes x the batch size.
MUON_LR = 0.24  # conv kernels, per step
MUON_MOMENTUM = 0.6
MUON_BATCH_SIZE = 2000
MUON_EPOCHS = 8
MUON_BIAS_LR_PER_IMAGE = 0.053  # BatchNorm offsets and the whitening bias
MUON_HEAD_LR_PER_IMAGE = 0.67  # the classifier
MUON_WEIGHT_DECAY_PER_IMAGE = 2e-6  # weight x this x batch size is subtracted per step, at full step size


def make_muon_optimizer(peak_lr: float, steps_per_epoch: int, epochs: int) -> keras.optimizers.Optimizer:
    """`peak_lr`: the BatchNorm offsets' step size (the others keep their ratio to it)."""
    head_lr = peak_lr * MUON_HEAD_LR_PER_IMAGE / MUON_BIAS_LR_PER_IMAGE
    return Muon(
        learning_rate=LinearDecay(steps_per_epoch * epochs), muon_lr=MUON_LR, muon_momentum=MUON_MOMENTUM,
        sgd_momentum=SGD_MOMENTUM,
        lr_multipliers={"beta": peak_lr, "bias": peak_lr, "kernel": head_lr, "default": peak_lr},
        weight_decay_l2={"beta": MUON_WEIGHT_DECAY_PER_IMAGE / MUON_BIAS_LR_PER_IMAGE,
                         "bias": MUON_WEIGHT_DECAY_PER_IMAGE / MUON_BIAS_LR_PER_IMAGE,
                         "kernel": MUON_WEIGHT_DECAY_PER_IMAGE / MUON_HEAD_LR_PER_IMAGE},
        early_stop_path="whiten/bias", early_stop_steps=steps_per_epoch * WHITEN_BIAS_EPOCHS)


def make_muon_callbacks(steps_per_epoch: int, epochs: int, pixels: np.ndarray | None = None) -> list:
    return [PreciseBatchNorm(pixels, steps_per_epoch)] if pixels is not None and len(pixels) else []


def muon_recipe(widths: tuple[int, int, int], epochs: int, description: str) -> Recipe:
    return Recipe(
        build=lambda input_shape, num_classes, train_pixels=None: fast_cnn(input_shape, num_classes, train_pixels,
                                                                           widths=widths, unit_head=True),
        epochs=epochs,
        batch_size=MUON_BATCH_SIZE,
        learning_rate=MUON_BIAS_LR_PER_IMAGE * MUON_BATCH_SIZE,
        make_optimizer=make_muon_optimizer,
        loss=smoothed_crossentropy,
        augment=flip_translate,
        make_callbacks=make_muon_callbacks,
        needs_data=True,
        scale_lr_with_batch=True,
        description=description,
    )


def fast_recipe(widths: tuple[int, int, int], epochs: int, description: str) -> Recipe:
    return Recipe(
        build=lambda input_shape, num_classes, train_pixels=None: fast_cnn(input_shape, num_classes, train_pixels,
                                                                           widths=widths),
        epochs=epochs,
        batch_size=BATCH_SIZE,
        learning_rate=LR_PER_IMAGE * BATCH_SIZE,
        make_optimizer=make_optimizer,
        loss=smoothed_crossentropy,
        augment=flip_translate,
        make_callbacks=make_callbacks,
        needs_data=True,
        scale_lr_with_batch=True,
        description=description,
    )


register("fast", fast_recipe(WIDTHS, EPOCHS, "airbench-style recipe, widths 64/256/256: whitening, BatchNorm, "
                                            "GELU, label smoothing, Nesterov SGD, lookahead"))
register("fast-small", fast_recipe(SMALL_WIDTHS, SMALL_EPOCHS, "the fast recipe at widths 64/128/128: "
                                                               "about half the compute per image"))
register("fast-muon", muon_recipe(WIDTHS, MUON_EPOCHS, "airbench94_muon-style recipe, widths 64/256/256: "
                                                     "Muon for conv filters, Nesterov SGD for the rest"))
