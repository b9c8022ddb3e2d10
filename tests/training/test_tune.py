"""`imgclf tune`: a study killed with SIGKILL during its second trial continues with the same
command, losing no trial and counting none twice; its best config reproduces the best trial
through `train --config`; `compare` of its trials renders in a browser."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import keras
import pytest

from imgclf.training.tune import NOT_REPRODUCED, STUDY_DB

from conftest import headless_chromium, make_image_folder, run_main

pytestmark = pytest.mark.slow  # trains several runs and starts a new process
TRIALS = 3


def tune_args(data, study):
    return ["tune", "--data-dir", data, "--image-size", "16", "--out", study, "--trials", str(TRIALS),
            "--models", "seed", "--max-epochs", "5", "--calibrate", "none"]


def load_study(folder):
    import optuna

    return optuna.load_study(study_name="imgclf", storage=f"sqlite:///{folder / STUDY_DB}")


@pytest.fixture(scope="module")
def killed_and_continued(tmp_path_factory):
    """(data, study folder, the study's trials just after the kill, the continuation's output)."""
    from optuna.trial import TrialState

    root = tmp_path_factory.mktemp("tune")
    data = make_image_folder(root / "images", per_class=12, size=(16, 16))
    study = root / "study"
    process = subprocess.Popen([sys.executable, "-m", "imgclf.cli", *map(str, tune_args(data, study))],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    second = study / "trials" / "trial-0001" / "checkpoint.npz"
    deadline = time.monotonic() + 240
    while not second.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)  # mid second trial: its first epoch done, four to go
    process.wait()
    assert second.exists(), "the second trial never wrote its first checkpoint"
    at_kill = {t.number: t.state for t in load_study(study).get_trials()}
    assert at_kill == {0: TrialState.COMPLETE, 1: TrialState.RUNNING}, at_kill
    keras.backend.clear_session()
    result = run_main(*tune_args(data, study))
    assert result.returncode == 0, result.stderr
    return data, study, result


def test_killed_study_continues_without_losing_or_repeating_a_trial(killed_and_continued):
    from optuna.trial import TrialState

    _, folder, result = killed_and_continued
    trials = load_study(folder).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TRIALS  # the requested number, no more
    failed = [t for t in trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed] == [1] and failed[0].user_attrs["queued_again"]
    retried = [t for t in finished if t.user_attrs.get("retry_of") == 1]
    assert len(retried) == 1 and retried[0].params == failed[0].params  # the same settings, once
    others = [t.params for t in finished if t.user_attrs.get("retry_of") is None]
    assert all(a != b for i, a in enumerate(others) for b in others[i + 1:])  # new draws after the restart
    runs = [t.user_attrs["run"] for t in finished]
    assert len(set(runs)) == TRIALS and retried[0].user_attrs["run"] == failed[0].user_attrs["run"]
    # the interrupted trial's run continued from its checkpoint: each epoch once
    history = (folder / "trials" / "trial-0001" / "history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == list(range(1, 6))
    assert json.loads((folder / "trials" / "trial-0001" / "metrics.json").read_text())["resumed_after_epoch"] >= 1
    assert "trial 1 was interrupted: queued again" in result.stderr
    assert f"{TRIALS} trials finished" in result.stdout


def test_best_config_reproduces_the_best_trial_through_train_config(killed_and_continued, tmp_path):
    _, folder, _ = killed_and_continued
    study = load_study(folder)
    best = json.loads((folder / "trials" / f"trial-{study.best_trial.number:04d}" / "config.json").read_text())
    keras.backend.clear_session()
    result = run_main("train", "--config", folder / "best_config.json", "--out", tmp_path / "again", "--quiet")
    assert result.returncode == 0, result.stderr
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert {k: v for k, v in again.items() if k not in NOT_REPRODUCED} == {
        k: v for k, v in best.items() if k not in NOT_REPRODUCED}
    assert (folder / "best_model.keras").stat().st_size > 0


def test_a_study_folder_of_other_data_is_refused_untouched(killed_and_continued, tmp_path):
    _, folder, _ = killed_and_continued
    other = make_image_folder(tmp_path / "other", per_class=10, size=(16, 16), seed=5)
    before = {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}
    result = run_main(*tune_args(other, folder))
    assert result.returncode == 1 and "holds a study of other data" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert {p: p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()} == before


def test_compare_of_the_trials_renders_in_chromium(killed_and_continued, tmp_path):
    from selenium.webdriver.common.by import By

    _, folder, _ = killed_and_continued
    runs = sorted((folder / "trials").iterdir())
    result = run_main("compare", *runs, "--out", tmp_path / "compare")
    assert result.returncode == 0, result.stderr
    assert len((tmp_path / "compare" / "compare.csv").read_text().strip().splitlines()) == 1 + TRIALS
    page = tmp_path / "compare" / "compare.html"
    assert "http://" not in page.read_text() and "https://" not in page.read_text()
    driver = headless_chromium(tmp_path / "profile")
    try:
        driver.get(page.as_uri())
        rows = driver.find_elements(By.CSS_SELECTOR, "table.sortable tbody tr")
        assert sorted(r.find_element(By.TAG_NAME, "td").text for r in rows) == [r.name for r in runs]
        image = driver.find_element(By.TAG_NAME, "img")
        assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 600", image)
        header = driver.find_elements(By.CSS_SELECTOR, "table.sortable th")[10]  # val accuracy
        header.click()
        values = [float(r.find_elements(By.TAG_NAME, "td")[10].text) for r in
                  driver.find_elements(By.CSS_SELECTOR, "table.sortable tbody tr")]
        assert values == sorted(values)
        assert driver.get_log("browser") == []
    finally:
        driver.quit()
