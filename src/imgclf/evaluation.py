"""`imgclf evaluate`: a saved model on a labelled dataset, with a saved report."""

from __future__ import annotations

from pathlib import Path

from .config import TrainConfig
from .data import Images, load_data
from .files import write_json
from .modelio import LoadedModel, load_model
from .predict import evaluate_images


def evaluation_images(config: TrainConfig) -> tuple[Images, str]:
    """The images to evaluate on: a source's test split when it has one, else all of it."""
    data = load_data(config)
    if data.test is not None:
        return data.test, f"{data.source}, test split"
    return data.labelled, data.source


def evaluate(model: str | Path | LoadedModel, config: TrainConfig, *, out: str | Path | None = None,
             tta: bool = False, unsafe: bool = False) -> dict:
    """Evaluate `model` on the data `config` points at; write a report folder when `out` is given."""
    loaded = model if isinstance(model, LoadedModel) else load_model(model, unsafe=unsafe)
    config = config.replace(image_size=loaded.image_size[0])  # imgclf models take square images
    images, source = evaluation_images(config)
    report = evaluate_images(loaded, images, tta=tta)
    report["source"] = source
    report["skipped_files"] = len(images.skipped)
    if out is not None:
        from .training import write_reports

        out = Path(out)
        write_reports(out, report)
        write_json(out / "metrics.json", {k: v for k, v in report.items() if k not in ("per_class", "confusion_matrix")})
    return report
