"""Calibration, selective prediction and Grad-CAM on trained runs (issue 24).

    python benchmarks/calibration.py RUN [RUN ...] [--out FILE.json] [--explain-images 1000]

For each run folder: its kept model without any temperature (a model training calibrated is
taken back to T = 1), its validation split, and

- ECE and NLL before and after temperature scaling fitted on the whole validation split (what
  `imgclf train` and `imgclf calibrate` do), and the honest version: two-fold cross-fitting,
  T fitted on one half of the validation images and measured on the other (and back), so
  that no image is measured by a temperature fitted on it;
- accuracy before and after (the same: the ranking of the classes is kept);
- the confidence threshold that reaches 99% accuracy on the calibrated probabilities, and the
  coverage it leaves (`imgclf evaluate --target-accuracy 0.99`);
- Grad-CAM time per image: `--explain-images` validation images in batches (the CLI's way),
  and one image at a time (the service's way), after one warm-up call.

Prints a Markdown table and writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from imgclf.evaluation.analysis import threshold_for
from imgclf.evaluation.calibrate import figures, fit_temperature, scale
from imgclf.inference.explain import Explainer
from imgclf.inference.modelio import load_model
from imgclf.inference.predict import combine_views, image_views
from imgclf.run.folder import RunFolder, split_images

SINGLE_CALLS = 50  # one-image Grad-CAM calls timed


def measure(run_dir: Path, explain_images: int) -> dict:
    run = RunFolder.existing(run_dir)
    config = run.read_config()
    loaded = load_model(run.best_model)
    images = split_images(run.path, loaded, "val")
    views = image_views(loaded, images, tta=config.tta)
    temperature = loaded.temperature
    if temperature != 1.0:  # back to the model as trained
        views = [(weight, scale(probs, 1 / temperature)) for weight, probs in views]
    labels = images.labels
    before = combine_views(views)
    fitted = fit_temperature(views, labels)
    after = combine_views([(w, scale(p, fitted)) for w, p in views])
    halves = np.random.default_rng(0).permutation(len(labels)) % 2
    crossed = np.zeros_like(before)
    folds = []
    for half in (0, 1):
        fit_on, measure_on = halves != half, halves == half
        t = fit_temperature([(w, p[fit_on]) for w, p in views], labels[fit_on])
        folds.append(t)
        crossed[measure_on] = combine_views([(w, scale(p[measure_on], t)) for w, p in views])
    target = threshold_for(labels, after, 0.99)
    result = {"run": str(run.path), "recipe": config.model, "tta": config.tta, "images": len(labels),
              "temperature": fitted, "cross_fit_temperatures": folds,
              "before": figures(labels, before), "after": figures(labels, after),
              "after_cross_fit": figures(labels, crossed), "at_99_percent": target,
              "same_class": float(np.mean(before.argmax(1) == after.argmax(1)))}
    result.update(time_gradcam(loaded, images.array[:explain_images]))
    return result


def time_gradcam(loaded, pixels: np.ndarray) -> dict:
    explainer = Explainer(loaded)
    explainer.heatmaps(pixels[:2])  # traces the function, checks the chain
    started = time.perf_counter()
    explainer.heatmaps(pixels)
    batched = (time.perf_counter() - started) / len(pixels)
    single = []
    for i in range(SINGLE_CALLS):
        started = time.perf_counter()
        explainer.heatmaps(pixels[i % len(pixels)][None])
        single.append(time.perf_counter() - started)
    return {"explain_layer": explainer.layer_name, "gradcam_ms_per_image_batched": 1000 * batched,
            "gradcam_ms_single_median": 1000 * statistics.median(single), "gradcam_images": len(pixels)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, help="write the figures here as JSON")
    parser.add_argument("--explain-images", type=int, default=1000)
    args = parser.parse_args(argv)
    results = [measure(run, args.explain_images) for run in args.runs]
    print("| recipe | images | T | ECE before | ECE after | ECE after (cross-fit) | NLL before | NLL after | "
          "accuracy | coverage at 99% (threshold) | Grad-CAM ms/image (batched, single) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in results:
        target = r["at_99_percent"]
        cover = f"{target['coverage']:.1%} ({target['threshold']:.3f})" if target else "not reached"
        print(f"| {r['recipe']}{' (TTA)' if r['tta'] else ''} | {r['images']:,} | {r['temperature']:.3f} | "
              f"{r['before']['ece']:.4f} | {r['after']['ece']:.4f} | {r['after_cross_fit']['ece']:.4f} | "
              f"{r['before']['nll']:.4f} | {r['after']['nll']:.4f} | {r['before']['accuracy']:.4f} -> "
              f"{r['after']['accuracy']:.4f} | {cover} | {r['gradcam_ms_per_image_batched']:.1f}, "
              f"{r['gradcam_ms_single_median']:.1f} |")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
