"""The exception types users see: each carries a message meant to be printed on one line."""

import errno


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


class StorageError(ImgclfError):
    """The operating system refused a write (disk full, quota, read-only, permission): the
    message names the file and what was kept."""

    def __init__(self, reason: str, path, kept: str):
        super().__init__(f"{reason} while writing {path}; {kept}")
        self.reason, self.path, self.kept = reason, path, kept


# errno -> what the user is told; errors of these kinds are the machine's, not imgclf's
RESOURCE_ERRNOS = {
    errno.ENOSPC: "disk full", errno.EDQUOT: "disk quota exceeded", errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied", errno.EPERM: "permission denied", errno.EFBIG: "file too large",
    errno.ENOMEM: "out of memory",
}


def resource_error(exc: BaseException) -> str | None:
    """One line for an error of the operating system or the runtime that is about the
    machine's resources (disk, memory, permissions), naming the file or the setting; None for
    anything else (a bug, to be reported as one)."""
    if isinstance(exc, OSError) and exc.errno in RESOURCE_ERRNOS:
        where = f" while writing or reading {exc.filename}" if exc.filename else ""
        return f"{RESOURCE_ERRNOS[exc.errno]}{where} ({exc.strerror or exc})"
    if isinstance(exc, MemoryError) or type(exc).__name__ == "ResourceExhaustedError":
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        return ("out of memory" + (f" ({detail})" if detail else "")
                + "; try a smaller --batch-size or --image-size, or --memory-limit-mb to stream images from disk")
    return None
