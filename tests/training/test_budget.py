"""--time-budget: the plan (fewer epochs for a smaller budget), the guard that ends a run in
time, and a resume that keeps the plan. The machine's speed is replaced by a fixed one where
a verdict depends on the plan, and the guard's clock by one the test moves, so that the
verdicts do not depend on this machine's speed (only the real loading of a few dozen tiny
images, before the guard starts, counts: 25 s of it would be needed to change one)."""

from __future__ import annotations

import csv
import json
import time

import keras
import pytest

from imgclf import TrainConfig, resume, train
from imgclf.errors import ImgclfError
from imgclf.training import budget
from imgclf.training.budget import MARGIN, Speed, plan_epochs

from conftest import make_image_folder, run_main

pytestmark = pytest.mark.slow  # trainings (one test is plain arithmetic)


def epochs_in_history(run) -> list[int]:
    with open(run / "history.csv", newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def metrics(run) -> dict:
    return json.loads((run / "metrics.json").read_text())


@pytest.fixture(scope="module")
def colours(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("budget") / "images", per_class=12, size=(16, 16))


def tiny(colours, tmp_path, name, **values) -> TrainConfig:
    keras.backend.clear_session()
    values = {"model": "fast-tiny", **values}
    return TrainConfig(data_dir=str(colours), image_size=16, batch_size=16, calibrate="none", verbose=0,
                       out=str(tmp_path / name), **values)


# A machine where a step takes 20 s: with one step an epoch, an epoch is ~20.4 s.
SLOW = Speed(step=20.0, forward=0.01, save=0.01, load=0.01, tracing=1.0)


@pytest.fixture
def slow_machine(monkeypatch):
    """The plan of a 20 s step. Its epochs then run far faster on the guard's real clock, which
    would grow the plan: these tests check the plan itself, so the guard may not grow it."""
    monkeypatch.setattr(budget, "measure_speed", lambda *args, **kwargs: SLOW)
    monkeypatch.setattr(budget, "GROW_LIMIT", 1)


class SlowEpochs(keras.callbacks.Callback):
    """Every epoch takes `seconds` more on the guard's clock, which moves only here."""

    def __init__(self, offset: list[float], seconds: float):
        super().__init__()
        self.offset, self.seconds = offset, seconds

    def on_train_batch_end(self, batch, logs=None):
        if batch == 0:
            self.offset[0] += self.seconds


def learning_rates(run) -> list[float]:
    with open(run / "history.csv", newline="") as handle:
        return [float(row["learning_rate"]) for row in csv.DictReader(handle)]


# ------------------------------------------------------------------------------------ the plan

def test_plan_takes_the_epochs_that_fit_and_fewer_for_less_time():
    fits = [plan_epochs(minutes * 60, spent_s=10, tracing_s=5, epoch_s=30, finish_s=20, max_epochs=100)
            for minutes in (2, 5, 10)]
    assert fits == [int((m * 60 * (1 - MARGIN) - 35) // 30) for m in (2, 5, 10)] == [2, 8, 18]
    assert plan_epochs(600, 10, 5, 30, 20, max_epochs=6) == 6  # --epochs is the most it picks
    with pytest.raises(ImgclfError, match=r"leaves no time for one epoch .* give at least 1.3 min"):
        plan_epochs(60, spent_s=10, tracing_s=5, epoch_s=30, finish_s=30, max_epochs=100)


class Interrupt(keras.callbacks.Callback):
    """A Ctrl-C as the run's epoch `after` + 1 begins."""

    def __init__(self, after: int):
        super().__init__()
        self.after = after

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.after:
            raise KeyboardInterrupt


def test_a_smaller_budget_plans_fewer_epochs_and_the_run_keeps_its_plan(colours, tmp_path, slow_machine,
                                                                           monkeypatch):
    """Two runs on the same data at 2 and 1 minutes: the plan is in budget.json, config.json
    (epochs) and metrics.json, the step-size schedule spans it (it ends near zero), and each
    run trains exactly the epochs it planned. The 1-minute run is interrupted after its first
    epoch and resumes with the planned epochs, without timing the machine again."""
    runs = {2: train(tiny(colours, tmp_path, "m2", time_budget=2))}
    # what the process did before (the CLI's imports) counts when `started` says so: 31 s more
    # spent, at least one epoch (~20.4 s) fewer, whatever the two runs' own loading took (up
    # to 10 s apart)
    with pytest.raises(KeyboardInterrupt):  # the plan is all it needs: stopped as epoch 1 begins
        train(tiny(colours, tmp_path, "m2-early", time_budget=2), extra_callbacks=[Interrupt(after=0)],
              started=time.perf_counter() - 31)
    early_plan = json.loads((tmp_path / "m2-early" / "budget.json").read_text())
    assert early_plan["spent_s"] >= 31
    assert early_plan["epochs"] < json.loads((runs[2] / "budget.json").read_text())["epochs"]
    config = tiny(colours, tmp_path, "m1", time_budget=1)
    with pytest.raises(KeyboardInterrupt):
        train(config, extra_callbacks=[Interrupt(after=1)])
    runs[1] = tmp_path / "m1"
    assert epochs_in_history(runs[1]) == [1]

    def no_probe(*args, **kwargs):
        raise AssertionError("a resumed run must not time the machine again")

    monkeypatch.setattr(budget, "measure_speed", no_probe)
    keras.backend.clear_session()
    resume(runs[1], verbose=0)
    assert metrics(runs[1])["resumed_after_epoch"] == 1
    planned = {}
    for minutes, run in runs.items():
        plan = json.loads((run / "budget.json").read_text())
        assert plan["minutes"] == minutes and plan["step_s"] == SLOW.step and plan["max_epochs"] == 100
        assert json.loads((run / "config.json").read_text())["epochs"] == plan["epochs"]
        assert epochs_in_history(run) == list(range(1, plan["epochs"] + 1))  # the guard never had to stop it
        assert metrics(run)["time_budget"]["epochs_run"] == plan["epochs"]
        assert metrics(run)["time_budget"]["stopped_after_epoch"] is None
        planned[minutes] = plan["epochs"]
    assert 1 <= planned[1] < planned[2], planned
    assert planned[2] - planned[1] in (2, 3)  # 59 s more at ~20.4 s an epoch


def run_guard_alone(monkeypatch, epochs: int, epoch_s: float, seconds: list[float]):
    """A guard on its own clock, its plan `epochs` of `epoch_s` in 10 minutes (10 s for the
    final evaluation), a linear decay of 7 steps an epoch, and a fit that runs to the guard's
    ceiling; the epochs take `seconds` until the guard stops the fit. Returns (the guard, its
    schedule, the plan after each epoch)."""
    from types import SimpleNamespace

    from imgclf.models.muon import LinearDecay

    offset = [0.0]
    monkeypatch.setattr(budget, "clock", lambda: offset[0])
    plan = budget.BudgetPlan(minutes=10, epochs=epochs, max_epochs=100, step_s=1.0, epoch_s=epoch_s, finish_s=10.0,
                             spent_s=0.0, tracing_s=0.0)
    guard = budget.TimeBudgetGuard(plan, started=time.perf_counter(), verbose=False)
    schedule = LinearDecay(epochs * 7)
    model = SimpleNamespace(stop_training=False, optimizer=SimpleNamespace(_learning_rate=schedule))
    guard.set_model(model)
    assert guard.ceiling == 2 * epochs and guard.can_grow(model.optimizer)
    guard.set_params({"epochs": guard.ceiling})
    plans = []
    for epoch, took in enumerate(seconds):
        guard.on_epoch_begin(epoch)
        offset[0] += took
        guard.on_epoch_end(epoch)
        plans.append(guard.epochs)
        if model.stop_training:
            break
    return guard, schedule, plans


def test_the_guard_grows_the_plan_and_a_stop_after_the_planned_epochs_counts(monkeypatch):
    """10 epochs planned in 10 minutes, a fit that runs to the ceiling of 20. Epochs of 30 s:
    after epoch 1, 18 more fit at that pace, 1% of the budget kept free, so the plan grows to
    19 and the schedule's end with it; at that pace no more fit later, and the plan stays 19.
    Epoch 12 then takes 300 s and the budget is spent: the run stops there, after more epochs
    than planned, and that stop is recorded (the epochs run are 12, not the plan's 19)."""
    guard, schedule, plans = run_guard_alone(monkeypatch, 10, 30.0, [30.0] * 11 + [300.0] + [30.0] * 8)
    assert plans == [19] * 12 and schedule.total == 19 * 7
    assert guard.stopped and guard.stopped_epoch == 12
    assert guard.reason.startswith("the next epoch and the final evaluation would not end")


def test_one_slow_epoch_shrinks_the_plan_and_the_next_at_the_usual_pace_grow_it_back(monkeypatch):
    """9 epochs planned in 10 minutes, at 60 s an epoch. Epoch 2 stalls (90 s): at that pace
    6 epochs fit, and the plan shrinks to 6. The next epochs are back to 60 s: the pace is the
    median of the last three (60 s), and the plan grows, keeping room for one more epoch as
    slow as the stall while it is among the last three (to 8 after epoch 3), then back to 9,
    the schedule's end with it; the run ends there with 20 s to spare. (Judged by the slowest
    epoch alone, it would have grown only to 7 after epoch 3.)"""
    guard, schedule, seen = run_guard_alone(monkeypatch, 9, 60.0, [60.0, 90.0] + [60.0] * 16)
    assert seen == [9, 6, 8, 8] + [9] * 5 and schedule.total == 9 * 7
    assert not guard.stopped and guard.used() + guard.finish_s <= 600


def test_the_guard_grows_no_plan_whose_last_epoch_one_ordinary_epoch_would_leave_without_time(monkeypatch):
    """Epochs that drift by +-7% (a VM's ordinary drift, as a 2 x T14 fast-large run's did), 9
    planned of 60 s in 10 minutes. After epoch 7 (414 s used), at the median pace of 56 s, 3
    more fit with the 1% margin, a plan of 10, but not if one of them is as slow as epoch 6
    (60 s). Grown to 10, epoch 9 at 62 s would leave 58 s for epoch 10 at that pace, and the
    run would stop after epoch 9 with its step-size schedule a tenth of its peak short of
    annealed. The guard keeps the plan at 9 instead: the run ends annealed, in its budget."""
    seconds = [60.0, 64.0, 60.0, 58.0, 56.0, 60.0, 56.0, 56.0, 62.0] + [62.0] * 6
    guard, schedule, seen = run_guard_alone(monkeypatch, 9, 60.0, seconds)
    assert seen == [9] * 9 and schedule.total == 9 * 7
    assert not guard.stopped and guard.used() + guard.finish_s <= 600


@pytest.mark.parametrize("model", ["fast-tiny", "seed"])
def test_the_guard_ends_the_run_in_time_when_epochs_are_slower_than_timed(model, colours, tmp_path, monkeypatch):
    """The plan says 10 epochs (a fast machine), but every epoch then takes 50 s more on the
    guard's clock, with 3 minutes and ~5 s of final evaluation. After epoch 1 (~52 s used)
    two more fit. The fast recipe's plan shrinks to 3 epochs and its step-size schedule with
    it (the step size is 0 at the end of epoch 3); the seed recipe's Adam cannot move its
    schedule, so it goes on while one more epoch fits and stops after epoch 3 (~152 s used).
    Either way the best model is kept and the run finishes as usual."""
    monkeypatch.setattr(budget, "measure_speed", lambda *a, **k: Speed(0.01, 0.0001, 0.01, 0.01, 0.1))
    offset = [1000.0]
    monkeypatch.setattr(budget, "clock", lambda: offset[0])  # moves only when the test moves it
    run = train(tiny(colours, tmp_path, "guarded", model=model, time_budget=3, epochs=10),
                extra_callbacks=[SlowEpochs(offset, 50.0)])
    assert json.loads((run / "budget.json").read_text())["epochs"] == 10
    assert epochs_in_history(run) == [1, 2, 3]
    spent = metrics(run)["time_budget"]
    assert spent["epochs_run"] == 3 and spent["stopped_after_epoch"] == 3 and spent["grown_to_epochs"] is None
    rates = learning_rates(run)
    if model == "fast-tiny":
        assert spent["shrunk_to_epochs"] == 3
        assert rates[-1] == pytest.approx(0.0, abs=1e-6) and rates[0] > 0.5  # annealed over 3 epochs, not 10
    else:
        assert spent["shrunk_to_epochs"] is None and rates[-1] == rates[0]  # constant: nothing to shrink
    assert (run / "best_model.keras").exists() and metrics(run)["best_epoch"] in (1, 2, 3)


@pytest.mark.parametrize("model", ["fast-tiny", "seed"])
def test_the_guard_grows_the_plan_when_epochs_are_faster_than_timed_and_a_resume_keeps_it(
        model, colours, tmp_path, monkeypatch):
    """The probe times a 60 s step (one step an epoch): 4 minutes buy 3 epochs (~60.4 s each,
    after ~7 s of final evaluation). The epochs then take 40 s on the guard's clock. After
    epoch 1, 4 more fit: the fast recipe's plan grows to 5 epochs (its ceiling is 2 x 3) and
    its step-size schedule with it (0 at the end of epoch 5). Killed after epoch 4, the run
    resumes with the grown plan and ends after epoch 5, although the fit runs to its ceiling
    of 6. The seed recipe's Adam has no schedule to move: it keeps its 3 epochs."""
    monkeypatch.setattr(budget, "measure_speed", lambda *a, **k: Speed(60.0, 0.01, 0.01, 0.01, 1.0))
    offset = [1000.0]
    monkeypatch.setattr(budget, "clock", lambda: offset[0])

    config = tiny(colours, tmp_path, "grown", model=model, time_budget=4)
    extra = [SlowEpochs(offset, 40.0), Interrupt(after=4)]
    run = tmp_path / "grown"
    if model == "seed":
        train(config, extra_callbacks=extra)
    else:
        with pytest.raises(KeyboardInterrupt):
            train(config, extra_callbacks=extra)
        assert epochs_in_history(run) == [1, 2, 3, 4]  # one past the plan of 3
        keras.backend.clear_session()
        resume(run, verbose=0)
    assert json.loads((run / "budget.json").read_text())["epochs"] == 3
    spent = metrics(run)["time_budget"]
    assert spent["stopped_after_epoch"] is None and spent["shrunk_to_epochs"] is None
    rates = learning_rates(run)
    if model == "seed":
        assert epochs_in_history(run) == [1, 2, 3] and spent["grown_to_epochs"] is None and rates[-1] == rates[0]
        return
    assert epochs_in_history(run) == [1, 2, 3, 4, 5]
    assert spent["grown_to_epochs"] == 5 and spent["epochs_run"] == 5 and metrics(run)["resumed_after_epoch"] == 4
    assert rates[-1] == pytest.approx(0.0, abs=1e-6) and rates[-2] > 0.1  # annealed over 5 epochs, not 3
    assert (run / "best_model.keras").exists() and (run / "last_model.keras").exists()


@pytest.mark.parametrize("args, fragment", [
    (["--time-budget", "0"], "time_budget must be a positive number of minutes"),
    (["--time-budget", "0.01"], "leaves no time for one epoch"),
])
def test_impossible_budgets_are_one_line_errors(colours, tmp_path, args, fragment):
    result = run_main("train", "--data-dir", str(colours), "--model", "fast-tiny", "--image-size", "16",
                      "--out", str(tmp_path / "run"), *args)
    assert result.returncode != 0 and fragment in result.stderr, result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning:")]  # tiny data
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
