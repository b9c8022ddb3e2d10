"""Time whole trainings of a small folder, as a user with a few hundred photos runs them: with
the recipe's several steps per graph call in every phase (as before issue 26's seventeenth
session) and with one step per call in phases shorter than `SEVERAL_STEPS_FROM` steps (now).

    python benchmarks/steps_per_call.py [--recipes seed mobilenetv3small] [--repeats 4]

`mobilenetv3small` trains in two phases (the head on the frozen backbone, then its top two
blocks), from a weights file written with random weights (no download). Both ways alternate
in one process, after one run left out (the first builds what later runs reuse), so that the
machine's drift falls on both. Prints each way's seconds, sorted, and their medians.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["seed", "mobilenetv3small"])
    parser.add_argument("--repeats", type=int, default=4, help="runs each way (default: %(default)s)")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    import keras

    from imgclf.config import TrainConfig
    from imgclf.data import pipeline
    from imgclf.training.loop import train

    from conftest import make_image_folder, write_backbone_weights

    several_from = pipeline.SEVERAL_STEPS_FROM
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        data = make_image_folder(tmp / "images", per_class=16)  # 3 classes, 38 training images
        weights = write_backbone_weights(tmp / "backbone.weights.h5")
        runs = 0

        def run(recipe: str, every_phase: bool) -> float:
            nonlocal runs
            runs += 1
            pipeline.SEVERAL_STEPS_FROM = 1 if every_phase else several_from
            keras.backend.clear_session()
            extra = (dict(image_size=16) if recipe == "seed" else
                     dict(weights=str(weights), freeze_epochs=1, unfreeze="2", image_size=32))
            config = TrainConfig(data_dir=str(data), model=recipe, epochs=3, batch_size=8, calibrate="none",
                                 out=str(tmp / f"run{runs}"), verbose=0, **extra)
            began = time.perf_counter()
            train(config)
            return time.perf_counter() - began

        for recipe in args.recipes:
            run(recipe, False)
            seconds: dict[str, list[float]] = {"several per call in every phase": [], "one in short phases": []}
            for _ in range(args.repeats):
                for way in seconds:
                    seconds[way].append(run(recipe, way.startswith("several")))
            for way, values in seconds.items():
                print(f"{recipe}: {way}: median {statistics.median(values):.2f} s "
                      f"({', '.join(f'{v:.2f}' for v in sorted(values))})", flush=True)
    pipeline.SEVERAL_STEPS_FROM = several_from
    return 0


if __name__ == "__main__":
    sys.exit(main())
