"""The graph an export is made of: an inference copy of a Keras model, float32 throughout
(mixed-precision models compute in bfloat16, which ONNX Runtime and LiteRT's CPU kernels do
not run), without the augmentation layers (the identity at inference, but they leave random
ops in a traced graph: ONNX Runtime refuses `StatelessRandomUniformV2`), and with each
BatchNormalization folded into the convolution before it."""

from __future__ import annotations

import numpy as np

# Layers that are the identity at inference; dropped from the exported graph.
AUGMENTATION_LAYERS = ("RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast",
                       "RandomBrightness")


def inference_copy(model, fold_batch_norm: bool = True):
    """The model in float32, without augmentation layers, with the same weights; and with each
    BatchNormalization folded into the Conv2D before it (`batch_norm_folds`), unless told not to."""
    import keras

    folds = batch_norm_folds(model) if fold_batch_norm else {}
    convs = {conv.name for conv in folds.values()}

    class PassThrough(keras.layers.Layer):  # takes the replaced layer's call arguments (mask, training)
        def call(self, inputs, mask=None, training=None):
            return inputs

    def clone(layer):
        if isinstance(layer, keras.Model):  # a nested backbone (keras.applications): float32 inside too
            return keras.models.clone_model(layer, clone_function=clone)
        if type(layer).__name__ in AUGMENTATION_LAYERS or layer.name in folds:
            return PassThrough(name=layer.name, dtype="float32")
        config = layer.get_config()
        if "dtype" in config:
            config["dtype"] = "float32"
        if layer.name in convs:
            config["use_bias"] = True
        return type(layer).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for layer in copy.layers:
        if layer.weights and layer.name not in convs:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    for norm, conv in folds.items():
        copy.get_layer(conv.name).set_weights(_folded_weights(conv, model.get_layer(norm)))
    return copy


def batch_norm_folds(model) -> dict:
    """BatchNormalization layer name -> the Conv2D it can be folded into: the conv feeds the
    norm directly or through a MaxPooling2D, and nothing else reads the conv's (or the pool's)
    output. Through a max-pool only when every channel's scale is positive, since
    max(s x + b) = s max(x) + b needs s > 0. The fold is exact up to float rounding; int8
    quantization then sees one conv with a bias instead of a conv, a pool and a separate
    multiply-add, which it quantizes with less error."""
    import keras

    folds = {}
    for layer in model.layers:
        if not isinstance(layer, keras.layers.BatchNormalization) or layer.axis not in (-1, 3) \
                or len(layer._inbound_nodes) != 1:
            continue
        parent = layer._inbound_nodes[0].parent_nodes[0].operation
        through_pool = isinstance(parent, keras.layers.MaxPooling2D)
        if through_pool:
            if len(parent._outbound_nodes) != 1 or (layer.scale and np.any(layer.gamma.numpy() <= 0)):
                continue
            parent = parent._inbound_nodes[0].parent_nodes[0].operation
        if isinstance(parent, keras.layers.Conv2D) and len(parent._outbound_nodes) == 1 \
                and parent.activation is keras.activations.linear:
            folds[layer.name] = parent
    return folds


def _folded_weights(conv, norm) -> list[np.ndarray]:
    weights = conv.get_weights()
    kernel = weights[0].astype(np.float64)
    bias = weights[1].astype(np.float64) if conv.use_bias else np.zeros(kernel.shape[-1])
    mean, variance = norm.moving_mean.numpy().astype(np.float64), norm.moving_variance.numpy().astype(np.float64)
    scale = 1 / np.sqrt(variance + norm.epsilon)
    if norm.scale:
        scale = scale * norm.gamma.numpy()
    offset = norm.beta.numpy().astype(np.float64) if norm.center else 0.0
    return [(kernel * scale).astype(np.float32), ((bias - mean) * scale + offset).astype(np.float32)]
