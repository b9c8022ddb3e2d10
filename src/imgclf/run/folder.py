"""The run folder: its layout, and every file imgclf writes into it.

Training, its callbacks, the checkpoint, evaluation reports (`imgclf evaluate --out`) and the
bench all write through `RunFolder`, so the names and formats below are the whole story:

    config.json          the resolved configuration (TrainConfig), precision as used
    environment.json     software versions and hardware
    data.json            where the data came from, image counts, skipped files
    split.csv            item, label, class, subset (train/val) of every labelled image
    history.csv          one row per epoch: losses, accuracies, validation F1/precision/recall
                         (macro and per class), learning rate, seconds
    checkpoint.npz       everything needed to resume after the last completed epoch
    best_model.keras     lowest validation loss so far; last_model.keras: the final epoch
    metrics.json         the final evaluation of the kept model
    [test_]per_class.csv, [test_]confusion_matrix.csv and .png: per-class table and matrix
    [test_]misclassified.csv, reliability.png, top_losses.png: the error analysis
    report.html          everything above in one self-contained page
    loss.png, accuracy.png, f1.png, precision_recall.png: the history as figures
    bench.json, bench.png (bench folders)

Every write is atomic (`atomic.py`): a kill leaves the previous complete file or the new one.
"""

from __future__ import annotations

import csv
import json
import shutil
import sys
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from ..config import TrainConfig
from ..errors import CheckpointError, ImgclfError
from .atomic import atomic_path, remove_partial_files, write_csv, write_figure, write_json

RUNS_DIR = Path("runs")  # default parent of run folders, relative to the working directory
CONFIG = "config.json"
ENVIRONMENT = "environment.json"
DATA = "data.json"
SPLIT = "split.csv"
HISTORY = "history.csv"
CHECKPOINT = "checkpoint.npz"
BEST_MODEL = "best_model.keras"
LAST_MODEL = "last_model.keras"
METRICS = "metrics.json"
BENCH = "bench.json"
BENCH_PLOT = "bench.png"
DPI = 110  # dots per inch of saved figures
SPLIT_COLUMNS = ["item", "label", "class", "subset"]
MISCLASSIFIED_COLUMNS = ["item", "true", "predicted", "confidence", "loss"]
HISTORY_COLUMNS = [  # then val_f1[class], val_precision[class], val_recall[class] for each class
    "epoch", "loss", "accuracy", "val_loss", "val_accuracy",
    "val_f1", "val_precision", "val_recall", "learning_rate", "seconds",
]
CHECKPOINT_FORMAT = 1
# Files that make a folder a run: a fresh run refuses to write where one of them is
RUN_FILES = (CONFIG, SPLIT, HISTORY, CHECKPOINT, BEST_MODEL, LAST_MODEL, METRICS)


class RunFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def check_free(cls, config: TrainConfig) -> None:
        """Refuse `config.out` when it holds a run (any of RUN_FILES), unless `config.overwrite`:
        then `create` moves it aside. Called before anything is loaded, so the refusal is quick."""
        found = cls(config.out).run_files() if config.out else []
        if found and not config.overwrite:
            raise ImgclfError(
                f"{config.out} already holds a run ({', '.join(found)}); continue it with --resume {config.out}, "
                f"or start afresh with --overwrite (the old run is moved aside to {config.out}.old-<time>, "
                "nothing is deleted), or choose another --out")

    def run_files(self) -> list[str]:
        return [name for name in RUN_FILES if (self.path / name).exists()]

    @classmethod
    def create(cls, config: TrainConfig) -> "RunFolder":
        """`config.out`, or a new folder runs/<name> (<model>-<time> by default, -2, -3... if taken).
        A `config.out` that holds a run is refused (`check_free`), or with `config.overwrite`
        renamed to `<out>.old-<time>` first: one rename, nothing deleted, so the earlier model
        survives whatever happens to the new run."""
        if config.out:
            path = Path(config.out)
            cls.check_free(config)
            if cls(path).run_files():
                aside = path.with_name(f"{path.name}.old-{datetime.now():%Y%m%d-%H%M%S}")
                suffix = 2
                while aside.exists():
                    aside = path.with_name(f"{path.name}.old-{datetime.now():%Y%m%d-%H%M%S}-{suffix}")
                    suffix += 1
                path.rename(aside)
                print(f"--overwrite: the earlier run in {path} was moved to {aside}", file=sys.stderr)
        else:
            name = config.name or f"{config.model}-{datetime.now():%Y%m%d-%H%M%S}"
            path = RUNS_DIR / name
            suffix = 2
            while path.exists():
                path = RUNS_DIR / f"{name}-{suffix}"
                suffix += 1
        path.mkdir(parents=True, exist_ok=True)
        return cls(path)

    @classmethod
    def existing(cls, path: str | Path) -> "RunFolder":
        run = cls(path)
        if not (run.path / CONFIG).is_file():
            raise ImgclfError(f"{run.path} is not a run folder (no {CONFIG})")
        return run

    def __str__(self) -> str:
        return str(self.path)

    @property
    def best_model(self) -> Path:
        return self.path / BEST_MODEL

    @property
    def last_model(self) -> Path:
        return self.path / LAST_MODEL

    # ------------------------------------------------------------------ configuration and data

    def write_config(self, config: TrainConfig) -> None:
        write_json(self.path / CONFIG, config.to_dict())

    def read_config(self) -> TrainConfig:
        return TrainConfig.from_json(self.path / CONFIG)

    def write_environment(self, environment: dict) -> None:
        write_json(self.path / ENVIRONMENT, environment)

    def write_data_summary(self, summary: dict) -> None:
        write_json(self.path / DATA, summary)

    def write_split(self, rows: list[list[str]]) -> None:
        write_csv(self.path / SPLIT, SPLIT_COLUMNS, rows)

    def read_split(self) -> list[list[str]] | None:
        try:
            with open(self.path / SPLIT, newline="", encoding="utf-8") as handle:
                rows = list(csv.reader(handle))
        except OSError:
            return None
        return rows[1:] if rows and rows[0] == SPLIT_COLUMNS else None

    # ------------------------------------------------------------------ per epoch

    def write_history(self, rows: list[dict]) -> None:
        columns = list(HISTORY_COLUMNS) + [k for k in rows[0] if k not in HISTORY_COLUMNS] if rows else HISTORY_COLUMNS
        write_csv(self.path / HISTORY, columns, [[_cell(r.get(c)) for c in columns] for r in rows])

    def read_history(self) -> dict[str, np.ndarray]:
        with open(self.path / HISTORY, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return {key: np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])
                for key in (rows[0] if rows else {})}

    def save_model(self, path: Path, model, class_names: list[str], **metadata) -> None:
        """`best_model` or `last_model`, with class names and `metadata` (see modelio)."""
        from ..inference.modelio import save_model

        save_model(model, path, class_names, **metadata)

    def remove_best_model(self) -> None:
        self.best_model.unlink(missing_ok=True)

    def keep_last_as_best(self) -> None:
        with atomic_path(self.best_model, suffix=".keras") as tmp:
            shutil.copyfile(self.last_model, tmp)

    def write_checkpoint(self, meta: dict, arrays: dict[str, np.ndarray]) -> None:
        with atomic_path(self.path / CHECKPOINT, suffix=".npz") as tmp:
            with open(tmp, "wb") as handle:
                np.savez(handle, meta=np.array(json.dumps({"format_version": CHECKPOINT_FORMAT, **meta})), **arrays)

    def read_checkpoint(self) -> tuple[dict, dict[str, np.ndarray]] | None:
        """(meta, arrays) of the run's checkpoint, or None when it has none yet."""
        path = self.path / CHECKPOINT
        if not path.exists():
            return None
        try:
            with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as archive:
                arrays = {name: archive[name] for name in archive.files}
            meta = json.loads(str(arrays.pop("meta")))
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise CheckpointError(f"cannot read checkpoint {path}: {exc}") from None
        if meta.get("format_version") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{path}: unsupported checkpoint format {meta.get('format_version')}")
        return meta, arrays

    def remove_partial_files(self) -> list[Path]:
        return remove_partial_files(self.path)

    # ------------------------------------------------------------------ results

    def write_metrics(self, metrics: dict[str, Any]) -> None:
        write_json(self.path / METRICS, metrics)

    def write_reports(self, report: dict, prefix: str = "", top_pixels: np.ndarray | None = None) -> None:
        """per_class.csv, confusion_matrix.csv and its figure, for one evaluated split; with
        its analysis, misclassified.csv, the reliability diagram and the highest-loss images
        (`top_pixels`)."""
        from ..evaluation.report import evaluation_figures

        names = report["class_names"]
        write_csv(self.path / f"{prefix}per_class.csv", ["class", "precision", "recall", "f1", "support"],
                  [[c["class"], f"{c['precision']:.6f}", f"{c['recall']:.6f}", f"{c['f1']:.6f}", c["support"]]
                   for c in report["per_class"]])
        matrix = np.array(report["confusion_matrix"])
        write_csv(self.path / f"{prefix}confusion_matrix.csv", ["true \\ predicted", *names],
                  [[name, *row] for name, row in zip(names, matrix.tolist())])
        figures = evaluation_figures(report, top_pixels)
        write_figure(self.path / f"{prefix}confusion_matrix.png", figures.pop("confusion"), DPI)
        for name, figure in figures.items():
            write_figure(self.path / f"{prefix}{name}.png", figure, DPI)
        if "analysis" in report:
            write_csv(self.path / f"{prefix}misclassified.csv", MISCLASSIFIED_COLUMNS,
                      [[row[c] if not isinstance(row[c], float) else f"{row[c]:.6f}" for c in MISCLASSIFIED_COLUMNS]
                       for row in report["analysis"]["misclassified"]])

    def write_html_report(self, report: dict, title: str, prefix: str = "", data: dict | None = None) -> Path:
        """report.html: the evaluation `report` with the figures `write_reports(prefix)` and
        `write_history_plots` wrote (embedded as they are, not drawn again), and the run's
        configuration, environment and data summary when the folder has them."""
        from ..evaluation.plots import HISTORY_FIGURES
        from ..evaluation.report import REPORT, render

        def read(name):
            path = self.path / name
            return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

        def png(name):
            path = self.path / name
            return path.read_bytes() if path.exists() else None

        best = None
        if (self.path / HISTORY).exists():
            history = self.read_history()
            if np.isfinite(history["val_loss"]).any():
                best = int(history["epoch"][int(np.nanargmin(history["val_loss"]))])
        curves = {name: png(name) for name, _, _ in HISTORY_FIGURES if png(name)}
        figures = {key: png(f"{prefix}{name}.png") for key, name in
                   (("confusion", "confusion_matrix"), ("reliability", "reliability"), ("top_losses", "top_losses"))}
        html = render(title=title, evaluation=report, figures={k: v for k, v in figures.items() if v},
                      history_figures=curves or None, best_epoch=best, config=read(CONFIG),
                      environment=read(ENVIRONMENT), data=data if data is not None else read(DATA))
        with atomic_path(self.path / REPORT, suffix=".html") as tmp:
            tmp.write_text(html, encoding="utf-8")
        return self.path / REPORT

    def write_history_plots(self) -> list[Path]:
        from ..evaluation.plots import history_figures

        written = []
        for name, figure in history_figures(self.read_history()).items():
            write_figure(self.path / name, figure, DPI)
            written.append(self.path / name)
        return written

    def write_bench(self, report: dict) -> None:
        from ..evaluation.plots import bench_figure

        write_json(self.path / BENCH, report)
        write_figure(self.path / BENCH_PLOT, bench_figure(report["contenders"]), DPI)


def _cell(value):
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else value)
