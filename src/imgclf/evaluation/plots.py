"""Figures of a run: loss, accuracy, F1, precision/recall per epoch, the confusion matrix, and
the bench's accuracy against wall time.

Each function returns a `matplotlib.figure.Figure` built without pyplot, so no backend is
chosen and none is changed (notebooks keep their inline plots); `report` writes them
into the run folder.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ..run.folder import HISTORY_PNGS

HISTORY_FIGURES = list(zip(HISTORY_PNGS, [  # file name, title, (history column, legend label)...
    ("Loss", [("loss", "training"), ("val_loss", "validation")]),
    ("Accuracy", [("accuracy", "training"), ("val_accuracy", "validation")]),
    ("Validation F1 (macro)", [("val_f1", "validation F1")]),
    ("Validation precision and recall (macro)", [("val_precision", "precision"), ("val_recall", "recall")]),
]))
ANNOTATE_CELLS_UP_TO = 20  # classes: above this, the confusion matrix cells carry no numbers
CELL_INCHES = 0.22  # above ANNOTATE_CELLS_UP_TO classes: one row per 16 points, names at 5-8 points


def history_figures(history: dict[str, np.ndarray]) -> dict[str, Figure]:
    """{file name: figure} for loss.png, accuracy.png, f1.png and precision_recall.png."""
    epochs = history["epoch"]
    finite = np.isfinite(history["val_loss"])
    best = int(np.nanargmin(history["val_loss"])) if finite.any() else None
    figures = {}
    for filename, (title, series) in HISTORY_FIGURES:
        fig = Figure(figsize=(6, 4), layout="tight")
        ax = fig.subplots()
        for key, label in series:
            if key in history:
                ax.plot(epochs, history[key], marker="o", markersize=3, label=label)
        if best is not None:
            ax.axvline(epochs[best], color="grey", linestyle=":", label=f"best val loss (epoch {int(epochs[best])})")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        figures[filename] = fig
    return figures


def confusion_figure(matrix: np.ndarray, class_names: list[str], title: str = "") -> Figure:
    """Counts and row-normalised (recall per class) side by side, labelled with class names
    and each cell annotated; above ANNOTATE_CELLS_UP_TO classes the row-normalised panel
    alone (the counts are in confusion_matrix.csv), every class name kept legible."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    n = len(class_names)
    few = n <= ANNOTATE_CELLS_UP_TO
    side = max(4.5, 0.55 * n + 2) if few else CELL_INCHES * n + 2
    font = 8 if few else max(5.0, min(8.0, 500 / n))
    fig = Figure(figsize=(2 * side + 1, side) if few else (side + 1, side), layout="tight")
    axes = fig.subplots(1, 2) if few else [fig.subplots()]
    panels = ((matrix, "counts", "d"), (normalised, "normalised by true class", ".2f"))[0 if few else 1:]
    for ax, (values, name, fmt) in zip(axes, panels):
        image = ax.imshow(values, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set(
            xticks=range(n), yticks=range(n), xticklabels=class_names, yticklabels=class_names,
            xlabel="predicted", ylabel="true", title=f"{title} {name}".strip(),
        )
        ax.tick_params(axis="x", rotation=45 if few else 90, labelsize=font)
        ax.tick_params(axis="y", labelsize=font)
        if few:
            threshold = values.max() / 2 if values.size else 0
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > threshold else "black")
    return fig


def bench_figure(results: dict) -> Figure:
    """Validation accuracy against wall time, one line per bench contender."""
    fig = Figure(figsize=(7, 4.5), layout="tight")
    ax = fig.subplots()
    for result in results.values():
        ax.plot(np.array(result["elapsed_seconds"]) / 60, result["val_accuracy"], marker="o", markersize=3,
                label=result["name"])
    ax.set(xlabel="wall time (minutes)", ylabel="validation accuracy", title="Validation accuracy against wall time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
