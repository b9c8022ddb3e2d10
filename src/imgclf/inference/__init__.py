"""A saved model in any runtime (Keras, SavedModel, ONNX Runtime, LiteRT), and prediction."""
