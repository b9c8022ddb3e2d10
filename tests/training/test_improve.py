"""Improving a model on one's own data: tracking (TensorBoard, MLflow), early stopping, the
learning-rate finder, augmentation and regularisation choices."""

from __future__ import annotations

import csv
import json
import socket

import keras
import numpy as np
import pytest

from imgclf import TrainConfig, lr_find, train
from imgclf.config import augment_value
from imgclf.errors import ImgclfError
from imgclf.run.folder import TENSORBOARD

from conftest import make_image_folder, run_main


def history_rows(run):
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("improve") / "images", per_class=20, size=(16, 16))


def tiny(colours, tmp_path, **values) -> TrainConfig:
    keras.backend.clear_session()
    return TrainConfig(data_dir=str(colours), image_size=16, calibrate="none", verbose=0,
                       out=str(tmp_path / values.pop("name", "run")), **values)


# ------------------------------------------------------------------------------------ tracking

def test_tensorboard_events_hold_every_history_column_and_the_confusion_matrix(trained_run):
    from tensorboard.backend.event_processing import event_accumulator
    from tensorboard.util import tensor_util

    events = event_accumulator.EventAccumulator(str(trained_run / TENSORBOARD),
                                                size_guidance={event_accumulator.TENSORS: 0})
    events.Reload()
    tags = set(events.Tags()["tensors"])
    rows = history_rows(trained_run)
    columns = [c for c in rows[0] if c != "epoch"]
    assert any(c.startswith("val_f1[") for c in columns) and "learning_rate" in columns
    assert set(columns) <= tags, sorted(set(columns) - tags)
    for column in columns:
        logged = {e.step: float(tensor_util.make_ndarray(e.tensor_proto)) for e in events.Tensors(column)}
        assert logged == pytest.approx({int(r["epoch"]): float(r[column]) for r in rows}, rel=1e-5), column
    image = events.Tensors("confusion_matrix")
    assert [e.step for e in image] == [1, 2]  # one picture per epoch (PNG-encoded, with its size)
    width, height = (int(v) for v in tensor_util.make_ndarray(image[-1].tensor_proto)[:2])
    assert width == height >= 256


@pytest.mark.slow
def test_mlflow_logs_a_run_that_stops_early_and_resumes_as_stopped(colours, tmp_path):
    """One seed run without augmentation, logged to MLflow in a temporary SQLite store, that
    stops early: min_delta larger than any loss, so no epoch after the first is an improvement
    and with patience 2 it stops after epoch 3 of 10 whatever it learns. Resumed, it trains no
    more and goes on logging to the same MLflow run."""
    from mlflow.tracking import MlflowClient

    from imgclf import resume

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    run = train(tiny(colours, tmp_path, model="seed", epochs=10, patience=2, min_delta=100.0, augment="none",
                     mlflow=uri))
    rows = history_rows(run)
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["early_stopping"] == {"patience": 2, "min_delta": 100.0, "stopped_after_epoch": 3,
                                         "epochs_run": 3}
    assert metrics["best_epoch"] == min(range(1, 4), key=lambda e: float(rows[e - 1]["val_loss"]))
    model = keras.saving.load_model(run / "best_model.keras", compile=False)
    assert not [layer for layer in model.layers if type(layer).__name__.startswith("Random")]  # --augment none

    client = MlflowClient(uri)
    logged = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert len(logged) == 1 and logged[0].info.status == "FINISHED"
    mlflow_run = logged[0]
    assert mlflow_run.data.params["model"] == "seed" and mlflow_run.data.params["patience"] == "2"
    assert json.loads((run / "mlflow.json").read_text())["run_id"] == mlflow_run.info.run_id
    for key, column in (("val_loss", "val_loss"), ("val_f1/red", "val_f1[red]"), ("learning_rate", "learning_rate")):
        steps = client.get_metric_history(mlflow_run.info.run_id, key)
        assert [(m.step, pytest.approx(m.value, rel=1e-6)) for m in steps] == [
            (int(r["epoch"]), float(r[column])) for r in rows], key
    artifacts = {a.path for a in client.list_artifacts(mlflow_run.info.run_id)}
    assert {"best_model.keras", "last_model.keras", "metrics.json", "report.html", "config.json",
            "history.csv", "loss.png"} <= artifacts

    keras.backend.clear_session()
    resume(run, verbose=0)
    assert [int(r["epoch"]) for r in history_rows(run)] == [1, 2, 3]  # resumed as stopped
    assert json.loads((run / "metrics.json").read_text())["early_stopping"]["stopped_after_epoch"] == 3
    again = client.search_runs([client.get_experiment_by_name("imgclf").experiment_id])
    assert [r.info.run_id for r in again] == [mlflow_run.info.run_id] and again[0].info.status == "FINISHED"


