import keras

from imgclf.bench.flops import forward_flops, training_flops_per_image


def test_conv_and_dense_flops_are_counted_exactly():
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same"),  # 2 * 8*8 * 3*3*3 * 4
        keras.layers.Flatten(),
        keras.layers.Dense(5),  # 2 * 256 * 5
    ])
    assert forward_flops(model) == 2 * 64 * 27 * 4 + 2 * 256 * 5
    assert training_flops_per_image(model) == 3 * forward_flops(model)
