import numpy as np

from imgclf.models.augment import flip_translate


def test_flip_translate_moves_pixels_but_keeps_content():
    import tensorflow as tf

    images = np.zeros((64, 8, 8, 3), np.uint8)
    images[:, 3:5, 3:5] = 255
    index = tf.range(64, dtype=tf.int64)

    def augment(seed, epoch):
        return flip_translate(tf.constant(images), tf.constant(seed, tf.int64), index, tf.constant(epoch, tf.int64))

    out = augment([1, 7], 0).numpy()
    assert out.shape == images.shape and out.dtype == np.uint8
    assert (out.reshape(64, -1).sum(axis=1) == images.reshape(64, -1).sum(axis=1)).all()  # a 2-px shift stays inside
    assert len({out[i].tobytes() for i in range(64)}) > 5  # shifts vary per image
    np.testing.assert_array_equal(out, augment([1, 7], 0).numpy())  # stateless: same seed, same batch
    assert not np.array_equal(out, augment([1, 8], 0).numpy())


def test_flip_alternates_between_epochs():
    import tensorflow as tf

    images = np.zeros((32, 8, 8, 3), np.uint8)
    images[:, :, :4] = 255  # left half white: a mirror moves it right
    index = tf.range(32, dtype=tf.int64)
    halves = []
    for epoch in range(3):
        seed = tf.constant([3, epoch], tf.int64)
        out = flip_translate(tf.constant(images), seed, index, tf.constant(epoch, tf.int64))
        halves.append(out.numpy()[:, 4, 0, 0] > 0)  # is the leftmost column white (not mirrored)?
    assert 5 < halves[0].sum() < 27  # epoch 0: about half mirrored
    assert (halves[0] != halves[1]).all() and (halves[0] == halves[2]).all()  # then every image alternates
