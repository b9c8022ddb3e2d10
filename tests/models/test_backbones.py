"""Pretrained backbones from keras.applications: every one builds, trains, saves, loads and
predicts at a size that is not square (square sizes: test_registry builds every recipe and
predicts); --weights takes a file; offline ImageNet fails in one line; the two fine-tuning
phases freeze what they should."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from imgclf.errors import DataError
from imgclf.inference.modelio import load_model, save_model
from imgclf.models import backbones
from imgclf.models.recipes import BACKBONES, RECIPE_DEFAULTS, pick_recipe
from imgclf.models.registry import create_model, get_recipe
from imgclf.training.precision import compute_precision

from conftest import make_image_folder, write_backbone_weights

SIZE = (32, 48)  # the smallest side they take, and not square: height and width must not be swapped


def images(n, size, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *size, 3)).astype(np.float32)


@pytest.mark.slow  # a training step of each backbone (~20 s for convnexttiny)
@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_trains_saves_loads_predicts(name, tmp_path):
    size = SIZE
    keras.utils.set_random_seed(0)
    model = create_model(name, (*size, 3), 3, weights="none")
    assert model.input_shape == (None, *size, 3) and model.output_shape == (None, 3)
    recipe = get_recipe(name)
    # eagerly: tracing the training step of a 100-270-layer network takes ~15 s; the compiled
    # step is what the training tests run
    model.compile(optimizer=recipe.make_optimizer(1e-3, 1, 1), loss=recipe.loss, run_eagerly=True)
    x, y = images(4, size), np.array([0, 1, 2, 0])
    before = [w.copy() for w in model.get_weights()]
    model.fit(x, y, batch_size=4, epochs=1, verbose=0)
    assert any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights())), "a step changed nothing"
    save_model(model, tmp_path / "m.keras", ["a", "b", "c"], model_name=name, resize="crop")
    loaded = load_model(tmp_path / "m.keras")  # Keras' safe mode: no code runs on loading
    assert loaded.image_size == size and loaded.class_names == ["a", "b", "c"] and loaded.resize == "crop"
    probs = loaded.predict(x)
    assert probs.shape == (4, 3) and np.allclose(probs.sum(axis=1), 1, atol=1e-4)
    np.testing.assert_allclose(probs, keras.ops.convert_to_numpy(model(x, training=False)), atol=1e-4)


def test_resnet50_takes_raw_rgb_and_preprocesses_inside():
    model = create_model("resnet50", (32, 32, 3), 2, weights="none")
    layer = model.get_layer("caffe_preprocess")
    x = images(2, (32, 32))
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(x)),
                               keras.applications.resnet50.preprocess_input(x.copy()), atol=1e-4)


def test_weights_file_gives_the_source_backbone(tmp_path):
    """--weights PATH: a weights file of the backbone (written here) is what the new model
    starts from: its backbone computes what the source computed, and so do its predictions
    once the classifier is the source's too."""
    keras.utils.set_random_seed(3)
    source = create_model("mobilenetv3small", (48, 48, 3), 3, weights="none")
    source_base = backbones.base_model(source)
    # BatchNorm statistics that are not the initial ones, so a fresh model would differ
    for layer in source_base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(np.random.default_rng(1).normal(0, 0.1, layer.moving_mean.shape))
    path = tmp_path / "backbone.weights.h5"
    source_base.save_weights(path)
    model = create_model("mobilenetv3small", (48, 48, 3), 3, weights=str(path))
    for a, b in zip(source_base.get_weights(), backbones.base_model(model).get_weights()):
        np.testing.assert_array_equal(a, b)
    model.get_layer("classifier").set_weights(source.get_layer("classifier").get_weights())
    x = images(6, (48, 48), seed=2)
    np.testing.assert_allclose(model(x, training=False), source(x, training=False), atol=1e-5)
    fresh = create_model("mobilenetv3small", (48, 48, 3), 3, weights="none")
    assert not np.allclose(backbones.base_model(fresh)(x), source_base(x), atol=1e-3)


def test_a_wrong_weights_file_is_one_clear_error(tmp_path):
    other = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(32, 32, 3))
    path = tmp_path / "other.weights.h5"
    other.save_weights(path)
    with pytest.raises(DataError, match="cannot load the weights file .*include_top=False"):
        create_model("efficientnetv2b0", (32, 32, 3), 3, weights=str(path))


