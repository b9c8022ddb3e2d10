"""Never lose a run: SIGKILL at random moments (some during a checkpoint write), resume,
and get exactly the run an uninterrupted training gives; --deterministic reproducibility.

With --deterministic, histories are compared exactly: that they are identical is what the
README promises (deterministic ops, the whole state in the checkpoint, the data's order and
augmentation a function of (seed, epoch) alone)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor

import keras
import numpy as np
import pytest

from imgclf import TrainConfig

from conftest import (
    history,
    make_image_folder,
    read_csv,
    resumed_history,
    run_cli,
    run_main,
    train_with_copies,
    write_backbone_weights,
)

pytestmark = pytest.mark.slow  # trainings, killed and resumed

EPOCHS = 6
# 48x48 images make the seed model's Dense layer large (0.6 M weights: a checkpoint of ~10 MB),
# so a checkpoint write lasts long enough to be hit by a kill.
# --calibrate none: what is resumed is the training (the last step, calibration, has its own tests)
TRAIN_ARGS = ["--epochs", str(EPOCHS), "--image-size", "48", "--batch-size", "16", "--deterministic",
              "--calibrate", "none"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("resume") / "images", per_class=20)


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory):
    """The run no kill interrupts, trained in this process (a fresh session, whose layer names
    are those of a new process): every resume below, each in a process of its own, must give
    its history exactly."""
    run = tmp_path_factory.mktemp("whole") / "run"
    keras.backend.clear_session()
    result = run_main("train", "--data-dir", data, *TRAIN_ARGS, "--out", run)
    assert result.returncode == 0, result.stderr[-3000:]
    return run


def best_val_loss(run):
    with zipfile.ZipFile(run / "best_model.keras") as archive:
        return json.loads(archive.read("imgclf.json"))["val_loss"]


def start(args):
    return subprocess.Popen([sys.executable, "-m", "imgclf.cli", *map(str, args)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def partial_checkpoints(run):
    return set(run.glob(".checkpoint.npz.partial-*")) if run.exists() else set()


def kill_during_checkpoint_write(process, run, nth):
    """SIGKILL as soon as this process's nth write of checkpoint.npz has begun (its temporary
    file exists; those a killed process left before are not its own)."""
    stale = partial_checkpoints(run)
    seen, writing = 0, False
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and process.poll() is None:
        partial = bool(partial_checkpoints(run) - stale)
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


def assert_files_whole(run):
    """Whatever a kill interrupted, every file already in the folder is complete."""
    if (run / "history.csv").exists():
        read_csv(run / "history.csv")
    if (run / "checkpoint.npz").exists():
        np.load(run / "checkpoint.npz")["meta"]
    if (run / "best_model.keras").exists():
        best_val_loss(run)


def assert_resumes_to(run, expected, what):
    result = run_cli("train", "--resume", run)
    assert result.returncode == 0, f"{what}: {result.stderr[-3000:]}"
    assert not list(run.glob(".*.partial-*")), "temporary files left behind"
    got = history(run)
    assert [row[0] for row in got] == [str(e) for e in range(1, EPOCHS + 1)]  # every epoch exactly once
    assert got == expected, f"{what}: resumed history differs from the uninterrupted run"
    losses = [float(row[3]) for row in got]
    assert best_val_loss(run) == pytest.approx(min(losses), rel=1e-5)
    assert json.loads((run / "metrics.json").read_text())["best_epoch"] == 1 + int(np.argmin(losses))


def kill_at_random_moment(data, run, seconds, expected):
    process = start(["train", "--data-dir", data, *TRAIN_ARGS, "--out", run])
    kill_after(process, run, seconds)
    assert process.returncode == -signal.SIGKILL, f"kill at {seconds:.1f} s: the run ended before the kill"
    assert_files_whole(run)
    assert_resumes_to(run, expected, f"killed at {seconds:.1f} s")


def test_sigkill_at_random_moments_then_resume(data, uninterrupted, tmp_path):
    """One run killed three times inside a checkpoint write (the first write of the fresh
    process, so before any checkpoint was complete, then the second write of each resumed
    one), and, meanwhile, a fresh run killed at a random moment; each then resumed to the end.
    Each resume is a new process, whose epochs must be those of the uninterrupted run exactly:
    --deterministic's promise, two runs of the same command, checked across processes."""
    expected = history(uninterrupted)
    assert [row[0] for row in expected] == [str(e) for e in range(1, EPOCHS + 1)]
    assert len({row[3] for row in expected}) > 1  # the losses do move: not a frozen model
    rng = random.Random(7)
    seconds = json.loads((uninterrupted / "metrics.json").read_text())["train_seconds"]  # loading included
    moments = [rng.uniform(0.1, 0.9) * seconds]  # one: the kills in checkpoint writes below are the harder case
    with ThreadPoolExecutor(1) as pool:  # beside the other runs: this process only waits for them
        timed = pool.submit(lambda: [kill_at_random_moment(data, tmp_path / f"killed_at{i}", when, expected)
                                     for i, when in enumerate(moments)])
        run = tmp_path / "killed_writing"
        killed_mid_write = 0
        for i, nth in enumerate((1, 2, 2)):  # at most 1 + 2 + 2 epochs done: the last resume still trains
            args = ["train", "--resume", run] if i else ["train", "--data-dir", data, *TRAIN_ARGS, "--out", run]
            process = start(args)
            assert kill_during_checkpoint_write(process, run, nth), f"kill {i}: no checkpoint write seen"
            assert process.returncode == -signal.SIGKILL, f"kill {i}: the run ended before the kill"
            killed_mid_write += bool(partial_checkpoints(run))
            assert_files_whole(run)
        assert killed_mid_write >= 2, "fewer than two kills landed inside a checkpoint write"
        assert_resumes_to(run, expected, "killed in checkpoint writes")
        timed.result()


