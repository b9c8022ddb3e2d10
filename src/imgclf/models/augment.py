"""Batch augmentation of the fast recipes, applied in the tf.data pipeline with stateless
random ops, so a batch depends only on its seed (what makes resumed runs exact)."""

from __future__ import annotations

TRANSLATE = 2  # maximum random shift, pixels (reflect padding)


def flip_translate(images, seed, index, epoch):
    """Alternating flip and a random shift of up to TRANSLATE pixels (reflect padding), on a
    whole batch. Each image is mirrored in every other epoch (which half of the epochs
    depends on a hash of its index): over two epochs every image is seen both ways.
    `seed`: 2-element tensor; stateless, so the same arguments give the same batch."""
    import tensorflow as tf

    y_seed, x_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    parity = tf.strings.to_hash_bucket_fast(tf.strings.as_string(index * 1_000_003 + seed[0]), 2)
    flip = tf.reshape(tf.math.floormod(parity + tf.cast(epoch, tf.int64), 2) == 1, (-1, 1, 1, 1))
    images = tf.where(flip, tf.reverse(images, axis=[2]), images)
    padded = tf.pad(images, [[0, 0], [TRANSLATE, TRANSLATE], [TRANSLATE, TRANSLATE], [0, 0]], mode="REFLECT")
    dy = tf.random.stateless_uniform((batch, 1), y_seed, 0, 2 * TRANSLATE + 1, dtype=tf.int32)
    dx = tf.random.stateless_uniform((batch, 1), x_seed, 0, 2 * TRANSLATE + 1, dtype=tf.int32)
    rows = tf.gather(padded, dy + tf.range(height)[None, :], axis=1, batch_dims=1)
    return tf.gather(rows, dx + tf.range(width)[None, :], axis=2, batch_dims=1)
