"""Replay epoch times through the `--time-budget` guard, on its own clock: what plans it makes.

    python benchmarks/replay_guard.py RUN [RUN ...] [--rev REV]
    python benchmarks/replay_guard.py --drift 0.08 [--trials 2000] [--rev REV]

With run folders: each run's budget.json and history.csv's epoch seconds go through the guard
(later epochs than the run had at its median), and it prints the plans after each epoch, how
many ran, whether the last ran where its plan ended (the step-size schedule annealed) and
where the run would end against its budget. `--rev` replays the guard of that git revision
too (`git show REV:src/imgclf/training/budget.py`), beside the working tree's.

With `--drift D`: plans of 9 epochs of 60 s in 10 minutes, epochs drawn uniformly from
60 x (1 +- D) in 1-second steps; the share of runs that stop before their plan's end (not
annealed), the mean epochs run and the latest end. A replay measures the guard's decisions,
not the machine: an epoch's time here is what history.csv recorded.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path
from types import SimpleNamespace

from imgclf.models.muon import LinearDecay

GUARD = "src/imgclf/training/budget.py"


def guard_module(source: str, name: str) -> dict:
    """The guard's module from its source text, as a package member (its relative imports)."""
    module = types.ModuleType(f"imgclf.training._replay_{name}")
    module.__package__ = "imgclf.training"
    sys.modules[module.__name__] = module
    exec(compile(source, f"{name}:{GUARD}", "exec"), module.__dict__)
    return module.__dict__


def replay(guard: dict, plan: dict, seconds: list[float], steps: int = 40) -> dict:
    """The guard's plans over `seconds`, with `plan` (a budget.json) on a clock moved only here."""
    now = [0.0]
    guard["clock"] = lambda: now[0]
    budget = guard["BudgetPlan"](**plan)
    callback = guard["TimeBudgetGuard"](budget, started=time.perf_counter() - plan["spent_s"], verbose=False)
    schedule = LinearDecay(budget.epochs * steps)
    model = SimpleNamespace(stop_training=False, optimizer=SimpleNamespace(_learning_rate=schedule))
    callback.set_model(model)
    callback.set_params({"epochs": callback.ceiling})
    now[0] += plan["tracing_s"]
    plans = []
    for epoch, took in enumerate(seconds):
        callback.on_epoch_begin(epoch)
        now[0] += took
        callback.on_epoch_end(epoch)
        plans.append(callback.epochs)
        if model.stop_training:
            break
    end = plan["spent_s"] + now[0] + plan["finish_s"]
    return {"plans": plans, "ran": len(plans), "annealed": len(plans) == callback.epochs,
            "of_budget": end / (plan["minutes"] * 60)}


def moves(plans: list[int]) -> str:
    kept = [p for i, p in enumerate(plans) if i == 0 or p != plans[i - 1]]
    return " -> ".join(map(str, kept))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="*", help="run folders trained with --time-budget")
    parser.add_argument("--rev", help="also replay the guard of this git revision")
    parser.add_argument("--drift", type=float, help="synthetic epochs of 60 s x (1 +- DRIFT) instead of runs")
    parser.add_argument("--trials", type=int, default=2000)
    args = parser.parse_args(argv)
    if not args.runs and args.drift is None:
        parser.error("give run folders or --drift")
    guards = {"working tree": guard_module(Path(GUARD).read_text(), "tree")}
    if args.rev:
        old = subprocess.run(["git", "show", f"{args.rev}:{GUARD}"], capture_output=True, text=True, check=True)
        guards = {args.rev: guard_module(old.stdout, "rev"), **guards}
    for run in args.runs:
        plan = json.loads((Path(run) / "budget.json").read_text())
        with open(Path(run) / "history.csv", newline="") as f:
            seconds = [float(row["seconds"]) for row in csv.DictReader(f)]
        seconds += [statistics.median(seconds)] * 30
        print(run)
        for name, guard in guards.items():
            r = replay(guard, plan, seconds)
            print(f"  {name:>14}: plans {moves(r['plans'])}, {r['ran']} epochs, "
                  f"{'annealed' if r['annealed'] else 'STOPPED before its plan ended'}, ends at {r['of_budget']:.0%}")
    if args.drift is not None:
        lows = range(round(60 * (1 - args.drift)), round(60 * (1 + args.drift)) + 1)
        plan = {"minutes": 10, "epochs": 9, "max_epochs": 100, "step_s": 1.0, "epoch_s": 60.0, "finish_s": 10.0,
                "spent_s": 0.0, "tracing_s": 0.0}
        for name, guard in guards.items():
            draw = random.Random(1)
            results = [replay(guard, plan, [float(draw.choice(lows)) for _ in range(20)], steps=7)
                       for _ in range(args.trials)]
            print(f"drift +-{args.drift:.0%}, {name:>14}: not annealed "
                  f"{sum(not r['annealed'] for r in results) / len(results):.1%}, epochs "
                  f"{statistics.mean(r['ran'] for r in results):.2f} on average, latest end "
                  f"{max(r['of_budget'] for r in results):.1%} of the budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
