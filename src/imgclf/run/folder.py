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
    [test_]misclassified.csv, reliability.png, top_losses.png, coverage.png: the error analysis
    report.html          everything above in one self-contained page
    loss.png, accuracy.png, f1.png, precision_recall.png: the history as figures
    bench.json, bench.png (bench folders)

Figures are drawn by `evaluation/`; this module only names and stores files.
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

from ..config import TrainConfig, model_data_config
from ..data.decode import decode_paths, read_config_file
from ..data.labelled import Images
from ..data.sources import load_data
from ..data.split import stratified_sample
from ..errors import CheckpointError, DataError, ImgclfError
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
# the reports of one evaluated split, each name after an optional prefix ("test_")
PER_CLASS = "per_class.csv"
PER_CLASS_COLUMNS = ["class", "precision", "recall", "f1", "support"]
CONFUSION_CSV = "confusion_matrix.csv"
CONFUSION_PNG = "confusion_matrix.png"
MISCLASSIFIED = "misclassified.csv"
MISCLASSIFIED_COLUMNS = ["item", "true", "predicted", "confidence", "loss"]
RELIABILITY_PNG = "reliability.png"
TOP_LOSSES_PNG = "top_losses.png"
COVERAGE_PNG = "coverage.png"
REPORT = "report.html"
TENSORBOARD = "tensorboard"  # folder of TensorBoard's event files (training/tracking.py)
MLFLOW_RUN = "mlflow.json"  # the MLflow run a --mlflow run logs to
# the history as figures: loss, accuracy, F1, precision and recall per epoch
HISTORY_PNGS = ("loss.png", "accuracy.png", "f1.png", "precision_recall.png")
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
        return TrainConfig.from_dict(read_config_file(self.path / CONFIG))

    def write_environment(self, environment: dict) -> None:
        write_json(self.path / ENVIRONMENT, environment)

    def write_data_summary(self, summary: dict) -> None:
        write_json(self.path / DATA, summary)

    def write_split(self, rows: list[dict[str, str]]) -> None:
        """split.csv: one row per labelled image, {column: value} for SPLIT_COLUMNS."""
        write_csv(self.path / SPLIT, SPLIT_COLUMNS, [[row[c] for c in SPLIT_COLUMNS] for row in rows])

    def read_split(self) -> list[dict[str, str]] | None:
        """split.csv's rows as {column: value} (read by column name, in any order); None when
        the file is missing or lacks one of SPLIT_COLUMNS."""
        try:
            with open(self.path / SPLIT, newline="", encoding="utf-8") as handle:
                reader = csv.DictReader(handle)
                if not set(SPLIT_COLUMNS) <= set(reader.fieldnames or ()):
                    return None
                return [{c: row[c] for c in SPLIT_COLUMNS} for row in reader]
        except OSError:
            return None

    def data_cwd(self) -> str | None:
        """The folder training ran in: relative paths in split.csv are relative to it."""
        return (self.read_json(DATA) or {}).get("cwd")

    # ------------------------------------------------------------------ per epoch

    def write_history(self, rows: list[dict]) -> None:
        columns = list(HISTORY_COLUMNS) + [k for k in rows[0] if k not in HISTORY_COLUMNS] if rows else HISTORY_COLUMNS
        write_csv(self.path / HISTORY, columns, [[_cell(r.get(c)) for c in columns] for r in rows])

    def read_history(self) -> dict[str, np.ndarray]:
        with open(self.path / HISTORY, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        return {key: np.array([float(r[key]) if r[key] != "" else np.nan for r in rows])
                for key in (rows[0] if rows else {})}

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

    def write_table(self, name: str, columns: list[str], rows: list[list]) -> None:
        write_csv(self.path / name, columns, rows)

    def write_figure(self, name: str, figure) -> Path:
        """A matplotlib Figure as the PNG `name` (the evaluation stage draws; this folder stores)."""
        write_figure(self.path / name, figure, DPI)
        return self.path / name

    def write_text(self, name: str, text: str) -> Path:
        with atomic_path(self.path / name, suffix=Path(name).suffix) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return self.path / name

    def write_json(self, name: str, values: dict) -> None:
        write_json(self.path / name, values)

    def read_json(self, name: str) -> dict | None:
        path = self.path / name
        return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None

    def read_bytes(self, name: str) -> bytes | None:
        path = self.path / name
        return path.read_bytes() if path.exists() else None

    def best_epoch(self) -> int | None:
        """The epoch of the lowest validation loss in history.csv (None without one)."""
        if not (self.path / HISTORY).exists():
            return None
        history = self.read_history()
        if "val_loss" not in history or not np.isfinite(history["val_loss"]).any():
            return None
        return int(history["epoch"][int(np.nanargmin(history["val_loss"]))])

    def write_bench(self, report: dict, figure) -> None:
        write_json(self.path / BENCH, report)
        self.write_figure(BENCH_PLOT, figure)


def split_images(run_dir: str | Path, loaded, subset: str, limit: int | None = None, *, seed: int = 0,
                 hint: str = "") -> Images:
    """The run's `subset` ("train" or "val") images as split.csv lists them (a stratified
    sample of `limit`), decoded the way `loaded` (an inference LoadedModel: class names, image
    size, resize mode) takes them: image files read again
    (relative paths from the training's folder), or a built-in dataset loaded again."""
    run = RunFolder(run_dir)
    rows = run.read_split()
    if not rows or not (run.path / CONFIG).exists():
        raise DataError(f"{run.path} is not a run folder with {SPLIT} and {CONFIG}{hint}")
    positions = np.array([i for i, row in enumerate(rows) if row["subset"] == subset])
    if not len(positions):
        raise DataError(f"the run {run.path} has no {subset} images{hint}")
    labels = np.array([int(rows[i]["label"]) for i in positions], np.int32)
    chosen = np.arange(len(positions))
    if limit is not None and len(positions) > limit:
        chosen = stratified_sample(labels, limit, seed)
    positions, labels = positions[chosen], labels[chosen]
    config = run.read_config()
    names = loaded.class_names
    if not (config.data_dir or config.labels):  # a built-in dataset: split.csv rows are its indices
        data = load_data(model_data_config(config, loaded).replace(verbose=0))
        if data.labelled.array is None or len(data.labelled) != len(rows):
            raise DataError(f"the run's data ({data.source}) is not what it trained on{hint}")
        return Images(labels, names, data.labelled.array[positions], None, size=loaded.image_size,
                      resize=loaded.resize)
    cwd = run.data_cwd()
    paths = [_resolve(rows[i]["item"], cwd) for i in positions]
    missing = [p for p in paths if not Path(p).is_file()]
    if missing:
        raise DataError(f"the run's {subset} images are not found from here (first: {missing[0]}){hint}")
    decoded = decode_paths(paths, loaded.image_size, resize=loaded.resize)
    return Images(labels[decoded.kept], names, decoded.pixels, [paths[i] for i in decoded.kept],
                  decoded.skipped, loaded.image_size, loaded.resize)


def _resolve(path: str, cwd: str | None) -> str:
    """A split.csv path as training saw it: relative paths are relative to the training's folder."""
    if Path(path).is_absolute() or not cwd:
        return path
    return str(Path(cwd) / path)


def _cell(value):
    return "" if value is None else (f"{value:.6g}" if isinstance(value, float) else value)
