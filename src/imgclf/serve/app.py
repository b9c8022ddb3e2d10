"""`imgclf serve MODEL`: an HTTP prediction service on FastAPI + uvicorn.

    POST /predict    multipart: one or more `files`, optional `top_k`; JSON top classes per image
                     (with --min-confidence, `uncertain` below it)
    POST /explain    multipart: one `file`, optional `class_name`; a PNG of the image with its
                     Grad-CAM heatmap over it (a .keras model; 501 for an export)
    GET  /health     {"status": "ok"}
    GET  /metadata   class names, input size, recipe, format, the model file's sha256
    GET  /           a page to pick or drop images and see their predictions
    GET  /docs       the OpenAPI documentation FastAPI generates

The model is loaded once per worker process and run through `runtimes.open_model`: one
compiled TensorFlow function for a `.keras` file, or the export's own runtime (an `.onnx` or
`.tflite` file is served without TensorFlow or Keras, see `requirements-serve.txt`). Requests that
arrive while the model is busy are stacked into one batch (`Batcher`).

Bad input gets a 4xx JSON answer ({"detail": ...}) and never stops the service: body size
(413), images per request (400, from FastAPI's form limits), empty files (400), content that
is not an image whatever its name says (415), damaged images (422), images over the pixel
limit (413, `Limits.max_pixels`), bad `top_k` (422). Decodes run a few at a time
(DECODERS), so many large images at once queue rather than exhaust memory.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import BaseModel

from ..config import DEFAULT_RESIZE, ServeLimits
from ..data.decode import DECODE_THREADS, BadImage, decode_image, file_hash
from ..errors import ImgclfError
from ..inference.explain import overlay_png
from ..inference.loaded import LoadedModel
from ..inference.predict import check_min_confidence, top_predictions
from ..inference.runtimes import open_model

MAX_BATCH = 64  # images per model call when requests are stacked
DECODERS = DECODE_THREADS  # decodes at a time in a worker
MODEL_ENV = "IMGCLF_SERVE_MODEL"  # how `--workers N` hands the settings to each worker process
LIMITS_ENV = "IMGCLF_SERVE_LIMITS"
MIN_CONFIDENCE_ENV = "IMGCLF_SERVE_MIN_CONFIDENCE"


Limits = ServeLimits  # what a request may hold: defined and checked in config, for the CLI too
DEFAULT_LIMITS = Limits()


class ClassScore(BaseModel):
    label: str
    probability: float


class ImagePrediction(BaseModel):
    file: str
    label: str  # the most likely class, or "uncertain" below the service's --min-confidence
    uncertain: bool  # top probability below --min-confidence (never without one)
    top: list[ClassScore]


class PredictResponse(BaseModel):
    predictions: list[ImagePrediction]


class Batcher:
    """Runs the model on stacked requests: whatever has queued up while the model was busy
    (up to MAX_BATCH images) goes through in one call, on one thread. Starts on first use."""

    def __init__(self, predict, max_batch: int = MAX_BATCH):
        self._predict = predict
        self._max_batch = max_batch
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.calls = 0  # model calls so far
        self.images = 0  # images through the model so far

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="imgclf-model")
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        task, executor, queue = self._task, self._executor, self._queue
        self._task = self._executor = self._queue = None
        if task is not None:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        while queue is not None and not queue.empty():
            _, future = queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the service is stopping"))
        if executor is not None:
            executor.shutdown(wait=False)

    async def predict(self, pixels: np.ndarray) -> np.ndarray:
        if self._task is None or self._task.done():
            self.start()
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((pixels, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            count = len(items[0][0])
            while count < self._max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
                count += len(items[-1][0])
            try:
                batch = np.concatenate([pixels for pixels, _ in items])
                probs = await loop.run_in_executor(self._executor, self._predict, batch)
                self.calls += 1
                self.images += len(batch)
            except asyncio.CancelledError:
                for _, future in items:
                    if not future.done():
                        future.set_exception(RuntimeError("the service is stopping"))
                raise
            except Exception as exc:  # the model failed: every waiting request learns it
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            start = 0
            for pixels, future in items:
                if not future.done():  # a client that went away cancelled its future
                    future.set_result(probs[start:start + len(pixels)])
                start += len(pixels)


class BodyLimit:
    """ASGI middleware: a 413 JSON answer for request bodies over `max_bytes`. The
    Content-Length header decides at once; a body without one (chunked) is read up to the
    limit here, then handed on. (FastAPI's own `max_body_size` answers in plain text, and an
    error raised while FastAPI parses a form turns into a 400.)"""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = JSONResponse({"detail": f"request body over the limit of {self.max_bytes / 1024 / 1024:g} MB"},
                                 413)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None:
            if not length.isdigit() or int(length) > self.max_bytes:
                return await too_large(scope, receive, send)
            return await self.app(scope, receive, send)
        chunks, size = [], 0
        while True:
            item = await receive()
            if item["type"] != "http.request":
                return  # the client went away
            chunks.append(item.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                return await too_large(scope, receive, send)
            if not item.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        await self.app(scope, replay, send)


def create_app(model: str | Path | LoadedModel, limits: Limits = DEFAULT_LIMITS,
               min_confidence: float | None = None) -> FastAPI:
    """The service for `model` (a path, loaded in this process, or an already loaded model);
    below `min_confidence` an image's answer is "uncertain"."""
    check_min_confidence(min_confidence)
    loaded = model if isinstance(model, LoadedModel) else open_model(model)
    explainer, cannot_explain = _explainer(loaded)
    info = {
        "class_names": loaded.class_names,
        "image_size": list(loaded.image_size),
        "resize": loaded.resize,
        "recipe": loaded.metadata.get("recipe") or loaded.metadata.get("model_name"),
        "format": loaded.metadata.get("format") or loaded.format,
        "model_file": loaded.path.name if loaded.path else None,
        "sha256": file_hash(loaded.path) if loaded.path else None,
        "limits": {"max_body_mb": limits.max_body_mb, "max_images": limits.max_images,
                   "max_pixels": limits.max_pixels},
        "min_confidence": min_confidence,
        "temperature": loaded.temperature,
        "explain": explainer is not None,
    }
    explain_lock = asyncio.Lock()  # one Grad-CAM at a time
    batcher = Batcher(loaded.predict)
    decoders = asyncio.Semaphore(DECODERS)  # decodes at a time: bounds memory as well as CPU

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        batcher.start()
        yield
        await batcher.stop()

    app = FastAPI(title="imgclf", summary=f"Image classifier: {', '.join(loaded.class_names[:10])}"
                  + (" ..." if len(loaded.class_names) > 10 else ""), lifespan=lifespan,
                  form_limits={"max_files": limits.max_images, "max_fields": 8})
    app.state.batcher = batcher
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)
    page = resources.files(__package__).joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> str:
        return page

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "model_calls": batcher.calls, "images": batcher.images}

    @app.get("/metadata")
    async def metadata() -> dict:
        return info

    # HEAD too, on what uptime checkers and load balancers probe: the GET answer without its
    # body (Starlette drops it); left out of the OpenAPI schema, where it would repeat the GET
    app.add_api_route("/", index, methods=["HEAD"], response_class=HTMLResponse, include_in_schema=False)
    for path, endpoint in (("/health", health), ("/metadata", metadata)):
        app.add_api_route(path, endpoint, methods=["HEAD"], include_in_schema=False)

    @app.post("/predict", response_model=PredictResponse,
              responses={400: {"description": "empty file, too many files"}, 413: {"description": "too large"},
                         415: {"description": "not an image"}, 422: {"description": "damaged image or bad field"}})
    async def predict(files: Annotated[list[UploadFile], File(description="one or more images")],
                      top_k: Annotated[int, Form(ge=1, le=1000, description="classes per image")] = 1):
        pixels = []
        for upload in files:
            content = await upload.read()
            async with decoders:
                pixels.append(await run_in_threadpool(_decode, content, upload.filename, loaded.image_size,
                                                      limits.max_pixels, loaded.resize))
        probs = await batcher.predict(np.stack(pixels))
        names = [upload.filename or f"image {i}" for i, upload in enumerate(files)]
        return PredictResponse(predictions=[
            ImagePrediction(file=p.name, label=p.answer, uncertain=bool(p.uncertain),
                            top=[ClassScore(label=label, probability=score) for label, score in p.top])
            for p in top_predictions(probs, loaded.class_names, names, top_k, min_confidence)])

    @app.post("/explain", response_class=Response,
              responses={200: {"content": {"image/png": {}}, "description": "the image with its heatmap"},
                         400: {"description": "empty file"}, 413: {"description": "too large"},
                         415: {"description": "not an image"}, 422: {"description": "damaged image or bad field"},
                         501: {"description": "the served model cannot be explained (an export)"}})
    async def explain(file: Annotated[UploadFile, File(description="one image")],
                      class_name: Annotated[str | None, Form(description="explain this class (default: the "
                                                                         "predicted one)")] = None):
        content = await file.read()
        async with decoders:
            pixels = await run_in_threadpool(_decode, content, file.filename, loaded.image_size, limits.max_pixels,
                                             loaded.resize)
        if explainer is None:
            raise HTTPException(501, cannot_explain)
        if class_name is not None and class_name not in loaded.class_names:
            raise HTTPException(422, f"class_name {class_name!r} is not one of the model's classes")
        classes = None if class_name is None else np.array([loaded.class_names.index(class_name)], np.int32)
        async with explain_lock:
            heatmaps, probs = await run_in_threadpool(explainer.heatmaps, pixels[None], classes)
        top = int(probs[0].argmax())
        explained = class_name or loaded.class_names[top]
        png = await run_in_threadpool(overlay_png, pixels.astype(np.uint8), heatmaps[0])
        return Response(png, media_type="image/png", headers={
            "X-Predicted-Class": _header(loaded.class_names[top]), "X-Explained-Class": _header(explained),
            "X-Confidence": f"{probs[0, top]:.6f}"})

    return app


