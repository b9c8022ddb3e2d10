"""A convolution's filter gradient two ways: TensorFlow's `Conv2DBackpropFilter` (a oneDNN kernel)
and `imgclf.models.layers.filter_gradient`'s kh*kw matmuls, which the fast recipes' convs use on
maps of at most `SMALL_MAP_PIXELS` pixels (`MatmulGradConv2D`, issue 26's eighteenth session).

    python benchmarks/filter_gradient.py [--models fast fast-large] [--rounds 6] [--out FILE]

1. Each 3x3 conv shape of the fast family at batch 1,000 (map side, channels in and out), in the
   precision a run picks here: milliseconds and GFLOP/s each way, and the
   largest difference between the two gradients relative to the largest value.
2. The recipes' whole training steps (random batches, `model.fit`'s compiled step, as
   benchmarks/profile_step.py times them), with the matmul path on and off, alternating in one
   process over `--rounds` rounds of 3 steps each way: the median step each way and their ratio.

Prints JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

# (map side, channels in, channels out) of the fast family's 3x3 convs at 32x32 images: the
# first conv of a block runs before its pooling, at the previous block's resolution
SHAPES = [(31, 24, 64), (15, 64, 256), (7, 256, 256), (3, 256, 256),  # fast (64/256/256)
          (31, 24, 128), (15, 128, 128), (15, 128, 384), (7, 384, 384), (3, 384, 384)]  # fast-large


def median_seconds(function, repeats: int = 5) -> float:
    function()  # traces, warms oneDNN's primitive cache
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        function()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def layer_shapes(batch: int, dtype: str) -> list[dict]:
    import numpy as np
    import tensorflow as tf

    from imgclf.models.layers import SMALL_MAP_PIXELS, filter_gradient

    rows = []
    rng = np.random.default_rng(0)
    for side, c_in, c_out in SHAPES:
        x = tf.cast(rng.normal(size=(batch, side, side, c_in)).astype("float32"), dtype)
        dy = tf.cast(rng.normal(size=(batch, side, side, c_out)).astype("float32"), dtype)
        kernel_op = tf.function(lambda x, dy: tf.raw_ops.Conv2DBackpropFilter(
            input=x, filter_sizes=[3, 3, x.shape[-1], dy.shape[-1]], out_backprop=dy, strides=[1, 1, 1, 1],
            padding="SAME"))
        matmuls = tf.function(lambda x, dy: filter_gradient(x, dy, (3, 3)))
        gflop = 2 * batch * side * side * c_in * c_out * 9 / 1e9
        kernel_s, matmul_s = (median_seconds(lambda f=f, x=x, dy=dy: f(x, dy).numpy()) for f in (kernel_op, matmuls))
        a, b = (f(x, dy).numpy().astype("float32") for f in (kernel_op, matmuls))
        rows.append({"side": side, "in": c_in, "out": c_out, "gflop": gflop,
                     "kernel_ms": 1e3 * kernel_s, "matmuls_ms": 1e3 * matmul_s,
                     "kernel_gflops": gflop / kernel_s, "matmuls_gflops": gflop / matmul_s,
                     "speedup": kernel_s / matmul_s, "used": side * side <= SMALL_MAP_PIXELS,
                     "max_difference": float(np.abs(a - b).max() / np.abs(a).max())})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def train_steps(model_name: str, batch: int, rounds: int) -> dict:
    import tensorflow as tf

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from profile_step import build

    from imgclf.models.layers import MatmulGradConv2D

    def compiled(matmul_path: bool):
        model, _, _, _, x, y = build(model_name, batch)
        used = 0
        for layer in model.layers:
            if isinstance(layer, MatmulGradConv2D):
                layer.matmul_filter_gradient = layer.matmul_filter_gradient and matmul_path
                used += layer.matmul_filter_gradient
        data = iter(tf.data.Dataset.from_tensors((x, y)).repeat())
        model.make_train_function()
        function = model.train_function
        return (lambda: float(function(data)["loss"])), used

    (before, _), (after, used) = compiled(False), compiled(True)
    times = {"kernel": [], "matmuls": []}
    for _ in range(rounds):
        for name, step in (("kernel", before), ("matmuls", after)):
            times[name].append(median_seconds(step, 3))
    medians = {name: statistics.median(values) for name, values in times.items()}
    result = {"model": model_name, "batch": batch, "convs_on_the_matmul_path": used,
              "step_s": medians, "steps_s": times, "ratio": medians["matmuls"] / medians["kernel"]}
    print(json.dumps(result), flush=True)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", default=["fast", "fast-large"])
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    from imgclf.training.precision import auto_precision

    precision = auto_precision()
    result = {"precision": precision, "shapes": layer_shapes(args.batch, precision)}
    result["steps"] = [train_steps(name, args.batch, args.rounds) for name in args.models]
    print(json.dumps(result, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
