"""Does `imgclf tune` beat the defaults on a small data set? (issue 25)

    python benchmarks/tune.py --set a --seed 0 --minutes 20 --work /tmp/tune-bench

Two data sets made from the CIFAR-10 folder (../shared/datasets/cifar10/train), each with a
held-out part that neither training nor the search ever sees (drawn with `--seed`):

  a: 10 classes x 100 images at 32 px to search on, and 10 x 100 more held out;
  b: 3 classes (airplane, cat, ship) x 150 photos upscaled to 96 px (bicubic, as the tests'
     photos are), and 3 x 150 more held out.

For each: `imgclf train` with no options (the seed recipe, the default) and with `--model auto`,
then `imgclf tune --minutes M` on the same images; the three kept models are measured on the
held-out images. Pruning: trials stopped early, and the share of their planned epochs they did
not run (what pruning saved, in trial equivalents). Writes WORK/SET-SEED/result.json and prints
one Markdown row.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar10" / "train"
SETS = {
    "a": {"classes": None, "per_class": 100, "size": 32},
    "b": {"classes": ("airplane", "cat", "ship"), "per_class": 150, "size": 96},
}


def make_set(name: str, seed: int, root: Path) -> tuple[Path, Path]:
    """(search folder, held-out folder), disjoint draws of the CIFAR-10 folder."""
    from PIL import Image

    spec = SETS[name]
    classes = spec["classes"] or sorted(p.name for p in CIFAR.iterdir() if p.is_dir())
    rng = np.random.default_rng(seed)
    search, held = root / "search", root / "heldout"
    if search.exists() and held.exists():
        return search, held
    for cls in classes:
        files = sorted((CIFAR / cls).iterdir())
        picked = rng.choice(len(files), 2 * spec["per_class"], replace=False)
        for part, indices in ((search, picked[:spec["per_class"]]), (held, picked[spec["per_class"]:])):
            (part / cls).mkdir(parents=True, exist_ok=True)
            for i in indices:
                source = files[i]
                if spec["size"] == 32:
                    shutil.copyfile(source, part / cls / source.name)
                else:
                    image = Image.open(source).convert("RGB").resize((spec["size"],) * 2, Image.BICUBIC)
                    image.save(part / cls / (source.stem + ".png"))
    return search, held


def held_out_accuracy(model: Path, held: Path, size: int) -> float:
    from imgclf import TrainConfig, evaluate

    return float(evaluate(model, TrainConfig(data_dir=str(held), image_size=size))["accuracy"])


def pruning_savings(folder: Path) -> dict:
    """Trials pruned, and the epochs they planned but did not run, in trial equivalents."""
    import optuna
    from optuna.trial import TrialState

    study = optuna.load_study(study_name="imgclf", storage=f"sqlite:///{folder / 'study.db'}")
    trials = study.get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    unrun = [1 - len(t.intermediate_values) / t.params["epochs"] for t in pruned]
    return {"trials": len(trials), "complete": sum(t.state == TrialState.COMPLETE for t in trials),
            "pruned": len(pruned), "failed": sum(t.state == TrialState.FAIL for t in trials),
            "saved_trial_equivalents": round(float(sum(unrun)), 2),
            "saved_share_of_pruned_epochs": round(float(np.mean(unrun)), 3) if unrun else 0.0}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=sorted(SETS), required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--minutes", type=float, default=20)
    parser.add_argument("--work", default="/tmp/tune-bench")
    args = parser.parse_args()
    import keras

    from imgclf import TrainConfig, train, tune

    root = Path(args.work) / f"{args.set}-{args.seed}"
    search, held = make_set(args.set, args.seed, root / "data")
    size = SETS[args.set]["size"]
    base = TrainConfig(data_dir=str(search), image_size=size, seed=args.seed, verbose=0)
    result = {"set": args.set, "seed": args.seed, "minutes": args.minutes, "search_images": sum(
        1 for _ in search.rglob("*.*")), "held_out_images": sum(1 for _ in held.rglob("*.*"))}
    for label, config in (("default", base), ("auto", base.replace(model="auto"))):
        keras.backend.clear_session()
        started = time.perf_counter()
        run = train(config.replace(out=str(root / label), overwrite=True))
        result[label] = {"model": json.loads((run / "config.json").read_text())["model"],
                         "held_out_accuracy": held_out_accuracy(run / "best_model.keras", held, size),
                         "seconds": round(time.perf_counter() - started, 1)}
        print(label, result[label], flush=True)
    started = time.perf_counter()
    tuned = tune(base, root / "study", minutes=args.minutes)
    if tuned.best_config is None:
        print("no trial completed in the time given", file=sys.stderr)
        return 1
    best_config = json.loads(tuned.best_config.read_text())
    result["tuned"] = {"best_trial": tuned.best_trial, "model": best_config["model"],
                       "settings": {k: best_config[k] for k in ("model", "learning_rate", "batch_size", "epochs",
                                                                "augment", "label_smoothing", "weight_decay", "ema")},
                       "held_out_accuracy": held_out_accuracy(tuned.best_model, held, size),
                       "seconds": round(time.perf_counter() - started, 1), **pruning_savings(root / "study")}
    (root / "result.json").write_text(json.dumps(result, indent=2))
    t = result["tuned"]
    print(f"| {args.set} | {args.seed} | {result['default']['held_out_accuracy']:.1%} | "
          f"{result['auto']['model']} {result['auto']['held_out_accuracy']:.1%} | {t['held_out_accuracy']:.1%} "
          f"({t['model']}, trial {t['best_trial']}) | {t['trials']} ({t['complete']} complete, {t['pruned']} pruned) | "
          f"{t['saved_trial_equivalents']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
