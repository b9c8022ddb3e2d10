"""int8 exports (issue 22): what makes a full-integer LiteRT export classify as well as the
float model, on small and large data.

    python benchmarks/int8.py RUN_DIR... --out OUT

For each run's best model: the export as `imgclf export --format litert-int8` writes it
(weights quantized per output channel, the recipe's float layers, 500 calibration images from
the run's training split), and one change at a time: one weight scale per tensor; the first
and the last layer with weights kept in float32 too; 100 and 2,000 calibration images. Each
is measured on the images `imgclf export` checks with (`export.check_images`): the share of
images with Keras' top-1 class (raw, and on the images whose top-two margin is at least 0.1),
accuracy in float and int8 on the labelled ones, the file size, and the latency of one image
in LiteRT (median of 300 calls). Writes OUT/int8.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

VARIANTS = {  # name -> (per_channel, extra float layers: "first+last" or none, calibration images)
    "default (per-channel, 500 calibration images)": (True, False, 500),
    "per-tensor weights": (False, False, 500),
    "first and last layers float32": (True, True, 500),
    "100 calibration images": (True, False, 100),
    "2,000 calibration images": (True, False, 2000),
}
LATENCY_CALLS = 300


def first_and_last(model) -> tuple[str, ...]:
    """Names of the first and the last layer with weights (inside nested backbones too)."""
    import keras

    def flat(layer):
        if isinstance(layer, keras.Model):
            for inner in layer.layers:
                yield from flat(inner)
        elif layer.weights:
            yield layer
    weighted = [layer for layer in flat(model) if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense))]
    return (weighted[0].name, weighted[-1].name) if weighted else ()


def latency_ms(path: Path, image: np.ndarray) -> float:
    from imgclf.runtimes import open_model

    runtime = open_model(path)
    for _ in range(20):
        runtime.predict(image)
    times = []
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        runtime.predict(image)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def measure_run(run: Path) -> list[dict]:
    from imgclf import export
    from imgclf.modelio import load_model

    model_path = run / "best_model.keras"
    loaded = load_model(model_path)
    check = export.check_images(model_path, loaded, None)
    expected = export.keras_probabilities(export.inference_copy(loaded.model, fold_batch_norm=False), check)
    graph = export.inference_copy(loaded.model)
    metadata = export.artifact_metadata(loaded, model_path, "litert-int8")
    recipe_float = tuple(metadata.get("float_layers") or ())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        float_path = Path(folder) / "float.tflite"
        export._write_litert(graph, float_path, {**metadata, "format": "litert"}, None)
        float_ms = latency_ms(float_path, check.pixels[:1].astype(np.float32))
        for name, (per_channel, edges, count) in VARIANTS.items():
            started = time.perf_counter()
            calibration = export.calibration_images(model_path, loaded, None, check, count)
            keep = recipe_float + (first_and_last(graph) if edges else ())
            content = export._int8_litert(graph, calibration, keep, per_channel=per_channel)
            path = Path(folder) / "int8.tflite"
            path.write_bytes(export.add_litert_metadata(content, metadata))
            seconds = time.perf_counter() - started
            report, _ = export.measure_artifact(path, "litert-int8", expected, check)
            one = check.pixels[:1].astype(np.float32)
            rows.append({
                "run": run.name, "recipe": loaded.metadata.get("model_name"), "variant": name,
                "float_layers": list(keep), "calibration_images": len(calibration), "check_images": report.images,
                "check_source": report.check_source, "agreement": report.agreement,
                "confident_images": report.confident_images, "confident_agreement": report.confident_agreement,
                "float_accuracy": report.keras_accuracy, "int8_accuracy": report.export_accuracy,
                "passes": not export.int8_problems(report), "bytes": path.stat().st_size,
                "float_bytes": float_path.stat().st_size, "int8_ms": latency_ms(path, one),
                "float_ms": float_ms, "export_seconds": round(seconds, 1),
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict]) -> str:
    def pct(value):
        return "—" if value is None else f"{value:.1%}"
    lines = ["| run | variant | raw agreement | confident agreement (images) | accuracy float → int8 | passes | "
             "size int8 (float) | latency int8 (float) |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['variant']} | {pct(r['agreement'])} | {pct(r['confident_agreement'])} "
            f"({r['confident_images']}) | {pct(r['float_accuracy'])} → {pct(r['int8_accuracy'])} | "
            f"{'yes' if r['passes'] else 'no'} | {r['bytes'] / 1e6:.2f} MB ({r['float_bytes'] / 1e6:.2f}) | "
            f"{r['int8_ms']:.3f} ms ({r['float_ms']:.3f}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from imgclf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    rows = []
    for run in args.runs:
        rows += measure_run(run)
        (args.out / "int8.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
