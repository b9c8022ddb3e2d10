"""The proof that an export predicts what Keras does.

The artifact is loaded in its own runtime (`inference.runtimes.open_model`) and run on the
check images (`check_images`: up to MAX_CHECK_IMAGES of --check-data, the run's validation
split, then its training split; at least MIN_CHECK_IMAGES, topped up with mirrored and
shifted copies when a run is smaller). Float formats must give Keras' top-1 class on every
image and probabilities within FLOAT_TOLERANCE. int8 is judged by what users need: accuracy on
the labelled check images at most INT8_MAX_ACCURACY_DROP below Keras', and Keras' class on
INT8_CONFIDENT_AGREEMENT of the images where Keras' top two classes are at least
INT8_CONFIDENT_MARGIN apart (a near tie flips under any rounding and says nothing of the
export); the raw agreement is reported too. A failure raises `ExportError`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.decode import decode_paths
from ..errors import DataError, ImgclfError
from ..inference.loaded import LoadedModel, _first_line, keras_function
from ..inference.runtimes import open_model
from ..run.folder import split_images

FLOAT_TOLERANCE = 1e-3  # max |probability difference| allowed between a float export and Keras


INT8_MAX_ACCURACY_DROP = 0.01  # int8 accuracy on the labelled check images: at most 1 point below Keras'


INT8_CONFIDENT_MARGIN = 0.1  # Keras' top-two probability margin from which an image is "confident"


INT8_CONFIDENT_AGREEMENT = 0.99  # share of the confident images on which int8 must pick Keras' class


TIE = 1e-6  # Keras' top two probabilities this close: either class is Keras' answer


MIN_CHECK_IMAGES = 200


MAX_CHECK_IMAGES = 1000  # stratified samples of the run's splits, when they are larger


CALIBRATION_IMAGES = 500  # representative images for int8 quantization


SAMPLE_SEED = 0


CHECK_BATCH = 100


class ExportError(ImgclfError):
    """An export could not be written, or does not predict what the Keras model does."""


@dataclass
class ExportReport:
    format: str
    path: str
    bytes: int
    images: int  # check images
    check_source: str
    agreement: float  # share of check images with the same top-1 class as Keras
    max_abs_diff: float  # largest |probability difference| from Keras
    keras_accuracy: float | None  # on the labelled check images
    export_accuracy: float | None
    seconds: float
    confident_images: int = 0  # check images whose Keras top-two margin is at least INT8_CONFIDENT_MARGIN
    confident_agreement: float | None = None  # share of those with Keras' class (None: there are none)
    labelled_images: int = 0  # check images with a known class (the accuracies are on these)

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckImages:
    pixels: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray | None  # class indices, -1 where unknown; None when none is known
    source: str


def keras_probabilities(model, check: CheckImages) -> np.ndarray:
    return _batched(keras_function(model), check.pixels)


def verify_artifact(path: str | Path, fmt: str, expected: np.ndarray, check: CheckImages) -> ExportReport:
    """Run the artifact at `path` in its runtime on the check images; raise ExportError unless
    its probabilities agree with Keras' `expected` ones (see the module docstring)."""
    report, same = measure_artifact(path, fmt, expected, check)
    if fmt == "litert-int8":
        problems = int8_problems(report)
        if problems:
            raise ExportError(f"the int8 export fails the check: {'; '.join(problems)} ({int8_figures(report)}); "
                              "it was deleted")
    elif not same.all() or report.max_abs_diff > FLOAT_TOLERANCE:
        raise ExportError(f"the {fmt} export disagrees with Keras: {int((~same).sum())} of {len(same)} top-1 classes "
                          f"differ, max |dp| = {report.max_abs_diff:.2e} (allowed {FLOAT_TOLERANCE:g}); "
                          "it was deleted")
    return report


