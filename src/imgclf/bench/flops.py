"""Counting a model's arithmetic, to turn images/s into achieved GFLOP/s.

Only convolutions and dense layers are counted (everything else is a rounding error for
CNNs); one multiply-add is two FLOPs; a training step costs about three forward passes
(forward, gradient with respect to activations, gradient with respect to weights).
"""

from __future__ import annotations

import time

import keras
import numpy as np

TRAIN_TO_FORWARD = 3  # FLOPs of one training step per FLOP of a forward pass


def forward_flops(model: keras.Model) -> int:
    """FLOPs of one forward pass of one image."""
    total = 0
    for layer in _leaf_layers(model):
        if isinstance(layer, keras.layers.Conv2D):
            _, height, width, out_channels = layer.output.shape
            kh, kw = layer.kernel_size
            in_channels = layer.input.shape[-1]
            total += 2 * height * width * kh * kw * in_channels * out_channels
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.input.shape[1:])) * layer.units
    return int(total)


def training_flops_per_image(model: keras.Model) -> int:
    return TRAIN_TO_FORWARD * forward_flops(model)


def _leaf_layers(model):
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _leaf_layers(layer)
        else:
            yield layer


def measure_peak_gflops(dtype: str = "float32", size: int = 2048, seconds: float = 2.0) -> float:
    """Sustained GFLOP/s of a large matrix product: the practical peak of this machine."""
    import tensorflow as tf

    a = tf.random.uniform((size, size), dtype="float32")
    a = tf.cast(a, dtype)
    matmul = tf.function(lambda x: tf.matmul(x, x))
    matmul(a).numpy()  # warm up
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        matmul(a).numpy()
        runs += 1
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e9
