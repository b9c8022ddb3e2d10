"""Experiment tracking: TensorBoard event files in every run folder, and MLflow on request.

TensorBoard (`tensorboard --logdir runs/`): after each epoch every history.csv column (per-class
F1, precision and recall, the learning rate and the epoch's seconds included) as a scalar, and
the validation confusion matrix as an image (rows normalised, darker is more).

MLflow (`--mlflow [URI]`, an optional dependency): the config as parameters, each epoch's
history row as metrics, and at the end the run folder's models, metrics, report and figures as
artifacts. The MLflow run's id is kept in the run folder (mlflow.json), so `--resume` goes on
logging to the same MLflow run. The URI is checked before any data is read: an unreachable
server fails in seconds.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import keras
import numpy as np

from ..config import TrainConfig
from ..errors import ImgclfError
from ..run.folder import MLFLOW_RUN, TENSORBOARD, RunFolder

CONFUSION_IMAGE_SIDE = 256  # pixels of the confusion-matrix image, at least 4 per cell
EXPERIMENT = "imgclf"  # MLflow experiment of every run
SERVER_TIMEOUT = 5  # seconds to wait for a tracking server's health check
ARTIFACT_SUFFIXES = (".keras", ".json", ".csv", ".html", ".png")


def tracking_callbacks(config: TrainConfig, run: RunFolder, history, matrix, class_names: list[str]) -> list:
    """The per-epoch trackers of every run: TensorBoard's event files (MLflow's callback is
    added by the training loop, on the chief only)."""
    return [TensorBoardLog(run, history, matrix, class_names)]


class TensorBoardLog(keras.callbacks.Callback):
    """Write the epoch's history row (read from the `EpochMetrics` callback, which runs first)
    and the confusion matrix into the run folder's TensorBoard event files."""

    def __init__(self, run: RunFolder, history, matrix, class_names: list[str]):
        super().__init__()
        self.run, self.history, self.matrix, self.class_names = run, history, matrix, class_names
        self.writer = None

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        if not self.history.rows:
            return
        if self.writer is None:
            self.writer = tf.summary.create_file_writer(str(self.run.path / TENSORBOARD))
        row = self.history.rows[-1]
        with self.writer.as_default(step=int(row["epoch"])):
            for key, value in row.items():
                if key != "epoch" and value is not None and np.isfinite(value):
                    tf.summary.scalar(key, float(value))
            tf.summary.image("confusion_matrix", confusion_image(self.matrix.matrix())[None],
                             description="validation confusion matrix: rows are true classes ("
                                         + ", ".join(self.class_names) + "), columns predicted ones")
        self.writer.flush()

    def close(self):
        """Close the event file (the training loop does, at the end of the fit or on failure)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def confusion_image(matrix: np.ndarray) -> np.ndarray:
    """The confusion matrix as an RGB uint8 image: each row divided by its count, shown in
    matplotlib's Blues colour map, cells enlarged to CONFUSION_IMAGE_SIDE pixels or more."""
    from matplotlib import colormaps

    counts = np.asarray(matrix, np.float64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    rgb = (colormaps["Blues"](shares)[..., :3] * 255).astype(np.uint8)
    cell = max(4, -(-CONFUSION_IMAGE_SIDE // max(1, len(counts))))  # rounded up
    return np.repeat(np.repeat(rgb, cell, axis=0), cell, axis=1)


# ---------------------------------------------------------------------------------------- MLflow

def check_mlflow(uri: str):
    """An MlflowClient for `uri`, checked: MLflow installed, the server answering (http), the
    SQLite file's folder there. One-line ImgclfError otherwise, before any training."""
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")  # a lost server costs seconds, not minutes
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise ImgclfError("--mlflow needs MLflow, which is not installed: pip install 'imgclf[mlflow]'") from None
    if uri.startswith(("http://", "https://")):
        import urllib.error
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=SERVER_TIMEOUT).close()
        except (urllib.error.URLError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ImgclfError(f"--mlflow {uri}: no MLflow tracking server answers there ({reason}); start one "
                              "(mlflow server) or give another URI") from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri[len("sqlite:///"):]).parent
        if not folder.is_dir():
            raise ImgclfError(f"--mlflow {uri}: the folder {folder} does not exist")
    try:
        client = MlflowClient(tracking_uri=uri)
        _experiment_id(client, uri)
    except Exception as exc:  # MLflow's own errors, one line
        raise ImgclfError(f"--mlflow {uri}: {type(exc).__name__}: {_first_line(exc)}") from None
    return client


def _experiment_id(client, uri: str) -> str:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the database, not in the working directory
        location = (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return client.create_experiment(EXPERIMENT, artifact_location=location)


class MlflowLog(keras.callbacks.Callback):
    """One imgclf run as one MLflow run: `start` (params), per epoch (metrics), `finish`
    (artifacts, status). A tracking failure mid-run is a warning: training goes on."""

    def __init__(self, config: TrainConfig, run: RunFolder, resumed: bool):
        super().__init__()
        self.run = run
        self.warned = False
        self.client = check_mlflow(config.mlflow)
        self.uri = config.mlflow
        saved = run.read_json(MLFLOW_RUN) if resumed else None
        self.run_id = None
        if saved and saved.get("tracking_uri") == config.mlflow:
            try:
                self.client.update_run(saved["run_id"], status="RUNNING")
                self.run_id = saved["run_id"]
            except Exception as exc:  # deleted there, or another database: a new MLflow run
                print(f"warning: MLflow ({self.uri}): the run's MLflow run {saved['run_id']} cannot go on "
                      f"({type(exc).__name__}); logging to a new one", file=sys.stderr)
        if self.run_id is None:
            experiment = _experiment_id(self.client, config.mlflow)
            self.run_id = self.client.create_run(experiment, run_name=run.path.name,
                                                 tags={"imgclf.run_folder": str(run.path.resolve())}).info.run_id
            self._safely(self._log_params, config)
            from ..run.atomic import write_json

            write_json(run.path / MLFLOW_RUN, {"tracking_uri": config.mlflow, "run_id": self.run_id,
                                               "experiment": EXPERIMENT})

    def _log_params(self, config: TrainConfig):
        from mlflow.entities import Param

        params = [Param(key, json.dumps(value) if isinstance(value, dict) else str(value))
                  for key, value in config.to_dict().items()]
        for start in range(0, len(params), 100):
            self.client.log_batch(self.run_id, params=params[start:start + 100])

    def on_epoch_end(self, epoch, logs=None):  # after imgclf's callbacks: history.csv has the epoch
        history = self.run.read_history()
        if len(history.get("epoch", ())):
            self._safely(self._log_row, {key: values[-1] for key, values in history.items()})

    def _log_row(self, row: dict):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(metric_key(key), float(value), now, int(row["epoch"])) for key, value in row.items()
                   if key != "epoch" and value is not None and np.isfinite(value)]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[start:start + 1000])

    def finish(self, status: str = "FINISHED"):
        """Log the run folder's results as artifacts (finished runs) and close the MLflow run."""
        if status == "FINISHED":
            for path in sorted(self.run.path.iterdir()):
                if path.is_file() and path.suffix in ARTIFACT_SUFFIXES and not path.name.startswith("."):
                    self._safely(self.client.log_artifact, self.run_id, str(path))
        self._safely(self.client.set_terminated, self.run_id, status)

    def _safely(self, call, *args):
        try:
            call(*args)
        except Exception as exc:
            if not self.warned:
                print(f"warning: MLflow ({self.uri}): {type(exc).__name__}: {_first_line(exc)}; training goes on",
                      file=sys.stderr)
                self.warned = True


def metric_key(column: str) -> str:
    """A history column as an MLflow metric name (letters, digits, _ - . / and spaces):
    val_f1[cat] -> val_f1/cat."""
    key = re.sub(r"\[(.*)\]$", r"/\1", column)
    return re.sub(r"[^\w\-./ ]", "_", key)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""
