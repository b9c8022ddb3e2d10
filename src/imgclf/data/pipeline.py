"""Feeding images to Keras with tf.data: ordered batches for evaluation and prediction,
shuffled and augmented batches for training that depend only on (seed, epoch)."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path

import numpy as np

from .decode import decode_or_black, decode_paths
from .labelled import Images

CACHE_SHUFFLE_MB = 256  # --cache: the per-epoch shuffle buffer holds up to this much of decoded images
CACHE_FILL_BATCH = 256

def make_dataset(images: Images, batch_size: int, cache: str | None = None):
    """Batches of (float32 0-255 pixels, int32 labels) in order, prefetched: for evaluation.
    With `cache` (a folder) and images streamed from disk, the decoded uint8 batches are
    kept there by the first pass (tf.data's file cache) and read back by the later ones."""
    import tensorflow as tf

    load = _batch_loader(images)
    dataset = tf.data.Dataset.range(len(images)).batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE)
    if cache and not images.in_memory:
        dataset = dataset.cache(_cache_path(cache, "eval", images, batch_size))
    dataset = dataset.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def make_train_dataset(images: Images, batch_size: int, *, seed: int, epochs: int, first_epoch: int = 0,
                       augment=None, mix=None, batches_per_epoch: int | None = None, cache: str | None = None):
    """Shuffled (and augmented) training batches for epochs `first_epoch` .. `epochs - 1`,
    one epoch after the other, `train_steps(len(images), batch_size)` per epoch (pass it
    as `steps_per_epoch` to `model.fit`). Only full batches: the few images left over
    change every epoch. A dataset smaller than one batch gives one batch of everything.

    The order and the augmentation of epoch `e` depend only on (`seed`, `e`): stateless
    random ops, no hidden state. A resumed run sees exactly the batches the uninterrupted
    run would have seen. `augment(uint8 batch, seed, index, epoch) -> batch` gets a
    2-element seed tensor, the images' indices and the epoch, and must use stateless
    random ops. `mix(images, labels, seed) -> (images, class probabilities)` (MixUp, CutMix)
    runs after it. `batches_per_epoch` takes only that many batches of each epoch (the workers
    of a multi-worker run must all take the same number of steps).

    `cache` (a folder; images streamed from disk): every image is decoded once, into
    tf.data's file cache there (`fill_cache`), and each epoch reads the cache back through a
    shuffle buffer of CACHE_SHUFFLE_MB, seeded by (`seed`, epoch): still fixed by
    (seed, epoch), so resuming stays exact, but not the full permutation of the uncached path
    (a file cache can only be read in order; it is written in a random order of its own).
    """
    import tensorflow as tf

    n = len(images)
    if cache and not images.in_memory:
        cached = fill_cache(images, cache, seed)
        buffer = int(min(n, max(batch_size, CACHE_SHUFFLE_MB * 2**20 // (images.size[0] * images.size[1] * 3))))

        def epoch_batches(epoch):  # decoded (pixels, label, index) batches, read from the cache
            shuffled = cached.shuffle(buffer, seed=seed * 1_000_003 + epoch, reshuffle_each_iteration=False)
            return shuffled.batch(batch_size, drop_remainder=n >= batch_size)

        def fetch(batch):
            return batch
    else:
        load = _batch_loader(images)

        def epoch_batches(epoch):  # batches of indices, decoded by `fetch` in the parallel map
            order = tf.random.experimental.stateless_shuffle(tf.range(n, dtype=tf.int64), seed=[seed, epoch])
            return tf.data.Dataset.from_tensor_slices(order).batch(batch_size, drop_remainder=n >= batch_size)

        def fetch(index):
            return (*load(index), index)

    def one_epoch(epoch):
        batches = epoch_batches(epoch)
        if batches_per_epoch is not None:
            batches = batches.take(batches_per_epoch)
        return batches.enumerate().map(lambda step, batch: (epoch, step, batch))

    def finish(epoch, step, batch):
        x, y, index = fetch(batch)
        batch_seed = tf.stack([tf.constant(seed, tf.int64), epoch * 1_000_003 + step])
        if augment is not None:
            x = augment(x, batch_seed, index, epoch)
        if mix is not None:
            x, y = mix(x, y, batch_seed)
        return tf.cast(x, tf.float32), y

    dataset = tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch)
    return dataset.map(finish, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)


def fill_cache(images: Images, folder: str, seed: int):
    """tf.data's file cache of `images` (uint8 pixels, label, index), in a random order fixed
    by `seed`, under `folder`: written by one full pass here unless a complete one for the
    same images, size, resize mode and seed is there already. Returns the dataset reading it."""
    import tensorflow as tf

    path = _cache_path(folder, "train", images, seed)
    load = _batch_loader(images)
    order = np.random.default_rng(seed).permutation(len(images))
    dataset = (tf.data.Dataset.from_tensor_slices(order).batch(CACHE_FILL_BATCH)
               .map(lambda index: (*load(index), index), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
               .unbatch().cache(path))
    if not Path(path + ".index").exists():
        started = time.perf_counter()
        for _ in dataset.batch(4096).prefetch(2):
            pass
        print(f"cache: decoded {len(images)} images into {path} in {time.perf_counter() - started:.1f}s",
              file=sys.stderr)
    return dataset


def _cache_path(folder: str, kind: str, images: Images, extra: int) -> str:
    """A cache file name that changes with anything that changes its content. The pieces
    of an incomplete cache of that name (a run killed while writing it; tf.data leaves a
    lock file) are removed, so it is written afresh."""
    key = hashlib.sha256()
    for part in ("\0".join(images.names()), images.labels.tobytes(), str(images.size), images.resize, str(extra)):
        key.update(part.encode() if isinstance(part, str) else part)
    Path(folder).mkdir(parents=True, exist_ok=True)
    path = Path(folder) / f"{kind}-{key.hexdigest()[:16]}"
    if not path.with_name(path.name + ".index").exists():
        for stale in path.parent.glob(path.name + "*"):
            stale.unlink()
    return str(path)


def train_steps(n: int, batch_size: int) -> int:
    """Steps per epoch of `make_train_dataset`: full batches only."""
    return max(1, n // batch_size)


# With several steps per call, Keras traces the training step twice (inside its while loop):
# 0.3-0.7 s more for `seed` on this project's machines, 1.5-2.4 s for a backbone, against ~2 ms
# of Python overhead saved per step. A phase shorter than this many steps cannot pay that back.
SEVERAL_STEPS_FROM = 400


def steps_per_call(steps_per_epoch: int, most: int, epochs: int) -> int:
    """Keras' `steps_per_execution` for a phase of `epochs` epochs: 1 for a phase of fewer than
    SEVERAL_STEPS_FROM steps, else the largest divisor of `steps_per_epoch` that is at most
    `most` (all >= 1). It must divide the epoch, or the last call of an epoch would take
    batches of the next one from the continuous training stream."""
    if steps_per_epoch * epochs < SEVERAL_STEPS_FROM:
        return 1
    return max(k for k in range(1, min(most, steps_per_epoch) + 1) if steps_per_epoch % k == 0)


def sample_pixels(images: Images, count: int, seed: int = 0) -> np.ndarray:
    """A random sample of up to `count` images as uint8, in random order: images are stored
    sorted by class, and data-dependent initialisation and BatchNorm re-estimation (which
    read the sample in batches) need every class in every part."""
    chosen = np.random.default_rng(seed).permutation(len(images))[:count]
    if images.in_memory:
        return images.array[chosen]
    return decode_paths([images.paths[i] for i in chosen], images.size, resize=images.resize).pixels


def _batch_loader(images: Images):
    """index batch -> (uint8 pixels, int32 labels): a gather from the uint8 array held in
    memory, or decoding the files of the batch."""
    import tensorflow as tf

    labels = tf.constant(images.labels)
    if images.in_memory:
        pixels = tf.constant(images.array)

        def load(index):
            return tf.gather(pixels, index), tf.gather(labels, index)
        return load
    paths = tf.constant(np.array([os.fsencode(p) for p in images.paths], dtype=object))
    height, width = images.size
    resize = images.resize

    def decode(raw_paths):  # batches are never empty
        return np.stack([decode_or_black(raw, (height, width), resize) for raw in raw_paths])

    def load(index):
        batch = tf.numpy_function(decode, [tf.gather(paths, index)], tf.uint8)
        batch.set_shape((None, height, width, 3))
        return batch, tf.gather(labels, index)
    return load
