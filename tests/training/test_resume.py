"""Never lose a run: SIGKILL at random moments (some during a checkpoint write), resume,
and get exactly the run an uninterrupted training gives; --deterministic reproducibility."""

import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from conftest import make_image_folder, read_csv, run_cli, write_backbone_weights

pytestmark = pytest.mark.slow  # trainings in subprocesses, killed and resumed

EPOCHS = 6
# 48x48 images make the seed model's Dense layer large (0.6 M weights: a checkpoint of ~10 MB),
# so a checkpoint write lasts long enough to be hit by a kill.
TRAIN_ARGS = ["--epochs", str(EPOCHS), "--image-size", "48", "--batch-size", "16", "--deterministic"]
METRIC_COLUMNS = ["epoch", "loss", "accuracy", "val_loss", "val_accuracy", "val_f1", "val_precision",
                  "val_recall", "learning_rate"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("resume") / "images", per_class=20)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("whole") / "run"
    result = run_cli("train", "--data-dir", data, *TRAIN_ARGS, "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def history(run):
    rows = read_csv(run / "history.csv")
    return [[row[c] for c in METRIC_COLUMNS] for row in rows]  # all but the epoch durations


def best_val_loss(run):
    with zipfile.ZipFile(run / "best_model.keras") as archive:
        return json.loads(archive.read("imgclf.json"))["val_loss"]


def start(args):
    return subprocess.Popen([sys.executable, "-m", "imgclf.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def kill_during_checkpoint_write(process, run, nth):
    """SIGKILL as soon as the nth write of checkpoint.npz has begun (its temporary file exists)."""
    seen, writing = 0, False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        partial = any(run.glob(".checkpoint.npz.partial-*")) if run.exists() else False
        if partial and not writing:
            seen += 1
            if seen == nth:
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
        writing = partial
        time.sleep(0.0005)
    return False


def kill_after(process, run, seconds):
    """SIGKILL `seconds` after the run folder appears (training has started by then)."""
    deadline = time.monotonic() + 240
    while not (run / "config.json").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(seconds)
    process.send_signal(signal.SIGKILL)
    process.wait()


def test_sigkill_at_random_moments_then_resume(data, uninterrupted, tmp_path):
    expected = history(uninterrupted)
    assert [row[0] for row in expected] == [str(e) for e in range(1, EPOCHS + 1)]
    rng = random.Random(7)
    seconds = json.loads((uninterrupted / "metrics.json").read_text())["train_seconds"]  # loading included
    trials = [("checkpoint", 1), ("checkpoint", 3), ("checkpoint", 5),
              *[("time", rng.uniform(0.1, 0.9) * seconds) for _ in range(3)]]
    killed_mid_write = 0
    for i, (how, when) in enumerate(trials):
        run = tmp_path / f"trial{i}"
        process = start(["train", "--data-dir", data, *TRAIN_ARGS, "--out", run])
        if how == "checkpoint":
            assert kill_during_checkpoint_write(process, run, when), f"trial {i}: no checkpoint write seen"
            killed_mid_write += any(run.glob(".checkpoint.npz.partial-*"))
        else:
            kill_after(process, run, when)
        assert process.returncode == -signal.SIGKILL, f"trial {i}: the run ended before the kill"
        # Whatever the kill interrupted, every file already in the folder is complete.
        if (run / "history.csv").exists():
            read_csv(run / "history.csv")
        if (run / "checkpoint.npz").exists():
            np.load(run / "checkpoint.npz")["meta"]
        if (run / "best_model.keras").exists():
            best_val_loss(run)

        result = run_cli("train", "--resume", run)
        assert result.returncode == 0, f"trial {i}: {result.stderr[-3000:]}"
        assert not list(run.glob(".*.partial-*")), "temporary files left behind"
        got = history(run)
        assert [row[0] for row in got] == [str(e) for e in range(1, EPOCHS + 1)]  # every epoch exactly once
        assert got == expected, f"trial {i} ({how} {when}): resumed history differs from the uninterrupted run"
        losses = [float(row[3]) for row in got]
        assert best_val_loss(run) == pytest.approx(min(losses), rel=1e-5)
        assert json.loads((run / "metrics.json").read_text())["best_epoch"] == 1 + int(np.argmin(losses))
    assert killed_mid_write >= 2, "fewer than two kills landed inside a checkpoint write"


def test_deterministic_runs_have_identical_histories(data, uninterrupted, tmp_path):
    run = tmp_path / "again"
    result = run_cli("train", "--data-dir", data, *TRAIN_ARGS, "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert history(run) == history(uninterrupted)
    assert len({row[3] for row in history(run)}) > 1  # the losses do move: not a frozen model


def test_resume_rejects_other_options_and_non_runs(tmp_path):
    result = run_cli("train", "--resume", tmp_path, "--epochs", "3")
    assert result.returncode != 0 and "--epochs" in result.stderr and "Traceback" not in result.stderr
    result = run_cli("train", "--resume", tmp_path)
    assert result.returncode != 0 and "not a run folder" in result.stderr and "Traceback" not in result.stderr


def test_resume_refuses_changed_data_and_finishes_a_completed_run(data, uninterrupted, tmp_path):
    import shutil

    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    result = run_cli("train", "--resume", run)  # already complete: only the final evaluation runs again
    assert result.returncode == 0, result.stderr[-3000:]
    assert history(run) == history(uninterrupted)
    assert json.loads((run / "metrics.json").read_text())["resumed_after_epoch"] == EPOCHS

    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    next(changed.glob("red/*.png")).unlink()
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(changed)}))
    result = run_cli("train", "--resume", run)
    assert result.returncode != 0 and "data differs" in result.stderr and "Traceback" not in result.stderr


def test_fast_recipe_resumes_exactly(tmp_path):
    """The fast recipe has more state (Muon and SGD momenta, a whitening bias that freezes
    after a step count, a schedule by step): a kill after its first checkpoint, then --resume,
    must still give the uninterrupted run's history."""
    data = make_image_folder(tmp_path / "images", per_class=12)
    args = ["--model", "fast", "--epochs", "3", "--image-size", "16", "--batch-size", "8", "--deterministic"]
    whole = tmp_path / "whole"
    result = run_cli("train", "--data-dir", data, *args, "--out", whole)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "killed"
    process = start(["train", "--data-dir", data, *args, "--out", run])
    deadline = time.monotonic() + 240
    while not (run / "checkpoint.npz").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before the kill"
    result = run_cli("train", "--resume", run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert history(run) == history(whole)


def test_fine_tuning_resumes_across_the_phase_change_and_mid_phase_two(tmp_path):
    """A pretrained backbone trains in two phases (frozen, then unfrozen with a new optimizer).
    Killed while writing the checkpoint of epoch 2 (so resumed at the phase change) or of
    epoch 3 (resumed in the middle of phase 2), --resume gives the uninterrupted history.
    (The top 2 blocks unfrozen: a smaller training step to trace than all of them.)"""
    from imgclf.run.folder import RunFolder

    weights = write_backbone_weights(tmp_path / "backbone.weights.h5")
    data = make_image_folder(tmp_path / "images", per_class=16)
    args = ["--model", "mobilenetv3small", "--weights", weights, "--epochs", "4", "--freeze-epochs", "1",
            "--unfreeze", "2", "--image-size", "32", "--batch-size", "8", "--deterministic"]
    whole = tmp_path / "whole"
    result = run_cli("train", "--data-dir", data, *args, "--out", whole)
    assert result.returncode == 0, result.stderr[-3000:]
    expected = history(whole)
    assert len(expected) == 4 and len({row[8] for row in expected}) > 2  # two phases of step sizes
    assert float(expected[-1][1]) < float(expected[1][1])  # phase 2 learns: not a frozen model
    for nth in (2, 3):
        run = tmp_path / f"killed{nth}"
        process = start(["train", "--data-dir", data, *args, "--out", run])
        assert kill_during_checkpoint_write(process, run, nth), "no checkpoint write seen"
        assert process.returncode == -signal.SIGKILL, "the run ended before the kill"
        done = RunFolder(run).read_checkpoint()[0]["epoch"]
        assert done in (nth - 1, nth)  # the kill landed in the write of epoch nth's checkpoint, or just after
        result = run_cli("train", "--resume", run)
        assert result.returncode == 0, result.stderr[-3000:]
        assert f"resuming after epoch {done}" in result.stdout
        assert history(run) == expected, f"resumed after epoch {done}: history differs"
