"""Selective prediction: `--min-confidence P` answers "uncertain" exactly for the images whose
top probability is below P, in the Python API, the CLI and the service; and refuses a P outside
(0, 1) with one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgclf import ImgclfError
from imgclf.inference.predict import UNCERTAIN, predict_files
from imgclf.inference.runtimes import open_model
from imgclf.serve.app import create_app

from conftest import run_main


@pytest.fixture(scope="module")
def unsure(trained_run, tmp_path_factory):
    """(the model, 24 images of random colours, a threshold between their confidences): the
    run's last model (not calibrated), whose confidence on colours between its classes varies."""
    folder = tmp_path_factory.mktemp("colours")
    rng = np.random.default_rng(7)
    paths = []
    for i in range(24):
        pixels = np.clip(rng.integers(0, 256, 3) + rng.normal(0, 10, (16, 16, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:02d}.png")
        paths.append(str(folder / f"{i:02d}.png"))
    loaded = open_model(trained_run / "last_model.keras")
    confidence = np.sort([p.confidence for p in predict_files(loaded, paths)[0]])
    gaps = np.diff(confidence)
    middle = slice(6, 18)  # a threshold with images on both sides, in the widest gap there
    i = middle.start + int(np.argmax(gaps[middle]))
    assert gaps[i] > 1e-4
    return loaded, paths, float((confidence[i] + confidence[i + 1]) / 2)


def test_uncertain_exactly_below_the_threshold_in_the_api_the_cli_and_the_service(unsure, tmp_path):
    loaded, paths, threshold = unsure
    plain = {p.name: p for p in predict_files(loaded, paths)[0]}
    expected = {name: p.confidence < threshold for name, p in plain.items()}
    assert 0 < sum(expected.values()) < len(paths)

    api = predict_files(loaded, paths, min_confidence=threshold)[0]
    assert {p.name: p.uncertain for p in api} == expected
    assert all(p.answer == (UNCERTAIN if p.uncertain else p.label) for p in api)
    assert all(p.label == plain[p.name].label for p in api)  # the top class is still given

    out = tmp_path / "p.json"
    result = run_main("predict", loaded.path, *paths, "--min-confidence", repr(threshold), "--output", out)
    assert result.returncode == 0, result.stderr
    rows = json.loads(out.read_text())
    assert {row["file"]: row["uncertain"] for row in rows} == expected
    assert all((row["class"] == UNCERTAIN) == row["uncertain"] and row["top"][0]["class"] == plain[row["file"]].label
               for row in rows)
    assert f"{sum(expected.values())} of {len(paths)} images uncertain" in result.stdout

    with TestClient(create_app(loaded, min_confidence=threshold)) as client:
        files = [("files", (path, Path(path).read_bytes(), "image/png")) for path in paths]
        answer = client.post("/predict", files=files, data={"top_k": "2"})
        assert client.get("/metadata").json()["min_confidence"] == threshold
    assert answer.status_code == 200
    served = answer.json()["predictions"]
    assert {p["file"]: p["uncertain"] for p in served} == expected
    assert all((p["label"] == UNCERTAIN) == p["uncertain"] and len(p["top"]) == 2 for p in served)


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "nan", "abc"])
def test_a_threshold_outside_zero_to_one_is_one_line(trained_run, value):
    model = trained_run / "best_model.keras"
    for command in (["predict", model, model], ["evaluate", model], ["serve", model]):
        result = run_main(*command, "--min-confidence", value)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (command, result.stderr)
        assert "min_confidence must be a probability between 0 and 1" in result.stderr
    if value not in ("abc",):
        with pytest.raises(ImgclfError, match="between 0 and 1"):
            create_app(model, min_confidence=float(value))
        with pytest.raises(ImgclfError, match="between 0 and 1"):
            predict_files(open_model(model), [str(model)], min_confidence=float(value))


def test_evaluate_prints_the_threshold_for_a_target_accuracy(trained_run):
    from imgclf.data.sources import load_data
    from imgclf.evaluation.analysis import threshold_for
    from imgclf.inference.predict import image_probabilities
    from imgclf.run.folder import RunFolder

    config = RunFolder(trained_run).read_config()
    loaded = open_model(trained_run / "last_model.keras")
    images = load_data(config.replace(verbose=0)).labelled
    expected = threshold_for(images.labels, image_probabilities(loaded, images), 0.9)
    result = run_main("evaluate", loaded.path, "--data-dir", config.data_dir, "--target-accuracy", "0.9",
                      "--min-confidence", "0.5")
    assert result.returncode == 0, result.stderr
    line = next(line for line in result.stdout.splitlines() if line.startswith("target accuracy"))
    if expected is None:
        assert "no confidence threshold reaches it" in line
    else:
        assert f"--min-confidence {expected['threshold']:.6g} answers {expected['coverage']:.1%}" in line
    assert any(line.startswith("min confidence 0.5:") for line in result.stdout.splitlines())
    bad = run_main("evaluate", loaded.path, "--target-accuracy", "1.5")
    assert bad.returncode == 2 and "target accuracy must be above 0 and at most 1" in bad.stderr
