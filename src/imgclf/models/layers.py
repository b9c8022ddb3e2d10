"""Keras layers of our own, registered so that saved models load with `keras.saving.load_model`
once this module is imported (`imgclf.inference.modelio.load_model` imports it)."""

from __future__ import annotations

import keras
from keras import layers, ops


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


# Feature maps of at most this many pixels (10x10) get their filter gradient from matmuls
# (`MatmulGradConv2D`): at 7x7 and 3x3 those ran 1.4-2.7x faster than TensorFlow's kernel, at
# 15x15 0.75-1.3x and at 31x31 0.3-0.6x as fast (benchmarks/filter_gradient.py, AMD Zen 4, bfloat16).
SMALL_MAP_PIXELS = 100


def filter_gradient(inputs, out_grad, kernel_size):
    """The gradient of a stride-1 'same' convolution's filter, as kh*kw matmuls: for each tap
    (i, j), the input shifted by it (N*H*W x C_in, transposed) times the output gradient
    (N*H*W x C_out). What `Conv2DBackpropFilter` computes, in the same precision."""
    import tensorflow as tf

    kh, kw = kernel_size
    height, width, channels = inputs.shape[1], inputs.shape[2], inputs.shape[3]
    padded = tf.pad(inputs, [[0, 0], [kh // 2, kh // 2], [kw // 2, kw // 2], [0, 0]])
    grad = tf.reshape(out_grad, [-1, out_grad.shape[-1]])
    taps = [tf.matmul(tf.reshape(padded[:, i:i + height, j:j + width, :], [-1, channels]), grad, transpose_a=True)
            for i in range(kh) for j in range(kw)]
    return tf.reshape(tf.stack(taps), [kh, kw, channels, out_grad.shape[-1]])


def _conv_matmul_filter_grad_tf(inputs, kernel):
    import tensorflow as tf

    @tf.custom_gradient
    def conv(x, k):
        def grad(upstream):
            dx = tf.raw_ops.Conv2DBackpropInput(input_sizes=tf.shape(x), filter=k, out_backprop=upstream,
                                                strides=[1, 1, 1, 1], padding="SAME")
            return dx, filter_gradient(x, upstream, k.shape[:2])
        return tf.nn.conv2d(x, k, strides=1, padding="SAME"), grad
    return conv(inputs, tf.convert_to_tensor(kernel))


@keras.saving.register_keras_serializable(package="imgclf")
class MatmulGradConv2D(layers.Conv2D):
    """Keras' Conv2D whose filter gradient, on small feature maps, is computed by matmuls.

    In a fast-family training step half the time is the convolutions' filter gradient
    (TensorFlow's `Conv2DBackpropFilter`, a oneDNN kernel), and on the last blocks' 7x7 and 3x3
    maps that kernel runs at a third to a half of the speed of the forward convolution. There,
    in training, the gradient is instead `filter_gradient`'s kh*kw matmuls, which oneDNN runs
    near its matmul peak; the forward pass and the input gradient stay TensorFlow's own ops,
    and inference (so every export) is Keras' Conv2D exactly. Other backends, strides,
    dilations, groups or paddings, and larger maps, are Keras' own code."""

    def build(self, input_shape):
        super().build(input_shape)
        height, width = input_shape[1], input_shape[2]
        self.matmul_filter_gradient = (
            keras.backend.backend() == "tensorflow" and self.data_format == "channels_last"
            and self.padding == "same" and tuple(self.strides) == (1, 1) and tuple(self.dilation_rate) == (1, 1)
            and self.groups == 1 and all(k % 2 for k in self.kernel_size)
            and height is not None and width is not None and height * width <= SMALL_MAP_PIXELS)

    def call(self, inputs, training=None):
        if not (training and self.matmul_filter_gradient):
            return super().call(inputs)
        outputs = _conv_matmul_filter_grad_tf(inputs, self.kernel)
        if self.use_bias:
            outputs = ops.add(outputs, ops.reshape(self.bias, (1, 1, 1, self.filters)))
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package="imgclf")
class CaffePreprocess(layers.Layer):
    """`keras.applications.resnet50.preprocess_input` as a layer ("caffe" mode: RGB -> BGR,
    ImageNet channel means subtracted, no scaling), so a ResNet50 model takes raw 0-255 RGB
    like every imgclf model, and saves and loads without a Lambda layer."""

    def call(self, inputs):
        return keras.applications.resnet50.preprocess_input(inputs)


PROBABILITY_FLOOR = 1e-37  # probabilities below this count as it (float32's smallest normal is 1.2e-38)


@keras.saving.register_keras_serializable(package="imgclf")
class Temperature(layers.Layer):
    """Temperature scaling of probabilities: softmax(log(p) / T), which is softmax(z / T) for
    a model whose output p is softmax(z), so any softmax model can take it after the fact.
    T > 1 softens over-confident probabilities, T < 1 sharpens under-confident ones; the
    order of the classes never changes. `evaluation.calibrate` fits T; float32 always."""

    def __init__(self, temperature: float = 1.0, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        self.temperature = float(temperature)

    def call(self, inputs):
        log_p = ops.log(ops.maximum(ops.cast(inputs, "float32"), PROBABILITY_FLOOR))
        return ops.softmax(log_p / self.temperature, axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "temperature": self.temperature}
