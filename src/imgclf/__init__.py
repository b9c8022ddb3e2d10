"""imgclf: train, measure, keep and use convolutional image classifiers (TensorFlow/Keras).

The Python API (the CLI and the notebooks call exactly these):

    from imgclf import TrainConfig, train, load_model, predict_files, evaluate
    run_dir = train(TrainConfig(data_dir="photos", epochs=5))
    model = load_model(run_dir / "best_model.keras")
    predictions, skipped = predict_files(model, ["new_photos/"], min_confidence=0.9)
    explanations, skipped = explain_files(model, ["new_photos/"], "why/")  # Grad-CAM overlays
    suggestion = lr_find(TrainConfig(data_dir="photos"), "lr/").suggestion  # range test
    study = tune(TrainConfig(data_dir="photos"), "study/", trials=20)  # Optuna search; study.best_config
    table = compare([run_dir, study.folder / "trials" / "trial-0000"], "compare/")
"""

from __future__ import annotations

from .config import TrainConfig
from .errors import DataError, ImgclfError, ModelFileError

__version__ = "0.1.0"


# The heavy parts (TensorFlow) load on first use, so `imgclf --help` is instant: module -> its
# public names.
_LAZY = {
    "training.loop": ("train", "resume"),
    "training.lr_find": ("lr_find",),
    "training.tune": ("tune",),
    "evaluation.compare": ("compare",),
    "inference.modelio": ("load_model", "save_model"),
    "inference.predict": ("predict_files", "predict_probabilities"),
    "inference.runtimes": ("open_model",),
    "evaluation.evaluate": ("evaluate", "evaluate_images"),
    "evaluation.calibrate": ("calibrate",),
    "inference.explain": ("explain_files", "Explainer"),
    "data.sources": ("load_data",),
    "models.registry": ("create_model",),
    "export.writers": ("export_model",),
    "serve.app": ("create_app",),
}


def __getattr__(name: str):
    for module, names in _LAZY.items():
        if name in names:
            import importlib

            return getattr(importlib.import_module(f".{module}", __name__), name)
    raise AttributeError(f"module 'imgclf' has no attribute {name!r}")


__all__ = ["TrainConfig", "ImgclfError", "DataError", "ModelFileError", "train", "resume", "load_model",
           "save_model", "predict_files", "predict_probabilities", "evaluate", "evaluate_images",
           "load_data", "create_model", "export_model", "open_model", "create_app", "calibrate", "explain_files",
           "Explainer", "tune", "compare", "lr_find"]