def assert_clean_error(result, fragment):
    assert result.returncode != 0 and "Traceback" not in result.stderr and fragment in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_resume_rejects_other_options_and_non_runs(tmp_path):
    assert_clean_error(run_main("train", "--resume", tmp_path, "--epochs", "3"), "--epochs")
    assert_clean_error(run_main("train", "--resume", tmp_path), "not a run folder")


def test_resume_refuses_changed_data_and_finishes_a_completed_run(data, uninterrupted, tmp_path):
    run = tmp_path / "copy"
    shutil.copytree(uninterrupted, run)
    keras.backend.clear_session()  # layer names restart, as in the fresh process that resumes a run
    result = run_main("train", "--resume", run)  # already complete: only the final evaluation runs again
    assert result.returncode == 0, result.stderr[-3000:]
    assert history(run) == history(uninterrupted)
    assert json.loads((run / "metrics.json").read_text())["resumed_after_epoch"] == EPOCHS

    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    next(changed.glob("red/*.png")).unlink()
    config = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**config, "data_dir": str(changed)}))
    assert_clean_error(run_main("train", "--resume", run), "data differs")


@pytest.mark.parametrize("model, widths, residuals", [
    ("fast-large", [128, 128, 384, 384, 384, 384], 0),
    ("fast-deep", [128, 128, 128, 384, 384, 384, 384, 384, 384], 3),
], ids=["fast-large", "fast-deep"])
def test_fast_recipe_resumes_exactly(model, widths, residuals, tmp_path):
    """The fast recipes have more state (Muon and SGD momenta, a whitening bias that freezes
    after a step count, a schedule by step): resumed after its first epoch, a run must still
    give the uninterrupted run's history. (Kills of real processes: the test above.) On issue
    26's two recipes: fast-large (airbench95's widths) and fast-deep (the same widths with a
    residual third conv per block), each of which also saves, loads and exports like the
    others. With a moving average of the weights (--ema, which the README's 2 x T14 command
    adds to fast-large), whose average and swap are state too."""
    from imgclf.export.writers import export_model
    from imgclf.inference.modelio import load_model

    data = make_image_folder(tmp_path / "images", per_class=12)
    config = TrainConfig(data_dir=str(data), model=model, epochs=3, image_size=16, batch_size=8,
                         ema=0.9, deterministic=True, calibrate="none", out=str(tmp_path / "whole"), verbose=0)
    whole = train_with_copies(config, (1,), tmp_path)
    assert resumed_history(tmp_path / "after1") == history(whole)
    assert json.loads((tmp_path / "after1" / "metrics.json").read_text())["resumed_after_epoch"] == 1
    loaded = load_model(whole / "best_model.keras")
    assert [layer.filters for layer in loaded.model.layers if isinstance(layer, keras.layers.Conv2D)][1:] == widths
    assert sum(type(layer).__name__ == "Add" for layer in loaded.model.layers) == residuals
    report = export_model(whole / "best_model.keras", "onnx", verbose=False)
    assert report.agreement == 1.0 and report.images >= 36


def test_fine_tuning_resumes_in_the_middle_of_phase_two(tmp_path):
    """A pretrained backbone trains in two phases (frozen, then unfrozen with a new optimizer).
    Resumed after epoch 2, in the middle of phase 2 (the top 2 blocks of the nested backbone
    unfrozen again, phase 2's optimizer state restored), it gives the uninterrupted history.
    (A resume at the phase change itself: --init's, in test_transfer.py; the top 2 blocks: a
    smaller training step to trace than all of them.)"""
    weights = write_backbone_weights(tmp_path / "backbone.weights.h5")
    data = make_image_folder(tmp_path / "images", per_class=16)
    config = TrainConfig(data_dir=str(data), model="mobilenetv3small", weights=str(weights), epochs=3,
                         freeze_epochs=1, unfreeze="2", image_size=32, batch_size=8, deterministic=True,
                         calibrate="none", out=str(tmp_path / "whole"), verbose=0)
    expected = history(train_with_copies(config, (2,), tmp_path))
    rates = [float(row[8]) for row in expected]  # at each epoch's end
    assert len(expected) == 3 and rates[1] > max(rates[0], rates[2])  # phase 2's own schedule, started anew
    assert float(expected[-1][1]) < float(expected[1][1])  # phase 2 learns: not a frozen model
    assert resumed_history(tmp_path / "after2") == expected
    assert json.loads((tmp_path / "after2" / "metrics.json").read_text())["resumed_after_epoch"] == 2
