"""`imgclf bench-serve MODEL...`: how fast a trained model answers, in every runtime and over HTTP.

For each `.keras` model (in its run folder, whose validation split the exports are checked on):

1. exports it to every format (`export.py`; existing exports beside it are reused) and
   records the file sizes;
2. in-process latency of one image, p50 and p99 over `calls` calls: Keras `model.predict`,
   the compiled function `imgclf` uses, SavedModel, ONNX Runtime, LiteRT float and int8;
3. HTTP: `imgclf serve` in its own process on 127.0.0.1, one-image requests from 1 and from
   8 concurrent clients (p50, p99, requests/s), serving the `.keras` file and its ONNX export;
4. robustness: `mixed` requests cycling through good images and every kind of bad request
   (`request_zoo`); counts the answers by status: any 5xx, or a service that stops
   answering, is a failure.

Writes bench_serve.json. The clients run on the same two cores as the service: HTTP figures
include the client's own cost.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import tempfile
import time
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ImgclfError
from ..run.atomic import write_json
from ..serve.app import DEFAULT_LIMITS, Limits

WARMUP_CALLS = 20
KERAS_PREDICT_CALLS = 100  # model.predict costs ~50 ms a call: fewer of them
START_TIMEOUT = 120  # seconds for a service to start
BENCH_LIMITS = Limits(max_body_mb=1, max_images=4)  # the service under the mixed requests


# --- requests -------------------------------------------------------------------------------

def image_bytes(color=(200, 40, 40), size=(16, 16), fmt="PNG", mode="RGB", seed: int = 0) -> bytes:
    """A noisy solid-colour image file (width, height = size)."""
    rng = np.random.default_rng(seed)
    pixels = np.clip(np.array(color) + rng.normal(0, 20, (*size[::-1], 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, fmt)
    return buffer.getvalue()


def png_bomb(side: int = 20000) -> bytes:
    """A valid PNG header claiming side x side pixels (400 Mpx by default), a few hundred bytes long."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")
    header = side.to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) \
        + chunk(b"IEND", b"")


def request_zoo(limits: Limits) -> dict[str, tuple[dict, int]]:
    """Bad requests to POST /predict, each with the status the service must answer:
    name -> (keyword arguments of an httpx request, status)."""
    png, jpeg = image_bytes(), image_bytes(fmt="JPEG")
    one = {"files": ("r.png", png, "image/png")}
    over = int(limits.max_body_bytes * 1.5)
    return {
        "no files field": (dict(data={"top_k": "1"}), 422),
        "json body": (dict(json={"files": []}), 422),
        "url-encoded body": (dict(data={"files": "abc"}), 422),
        "empty file": (dict(files={"files": ("e.png", b"", "image/png")}), 400),
        "text named .jpg": (dict(files={"files": ("photo.jpg", b"this is not a picture at all", "image/jpeg")}), 415),
        "html file": (dict(files={"files": ("a.html", b"<html><body>x</body></html>", "text/html")}), 415),
        "svg image": (dict(files={"files": ("a.svg", b'<svg xmlns="http://www.w3.org/2000/svg"/>',
                                            "image/svg+xml")}), 415),
        "truncated jpeg": (dict(files={"files": ("t.jpg", jpeg[:200], "image/jpeg")}), 422),
        "png cut inside its header": (dict(files={"files": ("h.png", png[:40], "image/png")}), 415),
        "decompression bomb": (dict(files={"files": ("bomb.png", png_bomb(), "image/png")}), 413),
        "too many images": (dict(files=[("files", (f"{i}.png", png, "image/png"))
                                        for i in range(limits.max_images + 1)]), 400),
        "body too large": (dict(files={"files": ("big.png", b"\x89PNG" + bytes(over), "image/png")}), 413),
        "top_k zero": (dict(files=one, data={"top_k": "0"}), 422),
        "top_k negative": (dict(files=one, data={"top_k": "-2"}), 422),
        "top_k not a number": (dict(files=one, data={"top_k": "abc"}), 422),
        "one good one bad": (dict(files=[("files", ("r.png", png, "image/png")),
                                         ("files", ("x.png", b"GIF89a-broken", "image/png"))]), 415),
    }


# --- the service in its own process -----------------------------------------------------------

def client(url: str, timeout: float = 60):
    """An HTTP client for the service on loopback: proxy settings from the environment ignored."""
    import httpx2

    return httpx2.Client(base_url=url, timeout=timeout, trust_env=False)


