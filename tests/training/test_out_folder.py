"""A finished run is never overwritten by a second `train --out` on its folder: refused with
one line, or with --overwrite moved aside whole, and the new run starts from nothing of it."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from imgclf import ImgclfError, TrainConfig, train
from imgclf.data.decode import file_hash

from conftest import run_main


@pytest.fixture
def finished(trained_run, tmp_path):
    """A copy of the shared finished run (its data, its folder, hashes of its main files)."""
    run = shutil.copytree(trained_run, tmp_path / "a")
    data = Path(json.loads((run / "config.json").read_text())["data_dir"])
    return data, run, {name: file_hash(run / name) for name in ("best_model.keras", "checkpoint.npz", "config.json")}


def test_a_second_train_on_a_finished_run_is_refused_and_the_run_survives(finished, tmp_path):
    data, run, hashes = finished
    result = run_main("train", "--data-dir", data, "--epochs", "1", "--image-size", "12", "--out", run)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("imgclf:")]
    assert len(lines) == 1 and f"--resume {run}" in lines[0] and "--overwrite" in lines[0]
    assert "decod" not in result.stderr and "run folder:" not in result.stdout  # refused before loading
    assert {name: file_hash(run / name) for name in hashes} == hashes
    with pytest.raises(ImgclfError, match="already holds a run"):  # the Python API too
        train(TrainConfig(data_dir=str(data), epochs=1, image_size=12, out=str(run), verbose=0))
    assert {name: file_hash(run / name) for name in hashes} == hashes


def test_a_folder_with_only_a_stale_checkpoint_is_a_run(tmp_path, finished):
    data, run, _ = finished
    reused = tmp_path / "reused"
    reused.mkdir()
    (reused / "checkpoint.npz").write_bytes((run / "checkpoint.npz").read_bytes())
    with pytest.raises(ImgclfError, match="checkpoint.npz"):
        train(TrainConfig(data_dir=str(data), epochs=1, image_size=12, out=str(reused), verbose=0))


@pytest.mark.slow  # a training
def test_a_folder_with_other_files_is_not_a_run(tmp_path, finished):
    data, _, _ = finished
    reused = tmp_path / "reused"
    reused.mkdir()
    (reused / "notes.txt").write_text("mine")
    assert train(TrainConfig(data_dir=str(data), epochs=1, image_size=12, out=str(reused), verbose=0)) == reused


@pytest.mark.slow  # a training
def test_overwrite_moves_the_old_run_aside_and_starts_afresh(finished, tmp_path, capsys):
    data, run, hashes = finished
    (run / "best_model.onnx").write_bytes(b"an export of the old model")
    train(TrainConfig(data_dir=str(data), epochs=2, image_size=12, seed=7, out=str(run), overwrite=True, verbose=0))
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("a.old-")]
    assert len(aside) == 1 and str(aside[0]) in capsys.readouterr().err
    assert {name: file_hash(aside[0] / name) for name in hashes} == hashes  # the earlier run, whole
    assert (aside[0] / "best_model.onnx").exists() and not (run / "best_model.onnx").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["resumed_after_epoch"] is None  # nothing restored from the old checkpoint
    assert json.loads((run / "config.json").read_text())["seed"] == 7
    history = np.genfromtxt(Path(run) / "history.csv", delimiter=",", names=True)
    assert history["epoch"].tolist() == [1, 2]
