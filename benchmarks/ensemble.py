"""What averaging the probabilities of several trained runs gives on their shared validation split.

    python benchmarks/ensemble.py RUN RUN [RUN ...] [--no-tta] [--out FILE.json]

The runs must have validated on the same images (the same split.csv validation rows: train
them with the same `--split-seed`, or the same `--seed`). For each run, its kept model's
validation accuracy (with TTA unless `--no-tta`, as `imgclf train --tta` reports it); then for
every pair, and for all the runs together, the accuracy of the averaged probabilities and how
often the members' answers differ. The probabilities are each model's calibrated ones (the
temperature changes no single model's ranking, but weighs the members in the average).

Prints a Markdown table and writes the figures as JSON. Issue 26 used it to ask whether two
`fast` runs (2 x T14 of training) beat one `fast-large` run of the same cost (docs/results.md).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

from imgclf.inference.modelio import load_model
from imgclf.inference.predict import image_probabilities
from imgclf.run.folder import RunFolder, split_images


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--no-tta", dest="tta", action="store_false")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two runs or more")
    splits = [[(row["item"], row["label"]) for row in RunFolder(run).read_split() if row["subset"] == "val"]
              for run in args.runs]
    if any(split != splits[0] for split in splits[1:]):
        parser.error("the runs validated on different images: train them with the same --split-seed")
    probs, labels = {}, None
    for run in args.runs:
        loaded = load_model(run / "best_model.keras")
        images = split_images(run, loaded, "val")
        labels = images.labels
        probs[str(run)] = image_probabilities(loaded, images, tta=args.tta)
        print(f"{run}: {np.mean(probs[str(run)].argmax(1) == labels):.2%}", file=sys.stderr, flush=True)
    rows = [{"runs": [name], "accuracy": float(np.mean(p.argmax(1) == labels))} for name, p in probs.items()]
    groups = list(itertools.combinations(probs, 2)) + ([tuple(probs)] if len(probs) > 2 else [])
    for group in groups:
        answers = [probs[name].argmax(1) for name in group]
        rows.append({"runs": list(group),
                     "accuracy": float(np.mean(sum(probs[name] for name in group).argmax(1) == labels)),
                     "disagree": float(np.mean([len(set(a)) > 1 for a in zip(*answers)]))})
    print(f"| runs | validation accuracy{' (TTA)' if args.tta else ''} | members disagree |")
    print("| --- | ---: | ---: |")
    for row in rows:
        disagree = f"{row['disagree']:.2%}" if "disagree" in row else ""
        print(f"| {' + '.join(row['runs'])} | {row['accuracy']:.2%} | {disagree} |")
    if args.out:
        args.out.write_text(json.dumps({"tta": args.tta, "images": int(len(labels)), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