class Service:
    """`imgclf serve MODEL` in a subprocess on 127.0.0.1, on a port the service picks itself
    (`--port 0`, read back from its log: no race for a port chosen beforehand), until `stop`."""

    def __init__(self, model: str | Path, *extra: str, limits: Limits = DEFAULT_LIMITS):
        import httpx2

        # The log goes to a file: a pipe nobody reads fills up (a line per request) and blocks the service.
        self.log = tempfile.NamedTemporaryFile(mode="w+", suffix=".log")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "imgclf.cli", "serve", str(model), "--port", "0",
             "--max-upload-mb", str(limits.max_body_mb), "--max-images", str(limits.max_images),
             "--max-megapixels", str(limits.max_pixels / 1e6), *extra],
            stdout=self.log, stderr=subprocess.STDOUT, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
        self.url = None
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ImgclfError(f"imgclf serve exited with {self.process.returncode}: {self.stop()}")
            if self.url is None:
                found = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", Path(self.log.name).read_text())
                self.url = found.group(1) if found else None
            if self.url is not None:
                try:
                    with client(self.url, timeout=5) as http:
                        if http.get("/health").status_code == 200:
                            return
                except httpx2.TransportError:
                    pass
            time.sleep(0.25)
        output = self.stop()
        raise ImgclfError(f"imgclf serve did not answer within {START_TIMEOUT}s: {output[-500:]}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> str:
        """Stop the service; its output."""
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.seek(0)
        output = self.log.read()
        self.log.close()
        return output


# --- measurements -----------------------------------------------------------------------------

def percentiles(seconds: list[float]) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 4), "p99_ms": round(float(np.percentile(ms, 99)), 4),
            "mean_ms": round(float(ms.mean()), 4), "calls": len(ms)}


def time_calls(run, images: np.ndarray, calls: int) -> dict:
    """One image per call, cycling through `images`."""
    for i in range(WARMUP_CALLS):
        run(images[i % len(images)][None])
    seconds = []
    for i in range(calls):
        image = images[i % len(images)][None]
        start = time.perf_counter()
        run(image)
        seconds.append(time.perf_counter() - start)
    return percentiles(seconds)


def in_process_latency(model_path: Path, artifacts: dict[str, Path], images: np.ndarray, calls: int) -> dict:
    from ..inference.loaded import keras_function
    from ..inference.modelio import load_model
    from ..inference.runtimes import open_model

    loaded = load_model(model_path)
    runs = {"keras predict": lambda x: loaded.model.predict(x, verbose=0),
            "compiled function": keras_function(loaded.model)}
    runtime_of = {"savedmodel": "savedmodel", "onnxruntime": "onnx", "litert": "litert", "litert-int8": "litert-int8"}
    for name, fmt in runtime_of.items():
        if fmt in artifacts:
            runs[name] = open_model(artifacts[fmt]).predict
    return {name: time_calls(run, images.astype(np.float32),
                             KERAS_PREDICT_CALLS if name == "keras predict" else calls)
            for name, run in runs.items()}


