"""Transfer benchmark (issue 14): how much `--init` from a model pretrained on other classes
helps on a few images of new classes, against training from scratch on the same images.

    python benchmarks/transfer.py --pretrained RUN_DIR --train DIR50 DIR200 --eval DIR --out OUT

RUN_DIR: a run of the `fast` recipe on five CIFAR-10 classes (airplane, automobile, bird,
cat, deer). DIR50/DIR200: the other five classes with 50 and 200 training images per class;
DIR: 1,000 further images of those five classes, the fixed set every model is scored on
(`imgclf evaluate`). For each training set, image size (32, 96) and seed: `--init RUN_DIR`,
`--model fast` and `--model seed` from scratch. Every run is a separate `imgclf` process, one
at a time. Writes OUT/transfer.json and prints medians over seeds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path


def imgclf(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "imgclf.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"imgclf {' '.join(map(str, args))} failed: {done.stderr.strip()[-500:]}")


def one_run(out: Path, train_dir: str, eval_dir: str, size: int, seed: int, variant: list[str]) -> dict:
    if not (out / "eval" / "metrics.json").exists():
        started = time.perf_counter()
        imgclf("train", "--data-dir", train_dir, "--image-size", size, "--seed", seed, "--out", out, "--quiet",
               *variant)
        seconds = time.perf_counter() - started
        imgclf("evaluate", out / "best_model.keras", "--data-dir", eval_dir, "--out", out / "eval")
        (out / "wall.json").write_text(json.dumps({"seconds": seconds}))
    metrics = json.loads((out / "eval" / "metrics.json").read_text())
    return {"accuracy": metrics["accuracy"], "seconds": json.loads((out / "wall.json").read_text())["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--pretrained", required=True)
    parser.add_argument("--train", nargs="+", required=True, help="training folders, e.g. 50 and 200 per class")
    parser.add_argument("--eval", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 96])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--seed-recipe-seeds", type=int, default=3, help="seeds for the `seed` recipe from scratch")
    args = parser.parse_args()
    variants = {"init": ["--init", args.pretrained], "fast scratch": ["--model", "fast"],
                "seed scratch": ["--model", "seed"]}
    out = Path(args.out)
    results = []
    for size in args.sizes:
        for train_dir in args.train:
            for name, variant in variants.items():
                seeds = args.seeds[:args.seed_recipe_seeds] if name == "seed scratch" else args.seeds
                runs = [one_run(out / f"{Path(train_dir).name}-{size}px-{name.replace(' ', '-')}-s{seed}", train_dir,
                                args.eval, size, seed, variant) for seed in seeds]
                row = {"train": Path(train_dir).name, "size": size, "variant": name, "seeds": seeds,
                       "accuracies": [r["accuracy"] for r in runs], "seconds": [round(r["seconds"], 1) for r in runs],
                       "median_accuracy": statistics.median(r["accuracy"] for r in runs),
                       "median_seconds": round(statistics.median(r["seconds"] for r in runs), 1)}
                results.append(row)
                print(f"{row['train']:>9} {size:3d}px {name:<13} accuracy {row['median_accuracy']:.4f} "
                      f"{row['accuracies']}  {row['median_seconds']} s", flush=True)
                (out / "transfer.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
