import numpy as np
import pytest

from imgclf.evaluation.plots import bench_figure, confusion_figure, history_figures


def test_history_figures_mark_the_best_epoch():
    history = {"epoch": np.arange(1, 5.0), "loss": np.ones(4), "val_loss": np.array([3, 1, 2, np.nan]),
               "accuracy": np.full(4, 0.5), "val_accuracy": np.full(4, 0.6), "val_f1": np.full(4, 0.6),
               "val_precision": np.full(4, 0.6), "val_recall": np.full(4, 0.6)}
    figures = history_figures(history)
    assert sorted(figures) == ["accuracy.png", "f1.png", "loss.png", "precision_recall.png"]
    legend = [t.get_text() for t in figures["f1.png"].axes[0].get_legend().get_texts()]
    assert "best val loss (epoch 2)" in legend


@pytest.mark.parametrize("n", [2, 10, 100])
def test_confusion_figure_has_every_class_and_numbers_only_when_readable(n):
    matrix = np.random.default_rng(0).integers(0, 9, (n, n))
    figure = confusion_figure(matrix, [f"class {i}" for i in range(n)], title="validation")
    if n > 20:  # one panel, row-normalised, no numbers in the cells (the counts are in the CSV)
        (normalised, _) = figure.axes
        assert len(normalised.get_xticklabels()) == n and not normalised.texts
    else:
        counts, normalised = figure.axes[:2]  # then the two colour bars
        assert len(counts.get_xticklabels()) == n and counts.get_title() == "validation counts"
        assert len(counts.texts) == n * n
    assert normalised.images[0].get_array().max() <= 1
    assert normalised.get_title() == "validation normalised by true class"


def test_bench_figure_draws_one_line_per_contender():
    results = {k: {"name": k, "elapsed_seconds": [60, 120], "val_accuracy": [0.5, 0.6]} for k in ("a", "b")}
    assert len(bench_figure(results).axes[0].lines) == 2


@pytest.mark.parametrize("n", [2, 10, 21, 100])
def test_confusion_matrix_stays_readable_up_to_100_classes(n):
    """Every class named, at 5 points or more, with at least 0.15 inch (11 points) per row."""
    names = [f"class-{i:03d}" for i in range(n)]
    figure = confusion_figure(np.eye(n, dtype=int) * 5 + 1, names)
    for ax in [a for a in figure.axes if a.get_ylabel() == "true"]:
        labels = ax.get_yticklabels()
        assert [t.get_text() for t in labels] == names
        assert min(t.get_fontsize() for t in labels) >= 5
        height = ax.get_position().height * figure.get_size_inches()[1]
        assert height / n >= 0.15