@pytest.mark.slow  # a new process (KERAS_HOME is read when Keras is imported)
def test_offline_imagenet_fails_fast_with_one_line(tmp_path):
    """No network (a proxy that refuses, so this holds on machines with internet too) and an
    empty Keras cache: one line naming --weights PATH and the cache folder, non-zero exit."""
    data = make_image_folder(tmp_path / "images", per_class=4)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_HOME": str(tmp_path / "keras"),
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    result = subprocess.run([sys.executable, "-m", "imgclf.cli", "train", "--data-dir", str(data), "--model",
                             "mobilenetv3small", "--weights", "imagenet", "--out", str(tmp_path / "run")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("imgclf: error")]
    assert len(errors) == 1, result.stderr[-2000:]
    assert "--weights PATH" in errors[0] and str(tmp_path / "keras" / "models") in errors[0]
    assert RECIPE_DEFAULTS["mobilenetv3small"].weights_file in errors[0]


def trainable_names(model):
    return {v.path for v in model.trainable_variables}


def test_phases_freeze_the_backbone_then_unfreeze_the_top_blocks(tmp_path):
    path = tmp_path / "w.weights.h5"
    backbones.base_model(create_model("mobilenetv3small", (32, 32, 3), 3, weights="none")).save_weights(path)
    model = create_model("mobilenetv3small", (32, 32, 3), 3, weights=str(path))
    base = backbones.base_model(model)
    backbones.set_phase(model, 1)
    assert {n.split("/")[0] for n in trainable_names(model)} == {"classifier"}
    backbones.set_phase(model, 2, "all")
    assert len(model.trainable_variables) == len(base.trainable_variables) + 2
    names = backbones.blocks(model)
    assert len(names) == 11  # MobileNetV3Small's inverted-residual blocks
    backbones.set_phase(model, 2, "2")
    unfrozen = trainable_names(model)
    assert any(names[-1] in n for n in unfrozen) and any(names[-2] in n for n in unfrozen)
    assert not any(names[-3] in n for n in unfrozen) and not any("expanded_conv_/" in n for n in unfrozen)
    assert any(n.startswith("conv_1") or "/conv_1/" in n for n in unfrozen)  # the layers above the blocks
    assert "classifier/kernel" in {n.split("/", 1)[-1] if n.startswith("classifier") else n for n in unfrozen} \
        or any(n.startswith("classifier") for n in unfrozen)
    backbones.set_phase(model, 2, "0")
    assert {n.split("/")[0] for n in trainable_names(model)} == {"classifier"}


def test_photo_augmentation_is_stateless_and_keeps_shape_and_range():
    import tensorflow as tf

    x = tf.constant(images(5, (24, 40)).astype(np.uint8))
    seed = tf.constant([7, 3], tf.int64)
    a = backbones.photo_augment(x, seed, tf.range(5, dtype=tf.int64), 0).numpy()
    b = backbones.photo_augment(x, seed, tf.range(5, dtype=tf.int64), 0).numpy()
    c = backbones.photo_augment(x, seed + 1, tf.range(5, dtype=tf.int64), 0).numpy()
    assert a.shape == (5, 24, 40, 3) and a.min() >= 0 and a.max() <= 255
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_auto_picks_from_data_size_image_size_and_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    assert pick_recipe(40_000, (32, 32), None)[0] == "fast"  # CIFAR-like: fast from scratch
    name, why = pick_recipe(360, (96, 96), None)
    assert name == "fast" and "no ImageNet weights" in why  # nothing downloaded yet
    (tmp_path / "keras" / "models").mkdir(parents=True)
    (tmp_path / "keras" / "models" / RECIPE_DEFAULTS["efficientnetv2b0"].weights_file).write_bytes(b"x")
    name, why = pick_recipe(360, (96, 96), None)
    assert name == "efficientnetv2b0" and str(tmp_path / "keras" / "models") in why
    assert pick_recipe(360, (96, 96), "none")[0] == "fast"
    assert pick_recipe(360, (96, 96), str(tmp_path / "x.h5"))[0] == "mobilenetv3large"


@pytest.mark.slow  # converting a 100-layer network to ONNX
def test_a_backbone_model_exports_and_matches_keras(tmp_path):
    """The export's inference copy goes inside the nested backbone too (float32 throughout,
    augmentation dropped): ONNX Runtime gives Keras' answers on 210 images."""
    from imgclf.export.writers import export_model

    keras.utils.set_random_seed(0)
    weights = write_backbone_weights(tmp_path / "w.weights.h5")
    with compute_precision("bfloat16"):  # as trained on CPUs with bfloat16
        model = create_model("mobilenetv3small", (32, 32, 3), 3, weights=str(weights))
    save_model(model, tmp_path / "m.keras", ["red", "green", "blue"], model_name="mobilenetv3small")
    data = make_image_folder(tmp_path / "check", per_class=70, size=(32, 32))
    report = export_model(tmp_path / "m.keras", "onnx", check_data=data, verbose=False)
    assert report.images == 210 and report.agreement == 1.0 and report.max_abs_diff <= 1e-3
