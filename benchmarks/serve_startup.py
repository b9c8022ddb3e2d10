"""Serving without TensorFlow (issue 23): start-up time and peak memory of `imgclf serve` for
one model as .keras, .onnx and .tflite, and the installed size of the serving-only install
(requirements-serve.txt + `pip install --no-deps .`) against the full one.

    python benchmarks/serve_startup.py --out OUT --serve-venv VENV [--starts 3]

Builds an untrained `fast-tiny` model for 32x32 images and 10 classes in OUT (start-up and
memory do not depend on its weights) and exports it to ONNX and LiteRT, checked on CIFAR-10
images (--check-data), with this interpreter's imgclf. Then for each file and each install
(this interpreter's: the full one; VENV's: the serving-only one, for .onnx and .tflite),
STARTS times: `imgclf serve FILE` starts; its start-up time runs from before the process is
started until GET /health answers; one image is POSTed to /predict; the server's peak resident
memory is read (VmHWM in /proc/PID/status); the server is stopped. Prints the medians as a
Markdown table with each install's site-packages size (du), and writes OUT/serve_startup.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CIFAR10_TRAIN = REPO.parent / "shared" / "datasets" / "cifar10" / "train"
RECIPE, IMAGE_SIZE, CLASSES = "fast-tiny", 32, 10
POLL_SECONDS = 0.02  # between GET /health tries while the server starts
START_TIMEOUT = 120.0  # seconds a server may take to answer before the run fails
BOUNDARY = "imgclf-bench"


def make_models(out: Path, check_data: Path) -> dict[str, Path]:
    """OUT/model.keras and its .onnx and .tflite exports (made once, kept for the next run)."""
    paths = {"keras": out / "model.keras", "onnx": out / "model.onnx", "litert": out / "model.tflite"}
    if all(path.exists() for path in paths.values()):
        return paths
    from imgclf import create_model, export_model, save_model

    out.mkdir(parents=True, exist_ok=True)
    model = create_model(RECIPE, (IMAGE_SIZE, IMAGE_SIZE, 3), CLASSES)
    save_model(model, paths["keras"], [f"class{i}" for i in range(CLASSES)], recipe=RECIPE)
    for fmt in ("onnx", "litert"):
        export_model(paths["keras"], fmt, paths[fmt], check_data=check_data, verbose=False)
    return paths


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def png() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def post_image(port: int, content: bytes) -> dict:
    body = (f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="files"; filename="x.png"\r\n'
            "Content-Type: image/png\r\n\r\n").encode() + content + f"\r\n--{BOUNDARY}--\r\n".encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}/predict", body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={BOUNDARY}"})
    with urllib.request.urlopen(request, timeout=60) as answer:
        return json.loads(answer.read())


def one_start(imgclf: Path, model: Path, image: bytes) -> dict:
    """Start `imgclf serve MODEL`, time it to the first /health answer, predict once, read VmHWM."""
    port = free_port()
    started = time.perf_counter()
    server = subprocess.Popen([str(imgclf), "serve", str(model), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"{imgclf} serve {model} exited: {server.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                    break
            except (urllib.error.URLError, ConnectionError):
                if time.perf_counter() - started > START_TIMEOUT:
                    raise RuntimeError(f"{imgclf} serve {model}: no answer in {START_TIMEOUT:.0f} s") from None
                time.sleep(POLL_SECONDS)
        seconds = time.perf_counter() - started
        assert post_image(port, image)["predictions"], "no prediction"
        status = Path(f"/proc/{server.pid}/status").read_text()
        peak_kb = int(next(line for line in status.splitlines() if line.startswith("VmHWM:")).split()[1])
        return {"seconds": seconds, "peak_rss_mb": peak_kb / 1024}
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def site_packages_mb(python: Path) -> float:
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    return int(subprocess.run(["du", "-sk", purelib], capture_output=True, text=True, check=True)
               .stdout.split()[0]) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="folder for the models and serve_startup.json")
    parser.add_argument("--serve-venv", type=Path, required=True, help="a venv with the serving-only install")
    parser.add_argument("--starts", type=int, default=3, help="starts per file and install (default: 3)")
    parser.add_argument("--check-data", type=Path, default=CIFAR10_TRAIN, help="images to check the exports on")
    args = parser.parse_args()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    models = make_models(args.out, args.check_data)
    installs = {"full": Path(sys.executable).parent, "serving-only": args.serve_venv / "bin"}
    image = png()
    rows = []
    for install, bin_dir in installs.items():
        for fmt, model in models.items():
            if install == "serving-only" and fmt == "keras":
                continue  # needs TensorFlow, which that install does not have
            runs = [one_start(bin_dir / "imgclf", model, image) for _ in range(args.starts)]
            rows.append({"install": install, "format": fmt, "file": model.name, "runs": runs,
                         "seconds": statistics.median(r["seconds"] for r in runs),
                         "peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in runs)})
            print(f"{install} {model.name}: {rows[-1]['seconds']:.2f} s, {rows[-1]['peak_rss_mb']:.0f} MB",
                  file=sys.stderr)
    sizes = {install: site_packages_mb(bin_dir / "python") for install, bin_dir in installs.items()}
    (args.out / "serve_startup.json").write_text(json.dumps({"rows": rows, "site_packages_mb": sizes}, indent=2))
    print(f"| install | file | start-up to /health (median of {args.starts}) | peak RSS after one prediction |")
    print("| --- | --- | --- | --- |")
    for row in rows:
        print(f"| {row['install']} | `{row['file']}` | {row['seconds']:.2f} s | {row['peak_rss_mb']:.0f} MB |")
    print("\n| install | site-packages |\n| --- | --- |")
    for install, megabytes in sizes.items():
        print(f"| {install} | {megabytes:,.0f} MB |")


if __name__ == "__main__":
    main()
