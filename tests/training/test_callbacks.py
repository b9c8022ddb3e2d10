import json

import numpy as np
import pytest
from sklearn.metrics import f1_score, precision_score, recall_score

from imgclf import load_data, load_model, predict_probabilities
from imgclf.data.split import split_indices
from imgclf.run.folder import RunFolder

from conftest import read_csv


def test_history_has_every_metric_per_epoch(trained_run):
    rows = read_csv(trained_run / "history.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_f1", "val_precision", "val_recall",
                "val_f1[red]", "val_precision[blue]", "val_recall[green]"):
        assert all(0 <= float(r[key]) for r in rows), key


def test_per_epoch_metrics_equal_a_separate_prediction_pass(trained_run):
    """The one-pass validation metrics equal scikit-learn's on the saved last model."""
    config = RunFolder(trained_run).read_config()
    images = load_data(config).labelled
    _, val_idx = split_indices(images.labels, config.val_split, config.seed)
    val = images.subset(val_idx)
    last = load_model(trained_run / "last_model.keras")
    predicted = predict_probabilities(last, val.array).argmax(axis=1)
    row = read_csv(trained_run / "history.csv")[-1]
    for key, fn in (("val_f1", f1_score), ("val_precision", precision_score), ("val_recall", recall_score)):
        assert float(row[key]) == pytest.approx(fn(val.labels, predicted, average="macro", zero_division=0), abs=1e-5)
    assert float(row["val_accuracy"]) == pytest.approx(np.mean(predicted == val.labels), abs=1e-6)


def test_best_model_has_the_lowest_validation_loss(trained_run):
    rows = read_csv(trained_run / "history.csv")
    losses = [float(r["val_loss"]) for r in rows]
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert metrics["best_epoch"] == int(np.argmin(losses)) + 1
    # the kept model before its calibration is the best epoch's; the temperature lowers the loss further
    calibration = metrics["calibration"]
    assert calibration["before"]["nll"] == pytest.approx(min(losses), rel=1e-3)
    assert metrics["loss"] == pytest.approx(calibration["after"]["nll"], rel=1e-3)
    assert metrics["loss"] <= calibration["before"]["nll"] + 1e-6
