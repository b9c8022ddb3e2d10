import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, precision_score, recall_score

from imgclf.evaluation.metrics import ConfusionMatrix, confusion_matrix, summarize


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_summary_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y_true = rng.integers(0, 5, 300)
    y_pred = np.where(rng.random(300) < 0.6, y_true, rng.integers(0, 5, 300))
    y_pred[y_pred == 4] = 3  # a class that is never predicted: zero-division path
    result = summarize(confusion_matrix(y_true, y_pred, 5), list("abcde"))
    assert result["accuracy"] == pytest.approx(accuracy_score(y_true, y_pred))
    for name, fn in (("f1", f1_score), ("precision", precision_score), ("recall", recall_score)):
        assert result[name] == pytest.approx(fn(y_true, y_pred, average="macro", zero_division=0))
        per_class = fn(y_true, y_pred, average=None, zero_division=0, labels=range(5))
        assert [c[name] for c in result["per_class"]] == pytest.approx(per_class)
    assert [c["support"] for c in result["per_class"]] == np.bincount(y_true, minlength=5).tolist()


def test_keras_metric_accumulates_the_confusion_matrix():
    metric = ConfusionMatrix(3)
    y_true = np.array([0, 1, 2, 2])
    probs = np.eye(3, dtype="float32")[[0, 2, 2, 1]]
    metric.update_state(y_true[:2], probs[:2])
    metric.update_state(y_true[2:], probs[2:])
    assert metric.matrix().tolist() == confusion_matrix(y_true, [0, 2, 2, 1], 3).tolist()
    metric.reset_state()
    assert metric.matrix().sum() == 0
