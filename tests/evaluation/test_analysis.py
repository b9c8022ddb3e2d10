"""Every figure of the error analysis equals scikit-learn's (or a direct computation) on the
same predictions."""

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix as sk_confusion
from sklearn.metrics import log_loss, precision_recall_fscore_support, top_k_accuracy_score

from imgclf.evaluation.analysis import analyse, calibration, most_confused, top_k_accuracy, weighted_averages
from imgclf.evaluation.metrics import confusion_matrix, summarize


def predictions(n=500, classes=7, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(0, 1.5, (n, classes))
    logits[np.arange(n), labels] += rng.normal(1.5, 1, n)  # better than chance, not perfect
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probs.astype(np.float32)


@pytest.mark.parametrize("k", [1, 2, 3, 5, 6])
def test_top_k_matches_scikit_learn(k):
    labels, probs = predictions()
    assert top_k_accuracy(labels, probs, k) == pytest.approx(top_k_accuracy_score(labels, probs, k=k, labels=range(7)))


def test_weighted_and_macro_averages_match_scikit_learn():
    labels, probs = predictions(classes=5, seed=1)
    predicted = probs.argmax(axis=1)
    summary = summarize(confusion_matrix(labels, predicted, 5), list("abcde"))
    for average in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(labels, predicted, average=average, zero_division=0)
        ours = summary if average == "macro" else weighted_averages(summary["per_class"])
        assert (ours["precision"], ours["recall"], ours["f1"]) == pytest.approx((p, r, f))


def test_most_confused_are_the_largest_off_diagonal_cells():
    labels, probs = predictions(seed=2)
    matrix = sk_confusion(labels, probs.argmax(axis=1), labels=range(7))
    pairs = most_confused(matrix, list("abcdefg"), n=5)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    assert [p["images"] for p in pairs] == sorted(off.ravel(), reverse=True)[:5]
    first = pairs[0]
    assert off["abcdefg".index(first["true"]), "abcdefg".index(first["predicted"])] == first["images"]


def test_expected_calibration_error_against_a_direct_computation():
    labels, probs = predictions(n=2000, seed=3)
    confidence = probs.max(axis=1).astype(np.float64)
    correct = probs.argmax(axis=1) == labels
    expected = 0.0
    for low in np.linspace(0, 1, 16)[:-1]:
        high = low + 1 / 15
        members = (confidence > low) & (confidence <= high + 1e-12)
        if members.any():
            expected += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    result = calibration(labels, probs, bins=15)
    assert result["ece"] == pytest.approx(expected, abs=1e-9)
    assert sum(b["images"] for b in result["bins"]) == 2000
    perfect = np.eye(4, dtype=np.float32)[[0, 1, 2, 3]]
    assert calibration(np.arange(4), perfect)["ece"] == pytest.approx(0.0)


def test_misclassified_rows_and_losses_match_log_loss():
    labels, probs = predictions(seed=4)
    names = [f"img{i}.png" for i in range(len(labels))]
    matrix = confusion_matrix(labels, probs.argmax(axis=1), 7)
    result = analyse(labels, probs, matrix, summarize(matrix, list("abcdefg"))["per_class"], list("abcdefg"), names)
    wrong = result["misclassified"]
    assert len(wrong) == int((probs.argmax(axis=1) != labels).sum())
    assert [r["loss"] for r in wrong] == sorted((r["loss"] for r in wrong), reverse=True)
    first = wrong[0]
    i = first["index"]
    assert first["item"] == names[i] and first["true"] == "abcdefg"[labels[i]] and first["predicted"] != first["true"]
    assert first["loss"] == pytest.approx(log_loss([labels[i]], probs[i:i + 1], labels=range(7)), rel=1e-5)
    assert result["top5_accuracy"] == pytest.approx(top_k_accuracy_score(labels, probs, k=5))


def test_top_k_of_all_classes_is_one():
    labels, probs = predictions(classes=3)
    assert top_k_accuracy(labels, probs, 3) == 1.0 and top_k_accuracy(labels, probs, 10) == 1.0


def test_coverage_curve_and_the_threshold_for_a_target_accuracy():
    from imgclf.evaluation.analysis import coverage_curve, selective, selective_summary, threshold_for

    # top probabilities 0.9 (right), 0.8 (wrong), 0.8 (right), 0.6 (right), 0.55 (wrong)
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.8, 0.2], [0.6, 0.4], [0.45, 0.55]])
    labels = np.array([0, 0, 0, 0, 0])
    curve = coverage_curve(labels, probs)
    np.testing.assert_allclose(curve["threshold"], [0.9, 0.8, 0.6, 0.55])  # ties answered together
    np.testing.assert_allclose(curve["coverage"], [0.2, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(curve["accuracy"], [1.0, 2 / 3, 3 / 4, 3 / 5])
    assert threshold_for(labels, probs, 0.75) == {"target_accuracy": 0.75, "threshold": 0.6, "coverage": 0.8,
                                                   "accuracy": 0.75}
    assert threshold_for(labels, probs, 1.0)["coverage"] == 0.2
    assert threshold_for(labels, np.array([[0.1, 0.9]]), 0.5) is None  # the surest answer is wrong
    assert selective(labels, probs, 0.7) == {"threshold": 0.7, "coverage": 0.6, "answered": 3,
                                             "accuracy": pytest.approx(2 / 3)}
    assert selective(labels, probs, 0.95)["accuracy"] is None
    summary = selective_summary(labels, probs)
    assert summary["curve"][-1]["coverage"] == 1.0 and len(summary["thresholds"]) == 7
