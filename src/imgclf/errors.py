"""The exception types users see: each carries a message meant to be printed on one line."""


class ImgclfError(Exception):
    """A problem with the user's input or environment (not a bug in imgclf).

    The CLI prints its message on one line and exits non-zero, without a traceback.
    """


class DataError(ImgclfError):
    """The data cannot be loaded or is unusable (missing, empty, one class, ...)."""


class ModelFileError(ImgclfError):
    """A file that should be a saved imgclf/Keras model is not one, or is unsafe."""


class CheckpointError(ImgclfError):
    """A training checkpoint that cannot be read or does not fit the model."""