def test_unreachable_mlflow_server_fails_before_training(colours, tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = run_main("train", "--data-dir", str(colours), "--image-size", "16", "--out", str(tmp_path / "run"),
                      "--mlflow", f"http://127.0.0.1:{port}")
    assert result.returncode == 1 and "no MLflow tracking server answers there" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()  # nothing started


# ------------------------------------------------------------------------------ bad choices

@pytest.mark.parametrize("args, fragment", [
    (["--patience", "0"], "patience must be at least 1"),
    (["--augment", "recipe,sharpen"], "unknown augmentation 'sharpen'"),
    (["--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
    (["--ema", "1.5"], "ema must be a decay from 0 (none) to below 1"),
])
def test_bad_choices_are_one_line_errors_before_anything_is_written(colours, tmp_path, args, fragment):
    result = run_main("train", "--data-dir", str(colours), "--out", str(tmp_path / "run"), *args)
    assert result.returncode != 0 and fragment in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ lr-find

@pytest.mark.slow
def test_lr_find_suggests_a_step_size_that_trains_well(colours, tmp_path):
    """The seed recipe's Adam at 1e-3 learns these colours; the range test's suggestion lies
    within 10x of it, and a run at the suggestion learns them too."""
    keras.backend.clear_session()
    config = TrainConfig(data_dir=str(colours), image_size=16, model="seed", verbose=0)
    result = lr_find(config, tmp_path / "lr", steps=100)
    assert 1e-4 <= result.suggestion <= 1e-2, result.suggestion
    assert (tmp_path / "lr" / "lr_find.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert saved["suggestion"] == pytest.approx(result.suggestion) and saved["model"] == "seed"
    with open(tmp_path / "lr" / "lr_find.csv", newline="") as handle:
        smoothed = [float(r["smoothed_loss"]) for r in csv.DictReader(handle)]
    assert len(smoothed) == result.steps <= 100
    # the sweep went past the best step size: the loss turned up (or diverged) after its minimum
    assert smoothed[-1] > 2 * min(smoothed) and result.minimum > result.suggestion
    run = train(tiny(colours, tmp_path, model="seed", epochs=4, learning_rate=result.suggestion, patience=2))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["accuracy"] >= 0.9
    assert metrics["early_stopping"]["stopped_after_epoch"] is None  # a run that improves is not stopped


# ------------------------------------------------------------------------------ augmentation, regularisation

def test_augment_values():
    assert augment_value("light") == "recipe"
    assert augment_value("strong") == "recipe,randaugment,mixup,cutmix,erasing"
    assert augment_value("cutmix, recipe") == "recipe,cutmix"  # one order, whatever was typed
    assert augment_value("none") == "none"
    with pytest.raises(ImgclfError, match="unknown augmentation 'blur'"):
        augment_value("recipe,blur")


def test_mixing_gives_class_probabilities_and_only_the_pipeline_sees_it(colours):
    """MixUp/CutMix in the input pipeline: the training labels become probabilities that sum
    to 1, mixing two classes in some images; the images stay in 0-255."""
    import tensorflow as tf

    from imgclf.models.registry import get_recipe
    from imgclf.training.regularize import training_augment

    config = TrainConfig(model="fast-tiny", augment="strong", seed=3)
    augment, mix = training_augment(config, get_recipe("fast-tiny"), 3)
    images = tf.constant(np.random.default_rng(0).integers(0, 256, (16, 16, 16, 3)), tf.uint8)
    labels = tf.constant(np.arange(16) % 3, tf.int32)
    seed = tf.constant([3, 7], tf.int64)
    x = augment(images, seed, tf.range(16, dtype=tf.int64), tf.constant(0, tf.int64))
    x, y = mix(x, labels, seed)
    y = y.numpy()
    assert y.shape == (16, 3) and np.allclose(y.sum(axis=1), 1, atol=1e-5)
    assert (np.sort(y, axis=1)[:, -2] > 0.01).any()  # some images are mixes of two classes
    assert 0 <= float(tf.reduce_min(x)) and float(tf.reduce_max(x)) <= 255


@pytest.mark.slow
def test_strong_augmentation_smoothing_and_ema_train_and_save_no_training_only_layer(colours, tmp_path):
    run = train(tiny(colours, tmp_path, model="fast-tiny", epochs=2, augment="strong", label_smoothing=0.1,
                     weight_decay=1e-4, ema=0.5))
    config = json.loads((run / "config.json").read_text())
    assert (config["augment"], config["label_smoothing"], config["weight_decay"], config["ema"]) == (
        "recipe,randaugment,mixup,cutmix,erasing", 0.1, 1e-4, 0.5)
    model = keras.saving.load_model(run / "best_model.keras", compile=False)
    kinds = {type(layer).__name__ for layer in model.layers}
    assert not kinds & {"RandAugment", "MixUp", "CutMix", "RandomErasing"}
    rows = history_rows(run)
    assert len(rows) == 2 and all(np.isfinite(float(r["val_loss"])) for r in rows)
    assert "val_nll" in rows[0]  # the plain log-loss beside the smoothed loss


@pytest.mark.slow
def test_ema_weights_are_what_is_validated_and_saved(colours, tmp_path):
    """One step per epoch (a batch of the whole training split). Keras' average starts at the
    weights after the first step, and with a decay of 0.999 it stays within a fraction of a
    percent of them after three steps, where one step alone moves the weights by its whole
    size: the saved model is the first step's weights, and every epoch validates them."""
    from imgclf import create_model

    def distance(a, b):
        return float(np.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b))))

    first = train(tiny(colours, tmp_path, name="first", model="seed", epochs=1, batch_size=48))
    slow = train(tiny(colours, tmp_path, name="ema", model="seed", epochs=3, batch_size=48, ema=0.999))
    keras.backend.clear_session()
    keras.utils.set_random_seed(TrainConfig().seed)  # the runs' initial weights
    initial = create_model("seed", (16, 16, 3), 3).get_weights()
    step_one = keras.saving.load_model(first / "best_model.keras", compile=False).get_weights()
    averaged = keras.saving.load_model(slow / "best_model.keras", compile=False).get_weights()
    # `initial` is the runs' start: Adam's first step moves each weight by about its step size
    moved = np.concatenate([np.abs(a - b).ravel() for a, b in zip(step_one, initial)])
    assert 0.5e-3 < np.median(moved[moved > 0]) < 2e-3
    assert distance(averaged, step_one) < 0.02 * distance(step_one, initial)
    validated = float(history_rows(first)[0]["val_loss"])
    assert [float(r["val_loss"]) for r in history_rows(slow)] == pytest.approx([validated] * 3, rel=0.01)
