"""Where a fast-family training step's time goes on this CPU, against its matmul peak (issue 26).

    python benchmarks/profile_step.py --model fast --batch 1000 --steps 8 [--out profile.json]

On random 32x32 batches, in the precision a run picks here (bfloat16 where the CPU has it), with
the recipe's own model, loss and optimizer as `imgclf train` compiles them:

- the machine's 2048x2048 matmul peak (`imgclf bench`'s), float32 and bfloat16;
- a whole training step as model.fit runs it (fixed batches: no input pipeline);
- its parts, each timed alone: inference forward, training-mode forward, forward + backward
  (the gradients), the optimizer's update alone (Muon's Newton-Schulz, SGD); the input
  pipeline alone (flip + translate of uint8 batches, in tf.data);
- with --onednn, a second process with ONEDNN_VERBOSE=1 sums oneDNN's own primitive times over
  the timed training steps, by primitive kind and implementation (`avx512_core_amx` / `amx` in
  the name: the tile units), and says how much of the step runs outside oneDNN.

Achieved GFLOP/s count convolutions and dense layers (imgclf.bench.flops: training = 3x forward).
Prints the result as JSON and writes it to --out.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import time

MARK = "@@profile-step"


def build(model_name: str, batch: int, precision: str = "auto"):
    import keras
    import numpy as np

    from imgclf.config import TrainConfig
    from imgclf.evaluation.metrics import ConfusionMatrix
    from imgclf.models.recipes import resolve
    from imgclf.models.registry import get_recipe
    from imgclf.training.fit import build_model, compile_phase
    from imgclf.training.precision import POLICIES, auto_precision

    precision = auto_precision() if precision == "auto" else precision
    keras.mixed_precision.set_global_policy(POLICIES[precision])
    config = resolve(TrainConfig(model=model_name, batch_size=batch, epochs=10, verbose=0), 40_000)
    recipe = get_recipe(model_name)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (5000, 32, 32, 3), dtype=np.uint8)
    model = build_model(config, 10, pixels if recipe.needs_data else None)
    compile_phase(model, config, recipe, ConfusionMatrix(10), 40, (0, 0, config.epochs))
    x = rng.integers(0, 256, (batch, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (batch,)).astype("int32")
    return model, recipe, config, precision, x, y


def timed(function, steps: int) -> float:
    function()  # traces, warms oneDNN's primitive cache
    function()
    began = time.perf_counter()
    for _ in range(steps):
        function()
    return (time.perf_counter() - began) / steps


def measure(model_name: str, batch: int, steps: int, parts: bool, precision: str = "auto") -> dict:
    import tensorflow as tf

    from imgclf.bench.flops import forward_flops, measure_peak_gflops
    from imgclf.data.labelled import Images
    from imgclf.data.pipeline import make_train_dataset
    from imgclf.training.regularize import training_augment

    model, recipe, config, precision, x, y = build(model_name, batch, precision)
    flops = forward_flops(model)
    data = tf.data.Dataset.from_tensors((x, y)).repeat()
    iterator = iter(data)
    model.make_train_function()
    train_function = model.train_function

    def train_step():
        logs = train_function(iterator)
        float(logs["loss"])

    result = {"model": model_name, "batch": batch, "precision": precision, "forward_gflop_per_image": flops / 1e9}
    print(MARK, "train", flush=True)
    result["train_step_s"] = timed(train_step, steps)
    print(MARK, "end", flush=True)
    if parts:
        xs, ys = tf.constant(x), tf.constant(y)
        infer = tf.function(lambda: model(xs, training=False))
        forward = tf.function(lambda: model(xs, training=True))
        loss_fn = model.loss

        @tf.function
        def gradients():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(loss_fn(ys, model(xs, training=True)))
            return tape.gradient(loss, model.trainable_variables)

        grads = [tf.identity(g) for g in gradients()]
        optimizer = model.optimizer
        apply = tf.function(lambda: optimizer.apply_gradients(zip(grads, model.trainable_variables)))
        result["inference_s"] = timed(lambda: infer().numpy(), steps)
        result["forward_training_s"] = timed(lambda: forward().numpy(), steps)
        result["forward_backward_s"] = timed(lambda: [g.numpy() for g in gradients()][0], steps)
        result["optimizer_s"] = timed(lambda: (apply(), optimizer.iterations.numpy()), steps)
        images = Images(labels=y.astype("int64"), class_names=[str(i) for i in range(10)],
                        array=x.astype("uint8"))
        augment, mix = training_augment(config, recipe, 10)
        pipeline = make_train_dataset(images, batch, seed=0, epochs=steps + 2, augment=augment, mix=mix)
        batches = iter(pipeline)
        result["input_pipeline_s"] = timed(lambda: next(batches)[0].numpy(), steps)
        result["peak_gflops"] = {"float32": measure_peak_gflops("float32"), "bfloat16": measure_peak_gflops("bfloat16")}
    for key, passes in (("train_step_s", 3), ("inference_s", 1), ("forward_backward_s", 3)):
        if key in result:
            result[key[:-2] + "_gflops"] = flops * batch * passes / result[key] / 1e9
    return result


def onednn_breakdown(args) -> dict:
    """Rerun the training steps with ONEDNN_VERBOSE=1 and sum oneDNN's times between the marks."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1"}
    command = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--steps",
               str(args.steps), "--no-parts", "--child", "--precision", args.precision]
    command += ["--inter-op", str(args.inter_op)] if args.inter_op else []
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    inside, total, by_kind, impls = False, 0.0, collections.Counter(), collections.Counter()
    for line in output.splitlines():
        if line.startswith(MARK):
            inside = line.split()[1] == "train"
            continue
        if not inside or not line.startswith("onednn_verbose") or ",exec," not in line:
            continue
        fields = line.split(",")
        at = fields.index("cpu")
        kind, impl, prop = fields[at + 1], fields[at + 2], fields[at + 3]
        try:
            ms = float(fields[-1])
        except ValueError:
            continue
        name = kind if kind not in ("convolution", "pooling", "batch_normalization", "eltwise") else f"{kind} {prop}"
        by_kind[name] += ms
        impls[f"{kind}: {impl}"] += ms
        total += ms
    # the timed steps, plus the 2 warm-up calls that `timed` also makes between the marks
    calls = args.steps + 2
    return {"onednn_ms_per_step": total / calls,
            "by_kind_ms_per_step": {k: v / calls for k, v in by_kind.most_common()},
            "by_implementation_ms_per_step": {k: v / calls for k, v in impls.most_common(25)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="fast")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--onednn", action="store_true", help="also oneDNN's primitive times (a second process)")
    parser.add_argument("--no-parts", dest="parts", action="store_false")
    parser.add_argument("--inter-op", type=int, help="TensorFlow's inter-op threads (default: TensorFlow's)")
    parser.add_argument("--precision", default="auto", choices=["auto", "float32", "bfloat16"],
                        help="compute precision (default: what a run picks here)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out")
    args = parser.parse_args()
    if args.inter_op:
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op)
    result = measure(args.model, args.batch, args.steps, args.parts, args.precision)
    if args.child:
        return
    if args.onednn:
        result["onednn"] = onednn_breakdown(args)
    print(json.dumps(result, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
