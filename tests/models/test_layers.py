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


def test_matmul_grad_conv_gives_keras_values_and_gradients():
    """On small maps, in training, the filter gradient comes from matmuls (`filter_gradient`):
    the same values and gradients as Keras' Conv2D (float32 sums of ~150 terms in another order,
    whose order depends on the CPU's kernels: to 1e-5 of the largest value). Elsewhere the layer
    is Keras' Conv2D."""
    import keras
    import tensorflow as tf

    from imgclf.models.layers import MatmulGradConv2D

    rng = np.random.default_rng(0)
    cases = [((3, 7, 7, 5), 3, {}, True), ((2, 6, 6, 4), 5, {"use_bias": True}, True),
             ((2, 15, 15, 4), 3, {}, False), ((2, 8, 8, 4), 3, {"strides": 2}, False)]
    for shape, kernel, options, small in cases:
        x = tf.constant(rng.normal(size=shape).astype("float32"))
        options = {"padding": "same", "use_bias": False, "bias_initializer": "random_normal", **options}
        ours, stock = MatmulGradConv2D(6, kernel, **options), keras.layers.Conv2D(6, kernel, **options)
        for layer in (ours, stock):
            layer.build(x.shape)
        ours.set_weights(stock.get_weights())
        assert ours.matmul_filter_gradient is small
        results = []
        for layer in (ours, stock):
            with tf.GradientTape() as tape:
                tape.watch(x)
                y = layer(x, training=True)
                loss = tf.reduce_sum(y * tf.cos(y))  # an upstream gradient that is not all ones
            results.append([y, *tape.gradient(loss, [x, *layer.trainable_variables])])
        for a, b in zip(*results):
            scale = float(np.abs(b).max())
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * scale)
        assert not np.allclose(results[0][2], 0)  # the filter gradient is not trivially zero
        np.testing.assert_allclose(ours(x), stock(x), rtol=1e-6, atol=1e-6)  # inference: Keras' own convolution


def test_matmul_grad_conv_saves_and_loads_with_its_path(tmp_path):
    import keras

    from imgclf.models.layers import MatmulGradConv2D

    inputs = keras.Input((14, 14, 3))
    small = MatmulGradConv2D(4, 3, padding="same")(keras.layers.MaxPooling2D(2)(inputs))
    model = keras.Model(inputs, keras.layers.GlobalMaxPooling2D()(MatmulGradConv2D(4, 3, padding="same")(small)))
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    convs = [layer for layer in loaded.layers if isinstance(layer, MatmulGradConv2D)]
    assert [conv.matmul_filter_gradient for conv in convs] == [True, True]
    x = np.random.default_rng(1).normal(size=(2, 14, 14, 3)).astype("float32")
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6, atol=1e-6)
