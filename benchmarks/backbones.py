"""Backbone benchmark (issue 14): what each keras.applications backbone costs to fine-tune on
this machine, and what training from scratch gives on a few hundred photos.

    python benchmarks/backbones.py --data PHOTOS --out OUT [--size 96] [--scratch-epochs 10]

PHOTOS: a folder with one subfolder per class (the tests' case: 450 CIFAR-10 photos of 3
classes at 160x120). ImageNet weights cannot be downloaded here, so the fine-tuning timings
start from a stand-in weights file per backbone (random weights, BatchNorm statistics
estimated on the photos: the same compute as ImageNet weights, not their accuracy). Runs
`imgclf train` for 4 epochs (2 frozen, 2 unfrozen) per backbone and reports the seconds of
the second epoch of each phase (no tracing in them). Then trains `fast` and two backbones from
scratch (`--weights none`) with their default epochs and reports validation accuracy.
Every run is a separate `imgclf` process, one at a time. Writes OUT/backbones.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

BACKBONES = ["mobilenetv3small", "mobilenetv3large", "efficientnetv2b0", "resnet50", "convnexttiny"]


def imgclf(*args) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "imgclf.cli", *map(str, args)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"imgclf {' '.join(map(str, args))} failed: {done.stderr.strip()[-800:]}")
    return time.perf_counter() - started


def stand_in_weights(name: str, size: int, data: Path, path: Path) -> Path:
    """Random weights of the backbone with BatchNorm statistics of the photos."""
    import keras
    import numpy as np

    from imgclf.data.decode import decode_paths
    from imgclf.data.sources import scan_folder
    from imgclf.models.backbones import base_model
    from imgclf.models.registry import create_model

    keras.utils.set_random_seed(0)
    base = base_model(create_model(name, (size, size, 3), 3, weights="none"))
    paths, _ = scan_folder(data)
    pixels = decode_paths(paths[::7][:64], (size, size)).pixels.astype("float32")
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = 0.0
    base(np.asarray(pixels), training=True)
    base.save_weights(path)
    return path


def history(run: Path) -> list[dict]:
    with open(run / "history.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--scratch", nargs="*", default=["fast", "mobilenetv3small", "efficientnetv2b0"])
    args = parser.parse_args()
    out, data = Path(args.out), Path(args.data)
    out.mkdir(parents=True, exist_ok=True)
    results: dict = {"size": args.size, "fine_tuning": {}, "scratch": {}}
    for name in BACKBONES:
        run = out / f"{name}-finetune"
        if not (run / "metrics.json").exists():
            weights = stand_in_weights(name, args.size, data, out / f"{name}.weights.h5")
            imgclf("train", "--data-dir", data, "--model", name, "--weights", weights, "--image-size", args.size,
                   "--epochs", 4, "--freeze-epochs", 2, "--out", run, "--quiet")
        rows = history(run)
        results["fine_tuning"][name] = {"frozen_epoch_seconds": round(float(rows[1]["seconds"]), 2),
                                        "unfrozen_epoch_seconds": round(float(rows[3]["seconds"]), 2),
                                        "train_images": json.loads((run / "data.json").read_text())["train_images"]}
        print(name, results["fine_tuning"][name], flush=True)
    for name in args.scratch:
        run = out / f"{name}-scratch"
        extra = [] if name == "fast" else ["--weights", "none"]
        if not (run / "metrics.json").exists():
            imgclf("train", "--data-dir", data, "--model", name, *extra, "--image-size", args.size, "--out", run,
                   "--quiet")
        metrics = json.loads((run / "metrics.json").read_text())
        results["scratch"][name] = {"accuracy": metrics["accuracy"], "epochs": len(history(run)),
                                    "train_seconds": metrics["train_seconds"]}
        print(name, "from scratch", results["scratch"][name], flush=True)
    (out / "backbones.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
