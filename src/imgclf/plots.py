"""PNG plots of a run: loss, accuracy, F1, precision/recall per epoch, confusion matrix."""

from __future__ import annotations

import csv
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no screen needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .files import atomic_path  # noqa: E402

DPI = 110  # dots per inch of saved figures


def read_history(path: str | Path) -> dict[str, np.ndarray]:
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: np.array([float(r[key]) if r[key] != "" else np.nan for r in rows]) for key in (rows[0] if rows else {})}


def plot_history(history: dict[str, np.ndarray], out_dir: str | Path) -> list[Path]:
    """Write loss.png, accuracy.png, f1.png and precision_recall.png; return their paths."""
    out_dir = Path(out_dir)
    epochs = history["epoch"]
    figures = [
        ("loss.png", "Loss", [("loss", "training"), ("val_loss", "validation")]),
        ("accuracy.png", "Accuracy", [("accuracy", "training"), ("val_accuracy", "validation")]),
        ("f1.png", "Validation F1 (macro)", [("val_f1", "validation F1")]),
        ("precision_recall.png", "Validation precision and recall (macro)",
         [("val_precision", "precision"), ("val_recall", "recall")]),
    ]
    written = []
    for filename, title, series in figures:
        fig, ax = plt.subplots(figsize=(6, 4))
        for key, label in series:
            if key in history:
                ax.plot(epochs, history[key], marker="o", markersize=3, label=label)
        if "loss" not in filename:
            best = int(np.nanargmin(history["val_loss"])) if np.isfinite(history["val_loss"]).any() else None
            if best is not None:
                ax.axvline(epochs[best], color="grey", linestyle=":", label=f"best val loss (epoch {int(epochs[best])})")
        ax.set(title=title, xlabel="epoch")
        ax.grid(alpha=0.3)
        ax.legend()
        written.append(save_figure(fig, out_dir / filename))
    return written


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> Path:
    """Counts and row-normalised (recall per class) side by side, labelled with class names."""
    matrix = np.asarray(matrix)
    rows = matrix.sum(axis=1, keepdims=True)
    normalised = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    n = len(class_names)
    side = max(4.5, 0.55 * n + 2)
    fig, axes = plt.subplots(1, 2, figsize=(2 * side + 1, side))
    for ax, values, name, fmt in ((axes[0], matrix, "counts", "d"), (axes[1], normalised, "normalised by true class", ".2f")):
        image = ax.imshow(values, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ax.set(
            xticks=range(n), yticks=range(n), xticklabels=class_names, yticklabels=class_names,
            xlabel="predicted", ylabel="true", title=f"{title} {name}".strip(),
        )
        ax.tick_params(axis="x", rotation=45)
        if n <= 20:
            threshold = values.max() / 2 if values.size else 0
            for i in range(n):
                for j in range(n):
                    ax.text(j, i, format(values[i, j], fmt), ha="center", va="center", fontsize=7,
                            color="white" if values[i, j] > threshold else "black")
    return save_figure(fig, path)


def save_figure(fig, path: Path) -> Path:
    fig.tight_layout()
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    plt.close(fig)
    return Path(path)
