import json
import shutil

import pytest

from imgclf import TrainConfig, train

from conftest import CIFAR10_TRAIN, read_csv

EXPECTED_FILES = [
    "config.json", "environment.json", "data.json", "split.csv", "history.csv", "per_class.csv",
    "confusion_matrix.csv", "metrics.json", "best_model.keras", "last_model.keras", "loss.png",
    "accuracy.png", "f1.png", "precision_recall.png", "confusion_matrix.png",
]


def test_run_folder_has_everything(trained_run):
    for name in EXPECTED_FILES:
        assert (trained_run / name).is_file(), name
    config = json.loads((trained_run / "config.json").read_text())
    assert config["epochs"] == 2 and config["model"] == "seed"
    env = json.loads((trained_run / "environment.json").read_text())
    assert env["tensorflow"].startswith("2.21") and env["seed"] == 42
    for name in ("loss.png", "confusion_matrix.png"):
        assert (trained_run / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_split_file_matches_a_stratified_80_20_split(trained_run):
    rows = read_csv(trained_run / "split.csv")
    val = [r for r in rows if r["subset"] == "val"]
    assert len(rows) == 48 and len(val) == 10  # sklearn rounds the test share up: ceil(0.2 * 48)
    assert sorted({r["class"] for r in val}) == ["blue", "green", "red"]


@pytest.mark.slow
def test_training_learns_a_separable_problem(tmp_path, image_folder):
    run = train(TrainConfig(data_dir=str(image_folder), epochs=6, image_size=16, batch_size=8,
                            out=str(tmp_path / "run"), verbose=0))
    assert json.loads((run / "metrics.json").read_text())["accuracy"] >= 0.9


@pytest.mark.slow
def test_several_steps_per_call_train_exactly_as_one(tmp_path, image_folder, monkeypatch):
    """The reference recipe runs up to 25 steps per graph call (a divisor of the epoch's
    steps) in phases long enough to pay for it; the batches, the updates and every logged
    number stay those of one step per call."""
    import keras

    from imgclf.data import pipeline

    class Record(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.steps_per_execution = self.model.steps_per_execution

    def run(name):
        record = Record()
        config = TrainConfig(data_dir=str(image_folder), epochs=3, image_size=16, batch_size=4,
                             deterministic=True, out=str(tmp_path / name), verbose=0)
        rows = read_csv(train(config, extra_callbacks=[record]) / "history.csv")
        return record.steps_per_execution, [{k: v for k, v in row.items() if "seconds" not in k} for row in rows]

    one, reference = run("one")  # 3 epochs of 9 steps: too short a phase for several per call
    monkeypatch.setattr(pipeline, "SEVERAL_STEPS_FROM", 27)  # as if it were long enough
    several, history = run("several")
    assert (several, one) == (9, 1)  # 38 training images at batch 4: 9 steps per epoch, in one call
    # exact by construction: one process, deterministic ops, the same updates in the same order
    assert history == reference
    from tensorflow.python.framework import config as tf_config

    assert not tf_config.is_op_determinism_enabled()  # for those runs only, not for the rest of the process


@pytest.mark.slow
def test_train_on_all_uses_every_labelled_image_and_reports_on_test(tmp_path):
    from conftest import make_image_folder

    make_image_folder(tmp_path / "d" / "train", per_class=8)
    make_image_folder(tmp_path / "d" / "test", per_class=4, seed=1)
    run = train(TrainConfig(data_dir=str(tmp_path / "d"), epochs=2, image_size=16, train_on_all=True,
                            out=str(tmp_path / "run"), verbose=0))
    data = json.loads((run / "data.json").read_text())
    assert data["train_images"] == 24 and data["val_images"] == 12 and data["val_is"] == "test"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["images"] == 12 and metrics["best_epoch"] is None
    assert (run / "best_model.keras").read_bytes() == (run / "last_model.keras").read_bytes()
    assert (run / "test_confusion_matrix.csv").is_file()
    # no validation split to fit a temperature on: said, and the model left as trained
    assert metrics["calibration"]["skipped"].startswith("not calibrated: --train-on-all")
    assert "not calibrated: --train-on-all" in (run / "report.html").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not CIFAR10_TRAIN.is_dir(), reason="needs ../shared/datasets/cifar10/train")
def test_seed_model_learns_real_cifar10(tmp_path):
    """~2,000 real CIFAR-10 images, a few epochs: far above chance (10%)."""
    run = train(TrainConfig(data_dir=str(CIFAR10_TRAIN), limit=2000, epochs=8, batch_size=32,
                            learning_rate=2e-3, out=str(tmp_path / "run"), verbose=0))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["images"] == 400
    assert metrics["accuracy"] >= 0.35, metrics


@pytest.mark.slow
def test_class_weight_balanced_is_kept_in_the_config(tmp_path, capsys):
    from imgclf.errors import DataError

    from conftest import make_image_folder

    data = make_image_folder(tmp_path / "images", per_class=4)
    for extra in range(20):  # red: 24 images, green and blue: 4 each
        shutil.copy(data / "red" / "0.jpg", data / "red" / f"x{extra}.jpg")
    run = train(TrainConfig(data_dir=str(data), epochs=1, image_size=16, class_weight="balanced",
                            out=str(tmp_path / "run"), verbose=0))
    weights = json.loads((run / "config.json").read_text())["class_weight"]
    train_counts = {"blue": 3, "green": 3, "red": 19}  # 80% of 4, 4, 24, stratified
    assert weights == pytest.approx({c: 25 / (3 * n) for c, n in train_counts.items()}, rel=1e-4)
    assert "identical to training images" in capsys.readouterr().err  # copies on both sides of the split
    with pytest.raises(DataError, match="not in the data: emu"):
        train(TrainConfig(data_dir=str(data), epochs=1, image_size=16, class_weight='{"emu": 2}',
                          out=str(tmp_path / "run2"), verbose=0))
