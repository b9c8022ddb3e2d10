import keras
import numpy as np

from imgclf.modelio import LoadedModel
from imgclf.predict import predict_probabilities


def _position_sensitive_model(size=6):
    # Softmax over a fixed random projection of the pixels: every shift and mirror changes it.
    keras.utils.set_random_seed(3)
    inputs = keras.Input((size, size, 3))
    x = keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(4, activation="softmax")(x)
    return LoadedModel(keras.Model(inputs, outputs), ["a", "b", "c", "d"], (size, size), {})


def test_tta_averages_mirror_and_one_pixel_shifts():
    loaded = _position_sensitive_model()
    pixels = np.random.default_rng(0).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)

    def probs(x):
        return loaded.model.predict(x.astype("float32"), verbose=0).astype(np.float64)

    padded = np.pad(pixels, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    up_left, down_right = padded[:, :6, :6], padded[:, 2:, 2:]
    expected = 0.25 * (probs(pixels) + probs(pixels[:, :, ::-1]))
    for view in (up_left, down_right):
        expected += 0.125 * (probs(view) + probs(view[:, :, ::-1]))
    got = predict_probabilities(loaded, pixels, tta=True)
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert not np.allclose(got, predict_probabilities(loaded, pixels))
    np.testing.assert_allclose(got.sum(axis=1), 1, atol=1e-5)
