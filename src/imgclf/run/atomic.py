"""Atomic file writes: a temporary file in the same folder, then `os.replace`.

A kill at any instant leaves either the previous complete file or the new
complete one, never a truncated file.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import os
import shutil
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..errors import RESOURCE_ERRNOS, StorageError

PARTIAL_MARK = ".partial-"  # in the names of temporary files: `.<name>.partial-XXXX<suffix>`


@functools.lru_cache(maxsize=1)
def _file_mode() -> int:
    """What open() would give a new file (mkstemp gives 0600); read on first use, not at import,
    since reading the umask means setting it for an instant."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success it replaces `path` in one step.
    A full disk (or another refusal of the operating system, `errors.RESOURCE_ERRNOS`) raises
    StorageError naming `path` and saying that its previous content is intact."""
    path = Path(path)
    tmp_path = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{PARTIAL_MARK}", suffix=suffix or ".tmp", dir=path.parent)
        os.fchmod(fd, _file_mode())
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        with open(tmp_path, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp_path, path)
    except OSError as exc:
        if exc.errno not in RESOURCE_ERRNOS:
            raise
        kept = f"the previous {path.name} is intact" if path.exists() else "nothing was written there"
        raise StorageError(RESOURCE_ERRNOS[exc.errno], path, kept) from None
    finally:
        if tmp_path is not None and tmp_path.exists():
            tmp_path.unlink()


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Delete temporary files (and an export's temporary folders) that a killed process left
    in `folder`; return them."""
    leftovers = sorted(Path(folder).glob(f".*{PARTIAL_MARK}*"))
    for leftover in leftovers:
        if leftover.is_dir() and not leftover.is_symlink():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)
    return leftovers


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any) -> None:
    write_text(path, json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")


def write_figure(path: str | Path, figure, dpi: int) -> None:
    """A Matplotlib figure as a PNG file. A class name in a script the font lacks (a CJK name
    in DejaVu Sans) is drawn as boxes without a warning per glyph: the name itself is in the
    CSV and HTML files beside the figure."""
    with atomic_path(path, suffix=".png") as tmp, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Glyph \d+ .* missing from font", category=UserWarning)
        figure.savefig(tmp, dpi=dpi, format="png")


def write_csv(path: str | Path, header: list[str], rows: list[list[Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
