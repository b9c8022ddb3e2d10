"""Time `save_model` on a compiled model, as a training saves it every epoch: with the
uncompiled copy built again for each save (as before issue 26's sixteenth session) and
with the copy kept for the model's life (now).

    python benchmarks/save_model.py [--recipes seed fast fast-large] [--saves 10]

Both ways alternate twice in one process, so that the machine's drift falls on both; the
first save of each series (which builds the copy either way) is left out. Prints the
median seconds per save.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipes", nargs="+", default=["seed", "fast", "fast-large"])
    parser.add_argument("--saves", type=int, default=10, help="saves per series (default: %(default)s)")
    parser.add_argument("--size", type=int, default=32, help="image size (default: %(default)s)")
    args = parser.parse_args(argv)

    from imgclf.inference import modelio
    from imgclf.models.registry import create_model

    names = [str(i) for i in range(10)]
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        for recipe in args.recipes:
            model = create_model(recipe, (args.size, args.size, 3), len(names))
            model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
            seconds: dict[str, list[float]] = {"rebuilt each save": [], "kept": []}
            for way in [*seconds] * 2:
                for i in range(args.saves + 1):
                    if way == "rebuilt each save":
                        modelio._TWINS.clear()
                    start = time.perf_counter()
                    modelio.save_model(model, path, names)
                    if i:
                        seconds[way].append(time.perf_counter() - start)
            print(f"{recipe}: " + ", ".join(f"{way} {statistics.median(s):.3f} s" for way, s in seconds.items()),
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
