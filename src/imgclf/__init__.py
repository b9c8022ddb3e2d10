"""imgclf: train, measure, keep and use convolutional image classifiers (TensorFlow/Keras).

The Python API (the CLI and the notebooks call exactly these):

    from imgclf import TrainConfig, train, load_model, predict_files, evaluate
    run_dir = train(TrainConfig(data_dir="photos", epochs=5))
    model = load_model(run_dir / "best_model.keras")
    predictions, skipped = predict_files(model, ["new_photos/"])
"""

from __future__ import annotations

from .config import TrainConfig
from .errors import DataError, ImgclfError, ModelFileError

__version__ = "0.1.0"


def __getattr__(name: str):
    # The heavy parts (TensorFlow) load on first use, so `imgclf --help` is instant.
    lazy = {
        "train": ("training.loop", "train"),
        "resume": ("training.loop", "resume"),
        "load_model": ("inference.modelio", "load_model"),
        "save_model": ("inference.modelio", "save_model"),
        "predict_files": ("inference.predict", "predict_files"),
        "predict_probabilities": ("inference.predict", "predict_probabilities"),
        "evaluate": ("evaluation.evaluate", "evaluate"),
        "evaluate_images": ("evaluation.evaluate", "evaluate_images"),
        "load_data": ("data.sources", "load_data"),
        "create_model": ("models.registry", "create_model"),
        "export_model": ("export.writers", "export_model"),
        "open_model": ("inference.runtimes", "open_model"),
        "create_app": ("serve.app", "create_app"),
    }
    if name in lazy:
        import importlib

        module, attr = lazy[name]
        return getattr(importlib.import_module(f".{module}", __name__), attr)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")


__all__ = ["TrainConfig", "ImgclfError", "DataError", "ModelFileError", "train", "resume", "load_model",
           "save_model", "predict_files", "predict_probabilities", "evaluate", "evaluate_images",
           "load_data", "create_model", "export_model", "open_model", "create_app"]