def measure_artifact(path: str | Path, fmt: str, expected: np.ndarray,
                     check: CheckImages) -> tuple[ExportReport, np.ndarray]:
    """The artifact's figures against Keras' `expected` probabilities on the check images, and
    which images got Keras' class; ExportError when it does not load or run."""
    try:
        artifact = open_model(path)
    except ImgclfError as exc:
        raise ExportError(f"the {fmt} export does not load in its runtime: {exc}") from None
    try:
        got = _batched(artifact.predict, check.pixels)
    except Exception as exc:
        raise ExportError(f"the {fmt} export fails in its runtime: {type(exc).__name__}: {_first_line(exc)}") \
            from None
    if got.shape != expected.shape or not np.all(np.isfinite(got)):
        raise ExportError(f"the {fmt} export gives outputs of shape {got.shape} "
                          f"(finite: {bool(np.all(np.isfinite(got)))}), Keras {expected.shape}")
    # A top-1 "disagreement" on a near-exact tie in Keras' own output is float rounding, not a
    # different model: classes within TIE of each other count as the same answer.
    top = np.sort(expected, axis=1)
    margin = top[:, -1] - top[:, -2] if expected.shape[1] > 1 else np.ones(len(expected))
    same = (expected.argmax(1) == got.argmax(1)) | (margin <= TIE)
    diff = float(np.abs(expected - got).max())
    labelled = check.labels >= 0 if check.labels is not None else np.zeros(len(same), bool)
    accuracy = (lambda p: float((p.argmax(1) == check.labels)[labelled].mean())) if labelled.any() else None
    confident = margin >= INT8_CONFIDENT_MARGIN
    report = ExportReport(fmt, str(path), 0, len(check.pixels), check.source, float(same.mean()), diff,
                          accuracy(expected) if accuracy else None, accuracy(got) if accuracy else None, 0.0,
                          confident_images=int(confident.sum()),
                          confident_agreement=float(same[confident].mean()) if confident.any() else None,
                          labelled_images=int(labelled.sum()))
    return report, same


def int8_problems(report: ExportReport) -> list[str]:
    """Why an int8 export is not good enough (module docstring, step 4); [] when it is."""
    problems = []
    if report.keras_accuracy is not None:
        drop = report.keras_accuracy - report.export_accuracy
        if drop > INT8_MAX_ACCURACY_DROP + 1e-9:
            problems.append(f"accuracy drops {drop * 100:.2f} points (allowed {INT8_MAX_ACCURACY_DROP * 100:g})")
    if report.confident_agreement is not None and report.confident_agreement < INT8_CONFIDENT_AGREEMENT:
        problems.append(f"Keras' class on {report.confident_agreement:.1%} of the confident images "
                        f"(needs {INT8_CONFIDENT_AGREEMENT:.0%})")
    return problems


def int8_figures(report: ExportReport) -> str:
    """The int8 check's figures on one line."""
    parts = []
    if report.keras_accuracy is not None:
        parts.append(f"accuracy {report.keras_accuracy:.2%} float, {report.export_accuracy:.2%} int8 "
                     f"on {report.labelled_images} labelled images")
    confident = (f"{report.confident_agreement:.2%}" if report.confident_agreement is not None else "none")
    parts.append(f"same class as Keras on {confident} of the {report.confident_images} images with a top-two "
                 f"margin of at least {INT8_CONFIDENT_MARGIN:g}, {report.agreement:.2%} of all {report.images}")
    return "; ".join(parts)


def _batched(run, pixels: np.ndarray) -> np.ndarray:
    return np.concatenate([np.asarray(run(pixels[i:i + CHECK_BATCH].astype(np.float32)), np.float64)
                           for i in range(0, len(pixels), CHECK_BATCH)])


def print_report(report: ExportReport) -> None:
    print(f"wrote {report.path} ({report.format}, {report.bytes / 1e6:.2f} MB) in {report.seconds:.1f}s")
    print(f"checked on {report.images} images ({report.check_source}): same class as Keras on "
          f"{report.agreement:.2%}, max |dp| {report.max_abs_diff:.2e}")
    if report.format == "litert-int8":
        print(f"int8: {int8_figures(report)}")
    elif report.keras_accuracy is not None:
        drop = report.keras_accuracy - report.export_accuracy
        print(f"accuracy: Keras {report.keras_accuracy:.4f}, export {report.export_accuracy:.4f} "
              f"(drop {drop * 100:+.2f} points)")


