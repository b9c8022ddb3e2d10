import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from imgclf import ModelFileError, load_model, save_model
from imgclf.models.registry import create_model


def test_saved_model_carries_class_names_and_input_size(tmp_path):
    model = create_model("seed", (24, 24, 3), 3)
    save_model(model, tmp_path / "m.keras", ["cat", "dög", "emu"], model_name="seed")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.class_names == ["cat", "dög", "emu"] and loaded.image_size == (24, 24)
    assert not list(tmp_path.glob(".*"))  # no temporary files left behind


def test_saves_of_one_model_build_its_uncompiled_copy_once_per_configuration(tmp_path, monkeypatch):
    """A training saves every epoch: the uncompiled copy that is written is built once, each
    file still gets the weights of its own save, and a changed configuration (layers frozen
    or unfrozen) builds a new copy, so the file records it."""
    model = create_model("seed", (16, 16, 3), 3)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    built = []
    from_config = type(model).from_config
    monkeypatch.setattr(type(model), "from_config", classmethod(
        lambda cls, config, **kw: built.append(1) or from_config.__func__(cls, config, **kw)))
    first = model.get_weights()
    second = [w + 1 for w in first]
    save_model(model, tmp_path / "a.keras", ["a", "b", "c"])
    save_model(model, tmp_path / "b.keras", ["a", "b", "c"], weights=second)
    model.set_weights(second)
    save_model(model, tmp_path / "c.keras", ["a", "b", "c"])
    assert len(built) == 1
    dense = next(layer for layer in model.layers if type(layer).__name__ == "Dense")
    dense.trainable = False
    save_model(model, tmp_path / "d.keras", ["a", "b", "c"])
    assert len(built) == 2
    for name, expected in (("a", first), ("b", second), ("c", second), ("d", second)):
        saved = load_model(tmp_path / f"{name}.keras").model
        assert all(np.array_equal(w, e) for w, e in zip(saved.get_weights(), expected, strict=True)), name
        assert saved.get_layer(dense.name).trainable == (name != "d"), name


def test_saved_model_loads_with_plain_keras_without_imgclf(trained_run):
    code = (
        "import sys, keras, numpy as np\n"
        f"m = keras.models.load_model({str(trained_run / 'best_model.keras')!r})\n"
        "p = m.predict(np.full((1, 16, 16, 3), 200, 'float32'), verbose=0)\n"
        "assert 'imgclf' not in sys.modules\n"
        "print(p.shape)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "(1, 3)" in out.stdout


@pytest.mark.parametrize("content", [None, b"", b"plain text", b"PK\x03\x04broken zip"])
def test_not_a_model_is_a_clear_error(tmp_path, content):
    path = tmp_path / "model.keras"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ModelFileError):
        load_model(path)


def test_lambda_model_is_refused_unless_unsafe(tmp_path):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    save_model(keras.Model(inputs, outputs), tmp_path / "lambda.keras", ["a", "b"])
    with pytest.raises(ModelFileError, match="refusing to load"):
        load_model(tmp_path / "lambda.keras")
    loaded = load_model(tmp_path / "lambda.keras", unsafe=True)
    assert loaded.class_names == ["a", "b"]
    assert loaded.model.predict(np.zeros((1, 8, 8, 3)), verbose=0).shape == (1, 2)


def test_cli_refuses_lambda_model_unless_unsafe(tmp_path):
    from PIL import Image

    from conftest import run_cli, run_main

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Lambda(lambda t: t * 2.0)(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Flatten()(x))
    save_model(keras.Model(inputs, outputs), tmp_path / "lambda.keras", ["a", "b"])
    Image.new("RGB", (8, 8), (10, 200, 30)).save(tmp_path / "x.png")
    # a new process: the refusal is the one line it prints, no native chatter before it
    refused = run_cli("predict", tmp_path / "lambda.keras", tmp_path / "x.png")
    assert refused.returncode != 0 and "refusing to load" in refused.stderr and "--unsafe" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    allowed = run_main("predict", tmp_path / "lambda.keras", tmp_path / "x.png", "--unsafe")  # per call: no global
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    assert "x.png" in allowed.stdout


@pytest.mark.parametrize("name", ["pipe.keras", "pipe.onnx", "pipe.tflite"])
def test_a_named_pipe_is_not_opened_as_a_model(tmp_path, name):
    from imgclf.inference.runtimes import open_model

    os.mkfifo(tmp_path / name)  # opening it for reading would block until a writer came
    with pytest.raises(ModelFileError, match="not a regular file"):
        open_model(tmp_path / name)
    with pytest.raises(ModelFileError, match="not a regular file"):
        load_model(tmp_path / name)
