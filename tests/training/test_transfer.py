"""--init: a model trained earlier, any recipe, becomes the start of a run on new classes."""

from __future__ import annotations

import json

import keras
import numpy as np
import pytest

from imgclf import TrainConfig
from imgclf.errors import DataError
from imgclf.inference.modelio import load_model
from imgclf.models.recipes import resolve
from imgclf.training.transfer import init_recipe, transfer_model

from conftest import history, make_image_folder, resumed_history, train_with_copies

NEW_CLASSES = {"yellow": (210, 200, 40), "purple": (130, 40, 160)}


@pytest.mark.parametrize("recipe", ["fast-tiny", "seed"])
def test_backbone_weights_are_the_source_models_before_the_first_step(export_runs, recipe):
    source = load_model(export_runs[recipe] / "best_model.keras").model
    model = transfer_model(source, (16, 16, 3), 2)
    head = [layer for layer in source.layers if isinstance(layer, keras.layers.Dense)][-1]
    assert model.output_shape == (None, 2)
    compared = 0
    for old, new in zip(source.layers, model.layers):
        if old is head:
            assert new.get_weights()[0].shape[-1] == 2
            continue
        for a, b in zip(old.get_weights(), new.get_weights()):
            np.testing.assert_array_equal(a, b)
            compared += 1
    assert compared >= 4


def test_a_convolutional_source_takes_another_image_size(export_runs):
    source = load_model(export_runs["fast-tiny"] / "best_model.keras").model
    model = transfer_model(source, (40, 40, 3), 5)
    assert model.input_shape == (None, 40, 40, 3) and model(np.zeros((1, 40, 40, 3), np.float32)).shape == (1, 5)


def test_a_source_with_a_fixed_size_says_which_size(export_runs):
    source = load_model(export_runs["seed"] / "best_model.keras").model
    with pytest.raises(DataError, match="use --image-size 16"):
        transfer_model(source, (24, 24, 3), 2)


def test_training_from_init_on_new_classes_resumes_at_the_phase_change(export_runs, tmp_path):
    """Two epochs of the new classifier alone, then the whole model. Resumed after epoch 2, at
    the phase change (phase 1 done, phase 2 still to start), the run gives the uninterrupted
    history."""
    data = make_image_folder(tmp_path / "new", per_class=100, size=(16, 16), classes=NEW_CLASSES)
    run = train_with_copies(TrainConfig(data_dir=str(data), init=str(export_runs["fast-tiny"]), epochs=4,
                                        image_size=16, deterministic=True, out=str(tmp_path / "run"), verbose=0),
                            (2,), tmp_path)
    assert resumed_history(tmp_path / "after2") == history(run)
    assert json.loads((tmp_path / "after2" / "metrics.json").read_text())["resumed_after_epoch"] == 2
    config = json.loads((run / "config.json").read_text())
    assert config["model"] == "fast-tiny" and config["init"] == str(export_runs["fast-tiny"])
    assert config["backbone_lr"] == 0.3  # fine-tuning's default
    loaded = load_model(run / "best_model.keras")
    assert loaded.class_names == ["purple", "yellow"] and loaded.metadata["recipe"] == "fast-tiny"
    assert json.loads((run / "metrics.json").read_text())["accuracy"] > 0.8


def test_init_errors(tmp_path):
    with pytest.raises(DataError, match="no model at"):
        init_recipe(tmp_path)
    keras_file = tmp_path / "plain.keras"
    keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Flatten(), keras.layers.Dense(2)]).save(keras_file)
    with pytest.raises(DataError, match="not a model saved by imgclf"):
        init_recipe(keras_file)


def test_backbone_lr_scales_all_but_the_classifier():
    from imgclf.models.fast import MUON_LR, make_optimizer

    full, tuned = make_optimizer(53.0, 10, 8), make_optimizer(53.0, 10, 8, backbone_lr=0.1)
    assert tuned.muon_lr == pytest.approx(0.1 * MUON_LR) and full.muon_lr == MUON_LR
    assert tuned.lr_multipliers["kernel"] == full.lr_multipliers["kernel"]  # the classifier's
    assert tuned.lr_multipliers["beta"] == pytest.approx(0.1 * full.lr_multipliers["beta"])
    with pytest.raises(Exception, match="backbone_lr must be in"):
        TrainConfig(backbone_lr=0.0).validate()
    assert resolve(TrainConfig()).backbone_lr == 1.0 and resolve(TrainConfig(init="run")).backbone_lr == 0.3


def test_a_backbone_model_becomes_a_backbone_at_another_size(tmp_path):
    """A model of a keras.applications recipe nests the backbone as a model of its own, with
    its own input: --init rebuilds it for the new size and keeps every weight but the head's."""
    from imgclf.models.backbones import base_model
    from imgclf.models.registry import create_model

    source = create_model("mobilenetv3small", (32, 32, 3), 3, weights="none")
    model = transfer_model(source, (48, 64, 3), 5)
    assert model.input_shape == (None, 48, 64, 3) and model.output_shape == (None, 5)
    for a, b in zip(base_model(source).get_weights(), base_model(model).get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_init_trains_the_classifier_alone_first(export_runs):
    """--init's phase 1 (--freeze-epochs, 2 by default): only the new classifier trains; phase
    2: everything, or the top N layers with weights."""
    from imgclf.models.backbones import set_phase

    model = transfer_model(load_model(export_runs["fast-tiny"] / "best_model.keras").model, (16, 16, 3), 2)
    head = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)][-1]
    set_phase(model, 1)
    assert {id(v) for v in model.trainable_variables} == {id(v) for v in head.trainable_variables}
    set_phase(model, 2, "all")
    assert all(layer.trainable for layer in model.layers if layer.weights)
    weighted = [layer for layer in model.layers if layer.trainable_weights and layer is not head]
    set_phase(model, 2, "1")
    assert [layer for layer in model.layers if layer.trainable and layer.weights] == [weighted[-1], head]
    assert resolve(TrainConfig(init="x"), 100).freeze_epochs == 2
