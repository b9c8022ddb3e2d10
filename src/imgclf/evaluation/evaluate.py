"""Evaluation: a saved model on labelled images, every figure from one confusion matrix and
the predicted probabilities (`imgclf evaluate`, `imgclf report`, and the final evaluation of
a training run), with the error analysis of `analysis`."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..config import TrainConfig, model_data_config
from ..data.decode import decode_paths
from ..data.labelled import Images
from ..data.sources import evaluation_images
from ..errors import DataError, ModelFileError
from ..inference.modelio import LoadedModel
from ..inference.predict import PREDICT_BATCH, check_min_confidence, combine_views, image_views
from ..inference.runtimes import open_model
from ..run.folder import METRICS, RunFolder, split_images
from .analysis import GRID_IMAGES, analyse, selective, threshold_for
from .calibrate import figures, scale
from .metrics import confusion_matrix, summarize
from .report import write_html_report, write_reports

EPSILON = 1e-7  # probability floor in the log-loss, as Keras' cross-entropy clips
REPORT_KEYS = ("loss", "accuracy", "f1", "precision", "recall", "images")  # the headline figures


def evaluate_images(loaded: LoadedModel, images: Images, *, tta: bool = False, batch_size: int = PREDICT_BATCH,
                    min_confidence: float | None = None, target_accuracy: float | None = None,
                    views: list[tuple[float, np.ndarray]] | None = None) -> dict:
    """Accuracy, macro and per-class precision/recall/F1, loss, the confusion matrix, and the
    error analysis (`analysis.analyse`: top-k, weighted averages, most-confused pairs,
    calibration, selective prediction, the misclassified images). A calibrated model's
    figures without its temperature are under analysis["uncalibrated"]; `min_confidence` and
    `target_accuracy` add selective prediction at that threshold / for that accuracy. `views`:
    the model's (weight, probabilities) of each view of `images`, already computed."""
    if len(images) == 0:
        raise DataError("no images to evaluate")
    check_min_confidence(min_confidence)
    if target_accuracy is not None and not 0 < target_accuracy <= 1:
        raise DataError(f"target accuracy must be above 0 and at most 1 (got {target_accuracy})")
    images = images.with_classes(loaded.class_names)
    if views is None:
        views = image_views(loaded, images, tta=tta, batch_size=batch_size)
    probs = combine_views(views)
    predicted = probs.argmax(axis=1)
    matrix = confusion_matrix(images.labels, predicted, len(loaded.class_names))
    result = summarize(matrix, loaded.class_names)
    true_prob = probs[np.arange(len(probs)), images.labels]
    result["loss"] = float(-np.log(np.clip(true_prob, EPSILON, 1.0)).mean()) + 0.0  # no -0.0
    result["confusion_matrix"] = matrix.tolist()
    result["class_names"] = list(loaded.class_names)
    result["tta"] = tta
    analysis = analyse(images.labels, probs, matrix, result["per_class"], loaded.class_names, images.names())
    temperature = loaded.temperature
    result["temperature"] = temperature
    if temperature != 1.0:  # the same images through the model without its temperature
        analysis["uncalibrated"] = figures(images.labels, combine_views(
            [(weight, scale(view, 1 / temperature)) for weight, view in views]))
    if min_confidence is not None:
        analysis["selective"]["at_min_confidence"] = selective(images.labels, probs, min_confidence)
    if target_accuracy is not None:
        analysis["selective"]["for_target"] = threshold_for(images.labels, probs, target_accuracy) or {
            "target_accuracy": target_accuracy, "threshold": None}
    result["analysis"] = analysis
    return result


def summary_metrics(report: dict) -> dict:
    """What metrics.json keeps of an analysis (the misclassified images go to their CSV)."""
    analysis = report.get("analysis", {})
    return {**{k: v for k, v in analysis.items() if k != "misclassified"}, "misclassified": len(
        analysis.get("misclassified", []))}


def top_loss_pixels(images: Images, report: dict, n: int = GRID_IMAGES) -> np.ndarray:
    """uint8 pixels of the `n` highest-loss misclassified images (the grid's pictures)."""
    index = [row["index"] for row in report["analysis"]["misclassified"][:n]]
    if images.in_memory or not index:
        return images.array[index] if images.in_memory else np.zeros((0, *images.size, 3), np.uint8)
    return decode_paths([images.paths[i] for i in index], images.size, resize=images.resize).pixels


