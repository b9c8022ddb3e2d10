import numpy as np
import pytest

from imgclf.models.muon import LinearDecay, Muon, orthogonalize


def test_orthogonalize_flattens_the_spectrum_and_keeps_the_direction():
    rng = np.random.default_rng(0)
    # singular values from 10 down to 1
    u, _ = np.linalg.qr(rng.normal(size=(64, 64)))
    v, _ = np.linalg.qr(rng.normal(size=(576, 64)))
    g = (u * np.geomspace(10, 1, 64)) @ v.T
    for matrix in (g, g.T):  # wide and tall
        x = np.asarray(orthogonalize(matrix.astype("float32")))
        assert x.shape == matrix.shape
        singular = np.linalg.svd(x, compute_uv=False)
        # 3 quintic steps: not exactly 1, but a 10:1 spectrum ends within 0.5 .. 1.5
        assert singular.min() > 0.5 and singular.max() < 1.5
        polar = u @ v.T if matrix is g else (u @ v.T).T
        cosine = np.sum(x * polar) / (np.linalg.norm(x) * np.linalg.norm(polar))
        before = np.sum(matrix * polar) / (np.linalg.norm(matrix) * np.linalg.norm(polar))
        assert cosine > 0.97 and before < 0.9  # much closer to U V^T than g itself


def test_linear_decay_goes_from_one_to_zero():
    schedule = LinearDecay(10)
    assert [float(schedule(s)) for s in (0, 5, 10, 20)] == pytest.approx([1.0, 0.5, 0.0, 0.0])


def _model():
    import keras

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(scale=False, name="norm")(x)
    x = keras.layers.Flatten()(x)
    outputs = keras.layers.Dense(3, use_bias=False, name="head")(x)
    return keras.Model(inputs, outputs)


def test_muon_step_on_kernels_and_sgd_step_on_the_rest():
    import tensorflow as tf

    model = _model()
    optimizer = Muon(learning_rate=0.5, muon_lr=0.2, muon_momentum=0.0, sgd_momentum=0.0,
                     lr_multipliers={"beta": 3.0, "kernel": 0.1}, weight_decay_l2={"kernel": 0.01})
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(8, 6, 6, 2)), tf.float32)
    y = tf.constant(rng.normal(size=(8, 3)), tf.float32)
    variables = model.trainable_variables
    before = {v.path: v.numpy().copy() for v in variables}
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    gradients = tape.gradient(loss, variables)
    grads = dict(zip([v.path for v in variables], gradients))
    optimizer.apply_gradients(zip(gradients, variables))
    after = {v.path: v.numpy() for v in variables}

    # conv kernel: renormalised to norm sqrt(out channels), then an orthogonalized step of 0.5 x 0.2
    kernel = before["conv/kernel"]
    expected = kernel * 2 / np.linalg.norm(kernel) - 0.1 * np.asarray(
        orthogonalize(grads["conv/kernel"].numpy().reshape(-1, 4))).reshape(kernel.shape)
    np.testing.assert_allclose(after["conv/kernel"], expected, rtol=1e-4, atol=1e-5)
    # BatchNorm offset: SGD at 0.5 x 3, no weight decay
    np.testing.assert_allclose(after["norm/beta"], before["norm/beta"] - 1.5 * grads["norm/beta"].numpy(),
                               rtol=1e-5, atol=1e-6)
    # 2-D kernel (the classifier): SGD at 0.5 x 0.1 with coupled weight decay
    head = before["head/kernel"]
    np.testing.assert_allclose(after["head/kernel"], head - 0.05 * (grads["head/kernel"].numpy() + 0.01 * head),
                               rtol=1e-5, atol=1e-6)


def test_early_stopped_variables_follow_their_own_schedule_then_freeze():
    import keras

    model = _model()
    model.compile(optimizer=Muon(learning_rate=1.0, lr_multipliers={"default": 0.1},
                                 early_stop_path="norm/beta", early_stop_steps=2),
                  loss="mse")
    beta = model.get_layer("norm").beta
    seen = [beta.numpy().copy()]
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda batch, logs: seen.append(beta.numpy().copy()))
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(40, 6, 6, 2)), rng.normal(size=(40, 3)), batch_size=8, epochs=1, verbose=0,
              shuffle=False, callbacks=[record])
    assert not np.allclose(seen[0], seen[1])  # step 1: full step size
    assert not np.allclose(seen[1], seen[2])  # step 2: half
    np.testing.assert_array_equal(seen[2], seen[5])  # from step 3 on: 0
