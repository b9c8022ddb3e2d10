"""Export a .keras model to SavedModel, ONNX and LiteRT, checked against Keras."""