def check_images(model_path: Path, loaded: LoadedModel, folder: str | Path | None) -> CheckImages:
    """Up to MAX_CHECK_IMAGES images to check an export on: `folder`'s (--check-data) when
    given, then stratified samples of the run's validation split and of its training split, as
    many as are still wanted. The check compares two runtimes on the same pixels, so images
    seen in training serve as well as unseen ones. Fewer than MIN_CHECK_IMAGES are topped up
    with mirrored and shifted copies of them (labels kept: `_variants`). Without --check-data,
    a model outside its run folder is an error."""
    parts: list[CheckImages] = []
    if folder is not None:
        parts.append(folder_images(folder, loaded, MAX_CHECK_IMAGES))
    problems = []
    for subset in ("val", "train"):
        wanted = MAX_CHECK_IMAGES - sum(len(part.pixels) for part in parts)
        if wanted <= 0:
            break
        try:
            parts.append(run_images(model_path, loaded, subset, wanted))
        except DataError as exc:  # no run folder, a split without images, images moved away
            problems.append(exc)
    parts = [part for part in parts if len(part.pixels)]
    if not parts:
        raise problems[0] if problems else DataError("no usable images to check the export on; "
                                                     "pass --check-data DIR")
    pixels = np.concatenate([part.pixels for part in parts])
    labels = np.concatenate([part.labels if part.labels is not None else np.full(len(part.pixels), -1)
                             for part in parts])
    sources = [f"{part.source} ({len(part.pixels)})" for part in parts] if len(parts) > 1 else [parts[0].source]
    if len(pixels) < MIN_CHECK_IMAGES:
        extra_pixels, extra_labels = _variants(pixels, labels, MIN_CHECK_IMAGES - len(pixels))
        sources.append(f"{len(extra_pixels)} mirrored and shifted copies of them")
        pixels, labels = np.concatenate([pixels, extra_pixels]), np.concatenate([labels, extra_labels])
    return CheckImages(pixels, labels if (labels >= 0).any() else None, ", ".join(sources))


def _variants(pixels: np.ndarray, labels: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """`count` new images made from `pixels`: each mirrored, then shifted by up to 2 pixels
    (edges reflected), in a fixed order; labels kept (a mirror or a small shift keeps the class)."""
    views = [(flip, dy, dx) for dy, dx in [(0, 0), (2, 2), (-2, -2), (2, -2), (-2, 2), (1, 0), (0, 1), (-1, 0),
                                           (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1)]
             for flip in (True, False) if flip or (dy, dx) != (0, 0)]  # every view but the image itself
    padded = np.pad(pixels, ((0, 0), (2, 2), (2, 2), (0, 0)), mode="reflect")
    height, width = pixels.shape[1:3]
    made, made_labels = [], []
    for flip, dy, dx in views:
        view = padded[:, 2 + dy:2 + dy + height, 2 + dx:2 + dx + width]
        made.append(view[:, :, ::-1] if flip else view)
        made_labels.append(labels)
        if sum(len(m) for m in made) >= count:
            break
    return np.concatenate(made)[:count], np.concatenate(made_labels)[:count]


def calibration_images(model_path: Path, loaded: LoadedModel, folder: str | Path | None,
                       check: CheckImages, count: int = CALIBRATION_IMAGES) -> np.ndarray:
    """`count` representative images for int8 quantization: `folder`'s, or the run's training
    split's, or (neither at hand) the check images."""
    if folder is not None:
        return folder_images(folder, loaded, count).pixels
    try:
        return run_images(model_path, loaded, "train", count).pixels
    except DataError:
        return check.pixels[:count]


def folder_images(folder: str | Path, loaded: LoadedModel, limit: int) -> CheckImages:
    """Images under `folder`, labelled when their parent folders are the model's class names."""
    from ..inference.predict import expand_paths

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"not a folder: {folder}")
    paths = expand_paths([str(folder)])
    if len(paths) > limit:
        index = np.sort(np.random.default_rng(SAMPLE_SEED).choice(len(paths), limit, replace=False))
        paths = [paths[i] for i in index]
    decoded = decode_paths(paths, loaded.image_size, resize=loaded.resize)
    kept = [paths[i] for i in decoded.kept]
    parents = [Path(p).parent.name for p in kept]
    labels = None
    if kept and all(name in loaded.class_names for name in parents):
        labels = np.array([loaded.class_names.index(name) for name in parents])
    return CheckImages(decoded.pixels, labels, str(folder))


def run_images(model_path: Path, loaded: LoadedModel, subset: str, limit: int) -> CheckImages:
    """A stratified sample of the run's `subset` ("train" or "val") images (`split_images`)."""
    option = "--check-data" if subset == "val" else "--calibration-data"
    images = split_images(model_path.parent, loaded, subset, limit, seed=SAMPLE_SEED, hint=f"; pass {option} DIR")
    which = "validation" if subset == "val" else "training"
    return CheckImages(images.array, images.labels, f"the run's {which} split")
