import numpy as np

from imgclf.models.layers import FusedBatchNorm, QuickGELU
from imgclf.training.precision import compute_precision


def test_fused_batchnorm_matches_keras_batchnorm():
    import keras

    x = np.random.default_rng(0).normal(1.0, 3.0, (8, 6, 6, 5)).astype("float32")
    fused = FusedBatchNorm(momentum=0.6, scale=False)
    stock = keras.layers.BatchNormalization(momentum=0.6, scale=False)
    for layer in (fused, stock):
        layer.build(x.shape)
        layer.beta.assign(np.arange(5, dtype="float32"))
    assert np.allclose(fused(x, training=True), stock(x, training=True), atol=1e-5)
    assert np.allclose(fused.moving_mean.numpy(), stock.moving_mean.numpy(), atol=1e-6)
    # the fused kernel's running variance is the unbiased one: n/(n-1), n = 8*6*6
    n = 8 * 6 * 6
    assert np.allclose(fused.moving_variance.numpy() - 0.6, (stock.moving_variance.numpy() - 0.6) * n / (n - 1),
                       rtol=1e-4)
    stock.moving_variance.assign(fused.moving_variance)
    assert np.allclose(fused(x), stock(x), atol=1e-5)  # inference: the running statistics
    with compute_precision("bfloat16"):
        half = FusedBatchNorm()
        out = half(x.astype("float32"), training=True)
    assert half.compute_dtype == "bfloat16" and out.dtype == "bfloat16"
    assert np.allclose(np.asarray(out, "float32").mean(axis=(0, 1, 2)), 0, atol=0.02)


def test_quick_gelu_value_and_gradient():
    import tensorflow as tf

    x = tf.constant(np.linspace(-6, 6, 241), tf.float32)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        ours = QuickGELU()(x)
        reference = x * tf.sigmoid(1.702 * x)
    # Element-wise float32 ops on |x| <= 6 (no reductions): a few units in the last place at most.
    ulp = 4 * np.finfo(np.float32).eps
    np.testing.assert_allclose(ours, reference, rtol=ulp, atol=ulp)
    np.testing.assert_allclose(tape.gradient(ours, x), tape.gradient(reference, x), rtol=ulp, atol=ulp)
    assert np.abs(ours - tf.nn.gelu(x, approximate=False)).max() < 0.025  # GELU, approximately
