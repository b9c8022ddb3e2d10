import keras
import numpy as np

from imgclf.inference.modelio import LoadedModel
from imgclf.inference.predict import expand_paths, predict_probabilities, top_predictions, write_predictions


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


def test_expand_paths_takes_files_folders_and_globs(tmp_path):
    import pytest

    from imgclf import DataError

    for name in ("a/1.png", "a/sub/2.png", "b.jpg", "c.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"")
    found = expand_paths([str(tmp_path / "a"), str(tmp_path / "*.png"), str(tmp_path / "b.jpg")])
    assert [p[len(str(tmp_path)) + 1:] for p in found] == ["a/1.png", "a/sub/2.png", "c.png", "b.jpg"]
    with pytest.raises(DataError, match="no such file"):
        expand_paths([str(tmp_path / "missing.png")])
    with pytest.raises(DataError, match="no files match"):
        expand_paths([str(tmp_path / "*.gif")])


def test_top_predictions_and_the_predictions_file(tmp_path):
    import csv
    import json

    probs = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    predictions = top_predictions(probs, ["a", "b", "c"], ["x.png", "y.png"], top_k=2)
    assert [(p.label, p.confidence) for p in predictions] == [("b", 0.7), ("a", 0.5)]
    assert predictions[0].top[1] == ("c", 0.2)
    write_predictions(tmp_path / "p.csv", predictions)
    with open(tmp_path / "p.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[1] == {"file": "y.png", "class": "a", "confidence": "0.500000",
                       "class_2": "c", "confidence_2": "0.300000"}
    write_predictions(tmp_path / "p.json", predictions)
    assert json.loads((tmp_path / "p.json").read_text())[0]["top"][1] == {"class": "c", "probability": 0.2}
