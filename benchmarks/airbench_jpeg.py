"""The airbench line (KellerJordan/cifar10-airbench) on imgclf's own split of the JPEG CIFAR-10
copy: what the record-holding recipes reach on exactly the 40,000 training and 10,000
validation images that `imgclf train --data-dir ../shared/datasets/cifar10/train` uses (seed 42),
at the training compute a 2 x T14 budget holds and beyond (issue 26: "92% within 2 x T14").

airbench is PyTorch on a CUDA GPU, so its runs are made on another machine: this script packs
the split here and unpacks it there into the `cifar10/train.pt` and `cifar10/test.pt` files the
airbench scripts read (uint8 NHWC images, int64 labels, class names), in place of the
torchvision download. The images are the JPEG files' own bytes, decoded there with Pillow, as
imgclf decodes them here.

    python benchmarks/airbench_jpeg.py pack --data-dir ../shared/datasets/cifar10/train --out PACK.npz
    python benchmarks/airbench_jpeg.py unpack PACK.npz cifar10/     # needs numpy, Pillow, torch

The runs themselves: benchmarks/airbench_device.sh (the scripts' own code, their number of runs
and, for airbench95, its epochs changed by sed; torch.compile left out: it changes the speed,
not what is learned).
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import numpy as np


def pack(data_dir: str, out: str, val_split: float = 0.2, seed: int = 42) -> None:
    """The JPEG bytes of imgclf's train/validation split of `data_dir`, as one .npz."""
    from imgclf.data.labelled import encode_labels
    from imgclf.data.sources import scan_folder
    from imgclf.data.split import split_indices

    paths, names = scan_folder(Path(data_dir))
    labels, classes = encode_labels(names)
    train, val = split_indices(labels, val_split, seed)
    arrays = {"classes": np.array(classes)}
    for side, index in (("train", train), ("test", val)):
        blobs = [Path(paths[i]).read_bytes() for i in index]
        arrays[f"{side}_bytes"] = np.frombuffer(b"".join(blobs), dtype=np.uint8)
        arrays[f"{side}_ends"] = np.cumsum([len(b) for b in blobs])
        arrays[f"{side}_labels"] = labels[index].astype(np.int64)
    np.savez(out, **arrays)
    print(f"{out}: {len(train)} training and {len(val)} validation images, "
          f"{sum(arrays[f'{s}_bytes'].size for s in ('train', 'test')) / 2**20:.1f} MiB of JPEG")


def _decode(blob: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as image:
        return np.asarray(image.convert("RGB"))


def unpack(packed: str, folder: str) -> None:
    """`folder`/train.pt and test.pt in airbench's format."""
    from concurrent.futures import ProcessPoolExecutor

    import torch

    data = np.load(packed)
    Path(folder).mkdir(parents=True, exist_ok=True)
    classes = [str(c) for c in data["classes"]]
    for side in ("train", "test"):
        raw, ends = data[f"{side}_bytes"].tobytes(), data[f"{side}_ends"]
        starts = np.concatenate([[0], ends[:-1]])
        with ProcessPoolExecutor() as pool:
            images = np.stack(list(pool.map(_decode, (raw[a:b] for a, b in zip(starts, ends)), chunksize=500)))
        assert images.shape[1:] == (32, 32, 3), images.shape
        torch.save({"images": torch.tensor(images), "labels": torch.tensor(data[f"{side}_labels"]),
                    "classes": classes}, Path(folder) / f"{side}.pt")
        print(f"{folder}/{side}.pt: {images.shape[0]} images, label counts {np.bincount(data[f'{side}_labels'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    packer = commands.add_parser("pack")
    packer.add_argument("--data-dir", required=True)
    packer.add_argument("--out", required=True)
    unpacker = commands.add_parser("unpack")
    unpacker.add_argument("packed")
    unpacker.add_argument("folder")
    args = parser.parse_args()
    if args.command == "pack":
        pack(args.data_dir, args.out)
    else:
        unpack(args.packed, args.folder)


if __name__ == "__main__":
    main()