def _explainer(loaded: LoadedModel):
    """(Grad-CAM of the served model, None) or (None, why /explain cannot answer)."""
    if loaded.model is None:
        return None, (f"this service runs an exported {loaded.format} model: Grad-CAM needs the gradients of the "
                      ".keras model (serve that file to explain)")
    from ..inference.explain import Explainer

    try:
        return Explainer(loaded), None
    except ImgclfError as exc:
        return None, str(exc)


def _header(text: str) -> str:
    """A class name as an HTTP header value (latin-1 only: other characters percent-encoded)."""
    from urllib.parse import quote

    return quote(text, safe=" -_.,;:()[]")


def _decode(content: bytes, name: str | None, size: tuple[int, int], max_pixels: int,
            resize: str = DEFAULT_RESIZE) -> np.ndarray:
    name = name or "upload"
    if not content:
        raise HTTPException(400, f"{name}: empty file")
    try:
        return decode_image(io.BytesIO(content), size, max_pixels, resize).astype(np.float32)
    except Exception as exc:  # a decoder plugin may raise anything on a crafted file
        if not isinstance(exc, BadImage):
            raise HTTPException(422, f"{name}: cannot decode ({type(exc).__name__})") from None
        reason = str(exc)
        if reason == "not an image":
            raise HTTPException(415, f"{name}: not an image (the content is no image format we decode)") from None
        if reason.startswith("too large"):
            raise HTTPException(413, f"{name}: {reason}") from None
        raise HTTPException(422, f"{name}: {reason}") from None


def app_from_environment() -> FastAPI:
    """uvicorn's factory for each worker process of `imgclf serve --workers N`."""
    limits = Limits(**json.loads(os.environ.get(LIMITS_ENV, "{}")))
    min_confidence = os.environ.get(MIN_CONFIDENCE_ENV)
    return create_app(os.environ[MODEL_ENV], limits, float(min_confidence) if min_confidence else None)


def serve(model: str | Path | LoadedModel, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
          limits: Limits = DEFAULT_LIMITS, log_level: str = "info", min_confidence: float | None = None) -> None:
    """Run the service until interrupted. `model`: a path, or (one worker) a loaded model."""
    import uvicorn

    if workers == 1:
        uvicorn.run(create_app(model, limits, min_confidence), host=host, port=port, log_level=log_level)
        return
    path = model.path if isinstance(model, LoadedModel) else model  # each worker loads its own
    os.environ[MODEL_ENV] = str(Path(path).resolve())
    os.environ[LIMITS_ENV] = json.dumps(asdict(limits))
    os.environ[MIN_CONFIDENCE_ENV] = "" if min_confidence is None else repr(min_confidence)
    uvicorn.run(f"{__name__}:app_from_environment", factory=True, host=host, port=port, workers=workers,
                log_level=log_level)
