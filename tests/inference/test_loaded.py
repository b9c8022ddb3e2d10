"""Predicting with and serving an `.onnx` or `.tflite` model loads neither TensorFlow nor Keras
(`inference.loaded`): the Python API, the service and the CLI, each in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_image_folder

EXPORTS = {"onnx": ".onnx", "litert": ".tflite"}
IMAGE_SIZE = 16  # pixels: small enough that both exports take a few seconds


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> dict:
    """An untrained tiny model saved as .keras and exported to ONNX and LiteRT (no training:
    what is checked is which modules load, and that every runtime gives Keras' answer)."""
    import keras

    from imgclf.export.writers import export_model
    from imgclf.inference.modelio import save_model

    root = tmp_path_factory.mktemp("loaded")
    images = make_image_folder(root / "images", per_class=4, size=(IMAGE_SIZE, IMAGE_SIZE))
    keras.utils.set_random_seed(0)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(keras.layers.Rescaling(1 / 255)(inputs))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    model_path = root / "model.keras"
    save_model(keras.Model(inputs, outputs), model_path, ["blue", "green", "red"])
    paths = {fmt: export_model(model_path, fmt, root / f"model{suffix}", check_data=images, verbose=False).path
             for fmt, suffix in EXPORTS.items()}
    return {"keras": model_path, **paths, "images": images}


CHILD = """
import io, json, sys
import numpy as np
from fastapi.testclient import TestClient
from PIL import Image

import imgclf.serve.app as app
from imgclf.cli import main
from imgclf.inference.predict import predict_files
from imgclf.inference.runtimes import open_model

model, images = sys.argv[1], sys.argv[2]
predictions, _ = predict_files(open_model(model), [images], top_k=3)
buffer = io.BytesIO()
Image.fromarray(np.full((20, 24, 3), (200, 40, 40), np.uint8)).save(buffer, "PNG")
with TestClient(app.create_app(model)) as client:
    answer = client.post("/predict", files={"files": ("red.png", buffer.getvalue(), "image/png")})
    assert answer.status_code == 200, answer.text
    assert client.get("/metadata").json()["format"] in ("onnx", "litert")
assert main(["predict", model, images]) == 0
app.serve = lambda *args, **kwargs: None  # cmd_serve up to the point where it would listen
assert main(["serve", model]) == 0
loaded = [name for name in ("tensorflow", "keras") if name in sys.modules]
print(json.dumps({"loaded": loaded, "files": [p.name for p in predictions],
                  "top": [[[c, s] for c, s in p.top] for p in predictions]}))
"""


@pytest.mark.parametrize("fmt", EXPORTS)
def test_an_export_predicts_and_serves_without_tensorflow_or_keras(exports, fmt):
    from imgclf.inference.predict import predict_files
    from imgclf.inference.runtimes import open_model

    child = subprocess.run([sys.executable, "-c", CHILD, str(exports[fmt]), str(exports["images"])],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 0, child.stderr[-3000:]
    found = json.loads(child.stdout.strip().splitlines()[-1])
    assert found["loaded"] == []
    # the same answers as the .keras model it came from, decoded and batched the Keras way
    want, _ = predict_files(open_model(exports["keras"]), [str(exports["images"])], top_k=3)
    assert found["files"] == [p.name for p in want]
    for (got_top, expected) in zip(found["top"], want):
        assert [c for c, _ in got_top] == [c for c, _ in expected.top] or \
            abs(got_top[0][1] - got_top[1][1]) < 1e-3  # a near tie may order either way
        np.testing.assert_allclose(sorted(s for _, s in got_top), sorted(s for _, s in expected.top), atol=1e-3)


def test_opening_an_export_needs_no_tensorflow_the_rest_does(tmp_path):
    from imgclf.inference.runtimes import needs_tensorflow

    (tmp_path / "folder.onnx").mkdir()  # a folder is a SavedModel or nothing
    assert not needs_tensorflow("model.onnx") and not needs_tensorflow(Path("m.TFLITE"))
    assert needs_tensorflow("model.keras") and needs_tensorflow(tmp_path / "folder.onnx")


def test_without_tensorflow_a_keras_model_is_a_one_line_error(exports):
    blocked = ("import sys\nsys.modules['tensorflow'] = sys.modules['keras'] = None  # as if not installed\n"
               "from imgclf.cli import main\nsys.exit(main(sys.argv[1:]))")
    child = subprocess.run([sys.executable, "-c", blocked, "predict", str(exports["keras"]), str(exports["images"])],
                           capture_output=True, text=True, timeout=120)
    assert child.returncode == 1
    assert child.stderr.strip().splitlines() == [
        "imgclf: error: predict needs tensorflow, which is not installed (a serving-only install runs .onnx and "
        ".tflite files; `pip install .` installs everything)"]


def test_the_serving_requirements_are_pyprojects_pins():
    tomllib = pytest.importorskip("tomllib")
    repo = Path(__file__).resolve().parents[2]
    pins = {line.split("#")[0].strip() for line in tomllib.loads((repo / "pyproject.toml").read_text())
            ["project"]["dependencies"]}
    serving = [line.strip() for line in (repo / "requirements-serve.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert serving and set(serving) <= pins, set(serving) - pins
    assert not any(name in line for line in serving for name in ("tensorflow", "keras", "scikit-learn"))
