"""Calibrated probabilities (`evaluation/calibrate.py`, `imgclf calibrate`, training's last
step): temperature scaling fitted on held-out images, inside the model and its exports."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from imgclf import TrainConfig, train
from imgclf.data.decode import file_hash
from imgclf.evaluation.analysis import calibration
from imgclf.evaluation.calibrate import calibrate, fit_temperature, scale
from imgclf.export.verify import FLOAT_TOLERANCE
from imgclf.export.writers import export_model
from imgclf.inference.modelio import load_model, save_model, with_temperature
from imgclf.inference.predict import predict_probabilities
from imgclf.inference.runtimes import open_model
from imgclf.run.folder import split_images

from conftest import make_image_folder, run_main


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_fitted_temperature_undoes_logits_multiplied_by_five():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (4000, 10))
    truth = _softmax(logits)  # labels drawn from these probabilities: calibrated by construction
    labels = np.array([rng.choice(10, p=p) for p in truth])
    confident = _softmax(5 * logits)
    t = fit_temperature([(1.0, confident)], labels)
    assert t == pytest.approx(5, rel=0.1)
    calibrated = scale(confident, t)
    assert calibration(labels, calibrated)["ece"] * 3 <= calibration(labels, confident)["ece"]
    assert np.array_equal(calibrated.argmax(1), confident.argmax(1))


@pytest.fixture(scope="module")
def noisy_run(tmp_path_factory):
    """A seed model on colours with a quarter of the labels wrong: it cannot be sure of them."""
    root = tmp_path_factory.mktemp("noisy")
    data = make_image_folder(root / "images", per_class=100, size=(16, 16))
    rng = np.random.default_rng(1)
    names = sorted(p.name for p in data.iterdir())
    for path in sorted(data.glob("*/*")):
        if rng.random() < 0.25:
            target = data / rng.choice([n for n in names if n != path.parent.name]) / f"moved-{path.name}"
            shutil.move(path, target)
    return train(TrainConfig(data_dir=str(data), epochs=4, image_size=16, calibrate="none",
                             out=str(root / "run"), verbose=0))


@pytest.mark.slow
def test_an_overconfident_model_is_calibrated_and_so_are_its_exports(noisy_run):
    trained = load_model(noisy_run / "best_model.keras")
    assert trained.temperature == 1.0 and "calibration" not in trained.metadata  # --calibrate none
    # made over-confident on purpose: its logits multiplied by 5
    overconfident = noisy_run / "overconfident.keras"
    save_model(with_temperature(trained.model, 0.2), overconfident, trained.class_names, recipe="seed")
    out, calib = calibrate(overconfident)  # on the run's validation split
    assert out == noisy_run / "overconfident.calibrated.keras"
    assert calib.before["ece"] >= 3 * calib.after["ece"] and calib.before["ece"] > 0.1
    assert calib.after["nll"] < calib.before["nll"]
    # softened; the file said no temperature of its own, so the fitted one is the model's
    assert calib.fitted > 2 and calib.temperature == calib.fitted

    before, after = load_model(overconfident), load_model(out)
    val = split_images(noisy_run, after, "val")
    p_before, p_after = predict_probabilities(before, val.array), predict_probabilities(after, val.array)
    assert np.array_equal(p_before.argmax(1), p_after.argmax(1))  # every image: the same class
    assert calibration(val.labels, p_after)["ece"] == pytest.approx(calib.after["ece"], abs=1e-3)
    assert after.metadata["calibration"]["temperature"] == pytest.approx(calib.temperature)
    assert after.metadata["recipe"] == "seed"

    # every export of a calibrated model checks itself against it (within 1e-3 for float formats):
    # tests/export/test_export.py::test_every_format_matches_keras, on models training calibrated
    report = export_model(out, "onnx", verbose=False)
    assert report.max_abs_diff <= FLOAT_TOLERANCE and open_model(report.path).temperature == calib.temperature


def test_calibrate_command_writes_a_new_file_and_refuses_what_it_cannot_do(trained_run, tmp_path):
    model = trained_run / "best_model.keras"
    digest = file_hash(model)
    out = tmp_path / "calibrated.keras"
    result = run_main("calibrate", model, "--out", out)
    assert result.returncode == 0, result.stderr
    assert "calibrated: temperature" in result.stdout and "run's validation split" in result.stdout
    assert file_hash(model) == digest  # the input is never touched
    before, after = load_model(model), load_model(out)
    calib = after.metadata["calibration"]
    assert calib["source"] == "the run's validation split"
    # the model was calibrated by training already: the new factor is applied to its outputs
    assert calib["temperature"] == pytest.approx(before.temperature * calib["fitted"])
    pixels = np.random.default_rng(0).integers(0, 256, (8, 16, 16, 3)).astype(np.uint8)
    np.testing.assert_allclose(predict_probabilities(after, pixels),
                               scale(predict_probabilities(before, pixels), calib["fitted"]), atol=1e-5)

    def one_line_error(*args):
        result = run_main("calibrate", *args)
        assert result.returncode != 0 and result.stderr.count("\n") == 1, result.stderr
        return result.stderr

    assert "calibrate writes a new file" in one_line_error(model, "--out", model)
    assert "exists" in one_line_error(model, "--out", out)
    assert run_main("calibrate", model, "--out", out, "--overwrite").returncode == 0
    make_image_folder(tmp_path / "other", per_class=4, classes={"red": (200, 40, 40), "purple": (150, 0, 150)})
    assert "purple" in one_line_error(model, "--data-dir", tmp_path / "other", "--out", tmp_path / "x.keras")
    assert not (tmp_path / "x.keras").exists()
    assert "takes a .keras model" in one_line_error(tmp_path / "model.onnx")
    shutil.copy(model, tmp_path / "alone.keras")
    assert "--data-dir" in one_line_error(tmp_path / "alone.keras")


def test_evaluate_shows_the_figures_with_and_without_the_temperature(trained_run):
    config = json.loads((trained_run / "config.json").read_text())
    result = run_main("evaluate", trained_run / "best_model.keras", "--data-dir", config["data_dir"])
    assert result.returncode == 0, result.stderr
    metrics = json.loads((trained_run / "metrics.json").read_text())
    line = next(line for line in result.stdout.splitlines() if line.startswith("calibration:"))
    assert f"temperature {metrics['calibration']['temperature']:.4f}" in line and "->" in line


def test_with_test_time_augmentation_the_temperature_fits_the_averaged_views(trained_run):
    from imgclf.evaluation.calibrate import fit
    from imgclf.inference.predict import combine_views, image_views

    loaded = load_model(trained_run / "last_model.keras")  # not calibrated
    val = split_images(trained_run, loaded, "val")
    calib = fit(loaded, val, tta=True, source="test")
    assert calib.tta and len(calib.views) == 6  # the image, its mirror, and two shifted pairs
    assert calib.after["nll"] <= calib.before["nll"] + 1e-9
    # what was fitted is the NLL of the weighted average of the scaled views
    views = image_views(loaded, val, tta=True)
    expected = combine_views([(w, scale(p, calib.fitted)) for w, p in views])
    np.testing.assert_allclose(combine_views(calib.views), expected, atol=1e-6)
    assert calib.fitted == pytest.approx(fit_temperature(views, val.labels), rel=1e-6)


def test_a_model_without_a_foldable_head_gets_a_temperature_layer(tmp_path):
    import keras

    from imgclf.models.layers import Temperature

    inputs = keras.Input((4, 4, 3))
    logits = keras.layers.Dense(3)(keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
    model = keras.Model(inputs, keras.layers.Softmax()(logits))  # a Softmax layer: nothing to fold into
    pixels = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3)).astype(np.float32)
    calibrated = with_temperature(model, 2.0)
    assert isinstance(calibrated.layers[-1], Temperature)
    expected = scale(model.predict(pixels, verbose=0), 2.0)
    np.testing.assert_allclose(calibrated.predict(pixels, verbose=0), expected, atol=1e-6)
    again = with_temperature(calibrated, 1.5)  # a second temperature multiplies the first
    assert isinstance(again.layers[-1], Temperature) and len(again.layers) == len(calibrated.layers)
    save_model(again, tmp_path / "t.keras", ["a", "b", "c"])
    np.testing.assert_allclose(load_model(tmp_path / "t.keras").model.predict(pixels, verbose=0),
                               scale(model.predict(pixels, verbose=0), 3.0), atol=1e-6)