def http_latency(url: str, image: bytes, requests: int, clients: int) -> dict:
    """`requests` one-image requests in all, split among `clients` concurrent clients."""
    def client_run(count: int) -> list[float]:
        seconds = []
        with client(url) as http:
            for _ in range(count):
                start = time.perf_counter()
                answer = http.post("/predict", files={"files": ("image.png", image, "image/png")})
                seconds.append(time.perf_counter() - start)
                if answer.status_code != 200:
                    raise ImgclfError(f"the service answered {answer.status_code}: {answer.text[:200]}")
        return seconds

    with client(url) as http:  # warm up the service
        for _ in range(WARMUP_CALLS):
            http.post("/predict", files={"files": ("image.png", image, "image/png")})
        before = http.get("/health").json()
    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        per_client = list(pool.map(client_run, [requests // clients] * clients))
    wall = time.perf_counter() - start
    with client(url) as http:
        after = http.get("/health").json()
    seconds = [s for one in per_client for s in one]
    calls = after["model_calls"] - before["model_calls"]
    return {**percentiles(seconds), "clients": clients, "requests_per_s": round(len(seconds) / wall, 1),
            "images_per_model_call": round((after["images"] - before["images"]) / max(calls, 1), 2)}


def http_latencies(url: str, image: bytes, requests: int) -> dict:
    return {f"{clients}_clients": http_latency(url, image, requests, clients) for clients in (1, 8)}


def mixed_requests(url: str, good: list[bytes], count: int, limits: Limits) -> dict:
    """`count` requests cycling through good images and the zoo of bad requests."""
    zoo = list(request_zoo(limits).items())
    statuses: Counter = Counter()
    wrong = []
    with client(url) as http:
        for i in range(count):
            if i % 2 == 0:
                kwargs, expected, kind = {"files": {"files": ("g.png", good[i % len(good)], "image/png")}}, 200, "good"
            else:
                kind, (kwargs, expected) = zoo[(i // 2) % len(zoo)][0], zoo[(i // 2) % len(zoo)][1]
            answer = http.post("/predict", **kwargs)
            statuses[answer.status_code] += 1
            if answer.status_code != expected:
                wrong.append({"request": kind, "status": answer.status_code, "expected": expected})
        healthy = http.get("/health").status_code == 200
    return {"requests": count, "statuses": dict(sorted(statuses.items())),
            "server_errors": sum(n for status, n in statuses.items() if status >= 500),
            "unexpected": wrong[:20], "unexpected_count": len(wrong), "still_answering": healthy}


def sizes(model_path: Path, artifacts: dict[str, Path]) -> dict:
    from ..export.writers import _size

    return {"keras": model_path.stat().st_size, **{fmt: _size(path) for fmt, path in artifacts.items()}}


# --- the whole bench --------------------------------------------------------------------------

def run_bench_serve(models: list[str | Path], out: str | Path, *, calls: int = 1000, http_requests: int = 400,
                    mixed: int = 1000) -> dict:
    from ..export.verify import check_images
    from ..export.writers import FORMATS, default_path, export_model
    from ..inference.modelio import load_model
    from ..models.recipes import saved_recipe
    from ..training.hardware import environment

    report: dict = {"environment": environment(0), "calls": calls, "models": {}}
    for model in models:
        model_path = Path(model)
        loaded = load_model(model_path)
        name = saved_recipe(loaded.metadata) or model_path.stem
        print(f"== {model_path} ({name})", flush=True)
        artifacts, export_errors = {}, {}
        for fmt in FORMATS:
            path = default_path(model_path, fmt)
            if not path.exists() or not _exported_from(path, model_path):
                try:
                    export_model(model_path, fmt, verbose=True)
                except ImgclfError as exc:
                    export_errors[fmt] = str(exc)
                    print(f"{fmt}: {exc}")
                    continue
            artifacts[fmt] = path
        images = check_images(model_path, loaded, None).pixels[:64]
        entry = {"recipe": name, "image_size": list(loaded.image_size), "sizes_bytes": sizes(model_path, artifacts),
                 "export_errors": export_errors,
                 "in_process": in_process_latency(model_path, artifacts, images, calls), "http": {}}
        good = [_png(image) for image in images[:16]]
        # The .keras file's service is timed, then takes the mixed requests: one process start
        # fewer. Its limits (BENCH_LIMITS) refuse only what the timed request (one small PNG) is not.
        service = Service(model_path, limits=BENCH_LIMITS)
        try:
            entry["http"]["keras"] = http_latencies(service.url, good[0], http_requests)
            entry["mixed_requests"] = mixed_requests(service.url, good, mixed, BENCH_LIMITS)
            entry["mixed_requests"]["process_alive"] = service.alive()
        finally:
            output = service.stop()
        if "onnx" in artifacts:
            service = Service(artifacts["onnx"])
            try:
                entry["http"]["onnx"] = http_latencies(service.url, good[0], http_requests)
            finally:
                service.stop()
        entry["mixed_requests"]["tracebacks_in_log"] = output.count("Traceback")
        report["models"][str(model_path)] = entry
        print_entry(entry)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "bench_serve.json", report)
    print(f"wrote {out / 'bench_serve.json'}")
    return report


def _exported_from(artifact: Path, model_path: Path) -> bool:
    """Whether the export at `artifact` was made from this very model file."""
    from ..data.decode import file_hash
    from ..inference.runtimes import open_model

    try:
        return open_model(artifact).metadata.get("source_sha256") == file_hash(model_path)
    except ImgclfError:
        return False


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def print_entry(entry: dict) -> None:
    print(f"{'runtime':<18} {'p50 ms':>8} {'p99 ms':>8}")
    for name, figures in entry["in_process"].items():
        print(f"{name:<18} {figures['p50_ms']:8.3f} {figures['p99_ms']:8.3f}")
    for label, runs in entry["http"].items():
        for key, figures in runs.items():
            print(f"HTTP {label:<6} {key:<10} p50 {figures['p50_ms']:.2f} ms  p99 {figures['p99_ms']:.2f} ms  "
                  f"{figures['requests_per_s']} requests/s  {figures['images_per_model_call']} images per model call")
    mixed = entry["mixed_requests"]
    print(f"mixed requests: {mixed['requests']}, statuses {mixed['statuses']}, server errors "
          f"{mixed['server_errors']}, unexpected {mixed['unexpected_count']}, still answering "
          f"{mixed['still_answering']}")
    print("sizes (MB): " + ", ".join(f"{k} {v / 1e6:.2f}" for k, v in entry["sizes_bytes"].items()))
    for fmt, error in entry["export_errors"].items():
        print(f"export {fmt} failed: {error}")