def top_loss_heatmaps(loaded: LoadedModel, pixels: np.ndarray, report: dict) -> np.ndarray | None:
    """Grad-CAM heatmaps of the predicted class over the highest-loss images (`pixels`, in the
    order of the misclassified rows); None for an export (no gradients) or a model Grad-CAM
    cannot explain."""
    from ..inference.explain import Explainer

    if loaded.model is None or not len(pixels):
        return None
    try:
        explainer = Explainer(loaded, compile=False)  # a few images: tracing would cost more than it saves
    except ModelFileError:
        return None
    rows = report["analysis"]["misclassified"][:len(pixels)]
    classes = np.array([loaded.class_names.index(row["predicted"]) for row in rows], np.int32)
    return explainer.heatmaps(pixels, classes)[0]


def evaluate(model: str | Path | LoadedModel, config: TrainConfig, *, out: str | Path | None = None,
             tta: bool = False, unsafe: bool = False, min_confidence: float | None = None,
             target_accuracy: float | None = None) -> dict:
    """Evaluate `model` on the data `config` points at; with `out`, write a report folder
    (metrics.json, the per-class and misclassified tables, figures, report.html)."""
    loaded = model if isinstance(model, LoadedModel) else open_model(model, unsafe=unsafe)
    config = model_data_config(config, loaded)
    images, source = evaluation_images(config)
    report = evaluate_images(loaded, images, tta=tta, min_confidence=min_confidence, target_accuracy=target_accuracy)
    report["source"] = source
    report["skipped_files"] = len(images.skipped)
    if out is not None:
        folder = RunFolder(out)
        pixels = top_loss_pixels(images, report)
        write_reports(folder, report, top_pixels=pixels, top_heatmaps=top_loss_heatmaps(loaded, pixels, report))
        folder.write_metrics({**{k: v for k, v in report.items() if k not in ("per_class", "confusion_matrix",
                                                                             "analysis")},
                              **summary_metrics(report)})
        name = loaded.path.name if loaded.path else "model"
        write_html_report(folder, report, title=f"{name} on {source}",
                                 data={"source": source, "images": len(images), "class_names": loaded.class_names,
                                       "skipped_files": len(images.skipped),
                                       "skipped": [{"path": p, "reason": r} for p, r in images.skipped]})
    return report


def write_run_report(run_dir: str | Path, *, unsafe: bool = False) -> Path:
    """Evaluate a run's kept model on its validation split again (the test split for runs
    trained on everything) and write its analysis and report.html; return the report's path."""
    run = RunFolder.existing(run_dir)
    if not run.best_model.exists():
        raise DataError(f"{run.path} has no {run.best_model.name} to report on (did its training finish?)")
    loaded = open_model(run.best_model, unsafe=unsafe)
    config = run.read_config()
    if config.train_on_all:
        images, source = evaluation_images(model_data_config(config, loaded).replace(verbose=0))
    else:
        images, source = split_images(run.path, loaded, "val"), "the run's validation split"
    prefix = "test_" if config.train_on_all else ""
    report = report_kept_model(run, loaded, images, tta=config.tta, prefix=prefix, source=source)
    fitted = (run.read_json(METRICS) or {}).get("calibration")
    if fitted:  # how training calibrated the model: on which images
        report["calibration"] = fitted
    return write_html_report(run, report, title=f"{config.model} run {run.path.name}", prefix=prefix)


def report_kept_model(run: RunFolder, loaded: LoadedModel, images: Images, *, tta: bool, prefix: str = "",
                      source: str | None = None, views: list | None = None) -> dict:
    """Evaluate a run's kept model on one split and write that split's reports into the run
    (tables, figures, misclassified images; `prefix` "test_" for a test split): the one path
    of training's final evaluation and of `imgclf report`. Returns the report."""
    report = evaluate_images(loaded, images, tta=tta, views=views)
    if source is not None:
        report["source"] = source
    pixels = top_loss_pixels(images, report)
    write_reports(run, report, prefix=prefix, top_pixels=pixels, top_heatmaps=top_loss_heatmaps(loaded, pixels, report))
    return report
