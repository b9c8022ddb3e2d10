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

from ..inference.predict import answered

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


THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)  # the selective-prediction table's confidence thresholds
CURVE_POINTS = 101  # coverage-accuracy curve: points kept in JSON (evenly spaced in coverage)


def selective(labels: np.ndarray, probs: np.ndarray, min_confidence: float) -> dict:
    """Coverage (share of images answered) and accuracy on the answered ones at a threshold."""
    keep = answered(probs, min_confidence)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    return {"threshold": float(min_confidence), "coverage": float(keep.mean()) if len(keep) else 0.0,
            "answered": int(keep.sum()), "accuracy": float(correct[keep].mean()) if keep.any() else None}


def coverage_curve(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The selective-prediction curve: for every threshold (each distinct top probability, most
    confident first) the coverage it leaves and the accuracy on what it answers."""
    confidence = probs.max(axis=1)
    order = np.argsort(-confidence, kind="stable")
    correct = (probs.argmax(axis=1) == np.asarray(labels))[order]
    sorted_conf = confidence[order]
    last = np.flatnonzero(np.r_[sorted_conf[1:] != sorted_conf[:-1], True])  # end of each tie group
    answered_n = last + 1
    return {"threshold": sorted_conf[last], "coverage": answered_n / len(probs),
            "accuracy": np.cumsum(correct)[last] / answered_n}


def threshold_for(labels: np.ndarray, probs: np.ndarray, target_accuracy: float) -> dict | None:
    """The lowest threshold (the most images answered) whose answers reach `target_accuracy`,
    with its coverage and accuracy; None when no threshold does."""
    if not len(probs):
        return None
    curve = coverage_curve(labels, probs)
    reached = np.flatnonzero(curve["accuracy"] >= target_accuracy)
    if not len(reached):
        return None
    i = reached[-1]
    return {"target_accuracy": float(target_accuracy), "threshold": float(curve["threshold"][i]),
            "coverage": float(curve["coverage"][i]), "accuracy": float(curve["accuracy"][i])}


def selective_summary(labels: np.ndarray, probs: np.ndarray) -> dict:
    """The coverage-accuracy curve (CURVE_POINTS points) and the table at THRESHOLDS."""
    if not len(probs):
        return {"curve": [], "thresholds": []}
    curve = coverage_curve(labels, probs)
    picks = np.unique(np.searchsorted(curve["coverage"], np.linspace(0, 1, CURVE_POINTS)[1:], side="left")
                      .clip(0, len(curve["coverage"]) - 1))
    return {"curve": [{"threshold": float(curve["threshold"][i]), "coverage": float(curve["coverage"][i]),
                       "accuracy": float(curve["accuracy"][i])} for i in picks],
            "thresholds": [selective(labels, probs, t) for t in THRESHOLDS]}


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
        "selective": selective_summary(labels, probs),
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


def coverage_figure(summary: dict) -> Figure:
    """Accuracy on the images answered against the share answered (coverage), as the
    confidence threshold rises: how many images the model can be trusted with alone."""
    fig = Figure(figsize=(5, 4), layout="tight")
    ax = fig.subplots()
    curve = summary["curve"]
    ax.plot([p["coverage"] for p in curve], [p["accuracy"] for p in curve], color="#4c72b0")
    for row in summary["thresholds"]:
        if row["answered"]:
            ax.plot(row["coverage"], row["accuracy"], "o", color="#dd8452", markersize=4)
            ax.annotate(f"{row['threshold']:g}", (row["coverage"], row["accuracy"]), fontsize=7,
                        textcoords="offset points", xytext=(3, -9))
    ax.set(xlabel="coverage (share of images answered)", ylabel="accuracy on the answered images",
           xlim=(0, 1.02), title="Selective prediction (dots: confidence thresholds)")
    ax.grid(alpha=0.3)
    return fig


def top_losses_figure(pixels: np.ndarray, rows: list[dict], n: int = GRID_IMAGES,
                      heatmaps: np.ndarray | None = None) -> Figure:
    """The `n` highest-loss misclassified images in a grid, each titled true / predicted
    (confidence) and its loss. `pixels`: uint8 (len(rows), H, W, 3), in the rows' order;
    `heatmaps` (len(rows), H, W): Grad-CAM of the predicted class, drawn over each image."""
    n = min(n, len(rows))
    cols = min(4, max(n, 1))
    lines = max(1, -(-n // cols))
    fig = Figure(figsize=(2.4 * cols, 2.6 * lines), layout="tight")
    axes = np.atleast_1d(fig.subplots(lines, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for i, (ax, image, row) in enumerate(zip(axes, pixels[:n], rows[:n])):
        ax.imshow(image)
        if heatmaps is not None:
            ax.imshow(heatmaps[i], cmap="jet", alpha=0.45, vmin=0, vmax=1, interpolation="bilinear")
        ax.set_title(f"true: {row['true'][:18]}\npred: {row['predicted'][:18]} ({row['confidence']:.2f})\n"
                     f"loss {row['loss']:.2f}", fontsize=8)
    if not n:
        axes[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    elif heatmaps is not None:
        fig.suptitle("Grad-CAM of the predicted class: red is what it looked at most", fontsize=9)
    return fig
