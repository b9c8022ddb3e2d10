"""Data: where labelled images come from (`sources`), decoding files (`decode`), the
containers they live in (`labelled`), splitting (`split`) and the tf.data pipelines that feed
Keras (`pipeline`). Images stay uint8 until they reach the model: scaling to [0, 1] is the
model's first layer, so it can never happen twice."""
