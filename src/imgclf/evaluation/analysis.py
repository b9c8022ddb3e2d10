"""Error analysis of a model on labelled images: where it fails and how far to trust its
confidence. Everything is computed from the predicted probabilities of one pass:

- top-k accuracy, and support-weighted averages of the per-class table;
- the most-confused class pairs (fastai's `most_confused`);
- calibration: expected calibration error over equal-width confidence bins (Guo et al.
  2017) and the reliability diagram;
- the misclassified images (path, true and predicted class, confidence, loss), and a grid
  picture of the highest-loss ones (fastai's `plot_top_losses`).
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

CALIBRATION_BINS = 15  # equal-width confidence bins of the ECE and the reliability diagram
TOP_K = 5  # top-k accuracy reported besides top-1: k = 5, or one less than the classes when fewer
CONFUSED_PAIRS = 10  # most-confused pairs listed
GRID_IMAGES = 16  # highest-loss images in the grid picture
EPSILON = 1e-7  # probability floor of the log-loss, as Keras' cross-entropy clips


def top_k_accuracy(labels: np.ndarray, probs: np.ndarray, k: int) -> float:
    """Share of images whose true class is among the k most probable (scikit-learn's
    `top_k_accuracy_score`)."""
    k = min(k, probs.shape[1])
    top = np.argpartition(-probs, k - 1, axis=1)[:, :k] if k < probs.shape[1] else None
    if top is None:
        return 1.0
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def weighted_averages(per_class: list[dict]) -> dict:
    """Precision, recall and F1 averaged with each class weighted by its support
    (scikit-learn's average="weighted")."""
    support = np.array([c["support"] for c in per_class], np.float64)
    total = support.sum()
    return {key: float(np.dot([c[key] for c in per_class], support) / total) if total else 0.0
            for key in ("precision", "recall", "f1")}


def most_confused(matrix: np.ndarray, class_names: list[str], n: int = CONFUSED_PAIRS) -> list[dict]:
    """The largest off-diagonal cells: (true class, predicted as, images), largest first."""
    matrix = np.asarray(matrix)
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:n]
    pairs = []
    for flat in order:
        i, j = np.unravel_index(flat, off.shape)
        if off[i, j] == 0:
            break
        pairs.append({"true": class_names[i], "predicted": class_names[j], "images": int(off[i, j]),
                      "share_of_true": float(off[i, j] / matrix[i].sum())})
    return pairs


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = CALIBRATION_BINS) -> dict:
    """Expected calibration error: the mean over confidence bins of |accuracy - mean
    confidence|, weighted by the images in each bin (confidence = the top probability)."""
    confidence = probs.max(axis=1).astype(np.float64)
    correct = (probs.argmax(axis=1) == np.asarray(labels)).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)  # (low, high] bins
    rows, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        row = {"low": float(edges[b]), "high": float(edges[b + 1]), "images": count,
               "confidence": float(confidence[members].mean()) if count else None,
               "accuracy": float(correct[members].mean()) if count else None}
        if count:
            ece += count / len(confidence) * abs(row["accuracy"] - row["confidence"])
        rows.append(row)
    return {"ece": float(ece), "bins": rows, "mean_confidence": float(confidence.mean()),
            "accuracy": float(correct.mean())}


def losses(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per-image cross-entropy (what the model's loss averages)."""
    return -np.log(np.clip(probs[np.arange(len(probs)), np.asarray(labels)], EPSILON, 1.0))


def misclassified(names: list[str], labels: np.ndarray, probs: np.ndarray, class_names: list[str]) -> list[dict]:
    """Every misclassified image, highest loss first: item, true and predicted class, the
    predicted class's probability, the loss."""
    predicted = probs.argmax(axis=1)
    loss = losses(labels, probs)
    wrong = np.flatnonzero(predicted != labels)
    wrong = wrong[np.argsort(-loss[wrong], kind="stable")]
    return [{"item": names[i], "index": int(i), "true": class_names[labels[i]], "predicted": class_names[predicted[i]],
             "confidence": float(probs[i, predicted[i]]), "loss": float(loss[i])} for i in wrong]


def analyse(labels: np.ndarray, probs: np.ndarray, matrix: np.ndarray, per_class: list[dict],
            class_names: list[str], names: list[str]) -> dict:
    """Every figure of the error analysis, as JSON-able values."""
    k = min(TOP_K, len(class_names) - 1)
    return {
        **({f"top{k}_accuracy": top_k_accuracy(labels, probs, k)} if k > 1 else {}),
        "weighted": weighted_averages(per_class),
        "most_confused": most_confused(matrix, class_names),
        "calibration": calibration(labels, probs),
        "misclassified": misclassified(names, labels, probs, class_names),
    }


def reliability_figure(calib: dict) -> Figure:
    """Accuracy against confidence per bin (a calibrated model lies on the diagonal), with
    the number of images per bin below."""
    fig = Figure(figsize=(5, 5.2), layout="tight")
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    bins = [b for b in calib["bins"] if b["images"]]
    width = calib["bins"][0]["high"] - calib["bins"][0]["low"]
    top.bar([b["low"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
            edgecolor="black", color="#4c72b0", label="accuracy")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set(ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=f"Reliability (ECE {calib['ece']:.3f})")
    top.legend(loc="upper left")
    bottom.bar([b["low"] for b in bins], [b["images"] for b in bins], width=width, align="edge", color="#999999")
    bottom.set(xlabel="confidence (top probability)", ylabel="images")
    return fig


def top_losses_figure(pixels: np.ndarray, rows: list[dict], n: int = GRID_IMAGES) -> Figure:
    """The `n` highest-loss misclassified images in a grid, each titled true / predicted
    (confidence) and its loss. `pixels`: uint8 (len(rows), H, W, 3), in the rows' order."""
    n = min(n, len(rows))
    cols = min(4, max(n, 1))
    lines = max(1, -(-n // cols))
    fig = Figure(figsize=(2.4 * cols, 2.6 * lines), layout="tight")
    axes = np.atleast_1d(fig.subplots(lines, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, row in zip(axes, pixels[:n], rows[:n]):
        ax.imshow(image)
        ax.set_title(f"true: {row['true'][:18]}\npred: {row['predicted'][:18]} ({row['confidence']:.2f})\n"
                     f"loss {row['loss']:.2f}", fontsize=8)
    if not n:
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    return fig
