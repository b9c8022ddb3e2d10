"""int8 exports (issue 22): what makes a full-integer LiteRT export classify as well as the
float model, on small and large data.

    python benchmarks/int8.py RUN_DIR... --out OUT

For each run's best model: the export as `imgclf export --format litert-int8` writes it
(weights quantized per output channel, the recipe's float layers, 500 calibration images from
the run's training split), and one change at a time: one weight scale per tensor; the first
and the last layer with weights kept in float32 too; 100 and 2,000 calibration images. Each
is measured on the images `imgclf export` checks with (`export.verify.check_images`): the share of
images with Keras' top-1 class (raw, and on the images whose top-two margin is at least 0.1),
accuracy in float and int8 on the labelled ones, the file size, and the latency of one image
in LiteRT (median of 300 calls). Writes OUT/int8.json and prints a Markdown table.

    python benchmarks/int8.py RUN_DIR --keep-worst 3,10,40 --out OUT

Selective quantization instead: the converter's QuantizationDebugger measures each quantized
op's error (RMS over its quantization step), and the k worst ops stay float32, for each k.
Writes OUT/selective.json.
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
    from imgclf.inference.runtimes import open_model

    runtime = open_model(path)
    for _ in range(20):
        runtime.predict(image)
    times = []
    for _ in range(LATENCY_CALLS):
        started = time.perf_counter()
        runtime.predict(image)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def prepare(run: Path):
    """(model path, loaded model, check images, Keras' probabilities on them, the export graph,
    the int8 metadata), as `imgclf export` has them."""
    from imgclf.export import graph as export_graph
    from imgclf.export import verify, writers
    from imgclf.inference.modelio import load_model

    model_path = run / "best_model.keras"
    loaded = load_model(model_path)
    check = verify.check_images(model_path, loaded, None)
    expected = verify.keras_probabilities(export_graph.inference_copy(loaded.model, fold_batch_norm=False), check)
    graph = export_graph.inference_copy(loaded.model)
    metadata = writers.artifact_metadata(loaded, model_path, "litert-int8")
    return model_path, loaded, check, expected, graph, metadata


def measure_run(run: Path) -> list[dict]:
    from imgclf.export import verify, writers
    model_path, loaded, check, expected, graph, metadata = prepare(run)
    recipe_float = tuple(metadata.get("float_layers") or ())
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        float_path = Path(folder) / "float.tflite"
        writers._write_litert(graph, float_path, {**metadata, "format": "litert"}, None)
        float_ms = latency_ms(float_path, check.pixels[:1].astype(np.float32))
        for name, (per_channel, edges, count) in VARIANTS.items():
            started = time.perf_counter()
            calibration = writers.calibration_images(model_path, loaded, None, check, count)
            keep = recipe_float + (first_and_last(graph) if edges else ())
            content = writers._int8_litert(graph, calibration, keep, per_channel=per_channel)
            path = Path(folder) / "int8.tflite"
            path.write_bytes(writers.add_litert_metadata(content, metadata))
            seconds = time.perf_counter() - started
            report, _ = verify.measure_artifact(path, "litert-int8", expected, check)
            one = check.pixels[:1].astype(np.float32)
            rows.append({
                "run": run.name, "recipe": metadata["recipe"], "variant": name,
                "float_layers": list(keep), "calibration_images": len(calibration), "check_images": report.images,
                "check_source": report.check_source, "agreement": report.agreement,
                "confident_images": report.confident_images, "confident_agreement": report.confident_agreement,
                "float_accuracy": report.keras_accuracy, "int8_accuracy": report.export_accuracy,
                "passes": not verify.int8_problems(report), "bytes": path.stat().st_size,
                "float_bytes": float_path.stat().st_size, "int8_ms": latency_ms(path, one),
                "float_ms": float_ms, "export_seconds": round(seconds, 1),
            })
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows


def selective(run: Path, counts: list[int]) -> list[dict]:
    """Confident agreement with the k ops of largest quantization error kept in float32."""
    import csv
    import io

    import tensorflow as tf

    from imgclf.export import verify, writers
    model_path, loaded, check, expected, graph, metadata = prepare(run)
    calibration = writers.calibration_images(model_path, loaded, None, check)
    rows = []
    with tempfile.TemporaryDirectory() as folder, writers.int8_converters(graph, calibration) as (
            converter, representative):
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(), debug_dataset=representative)
        debugger.run()
        dump = io.StringIO()
        debugger.layer_statistics_dump(dump)
        stats = list(csv.DictReader(io.StringIO(dump.getvalue())))
        for op in stats:
            scale = float(op["scale"])
            op["error"] = float(op["mean_squared_error"]) ** 0.5 / scale if scale else 0.0
        stats.sort(key=lambda op: -op["error"])
        for k in [0, *counts]:
            options = tf.lite.experimental.QuantizationDebugOptions(
                denylisted_nodes=[op["tensor_name"] for op in stats[:k]])
            content = tf.lite.experimental.QuantizationDebugger(
                converter=converter(), debug_dataset=representative, debug_options=options
            ).get_nondebug_quantized_model() if k else converter().convert()
            path = Path(folder) / f"kept{k}.tflite"
            path.write_bytes(writers.add_litert_metadata(content, metadata))
            report, _ = verify.measure_artifact(path, "litert-int8", expected, check)
            rows.append({"run": run.name, "kept_float": k, "ops": len(stats),
                         "worst_errors": [round(op["error"], 3) for op in stats[:max(k, 1)]],
                         "agreement": report.agreement, "confident_images": report.confident_images,
                         "confident_agreement": report.confident_agreement, "float_accuracy": report.keras_accuracy,
                         "int8_accuracy": report.export_accuracy, "bytes": path.stat().st_size,
                         "passes": not verify.int8_problems(report)})
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
    parser.add_argument("--keep-worst", help="selective quantization: comma-separated numbers of ops kept float32")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    from imgclf.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    if args.keep_worst:
        counts = [int(k) for k in args.keep_worst.split(",")]
        rows = [row for run in args.runs for row in selective(run, counts)]
        (args.out / "selective.json").write_text(json.dumps(rows, indent=2))
        return
    rows = []
    for run in args.runs:
        rows += measure_run(run)
        (args.out / "int8.json").write_text(json.dumps(rows, indent=2))
    print(table(rows))


if __name__ == "__main__":
    main()
