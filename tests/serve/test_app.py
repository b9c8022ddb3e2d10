"""The prediction service through FastAPI's test client: good requests, 15+ kinds of bad ones
(each a clear 4xx JSON answer), batching, and the service still answering afterwards."""

from __future__ import annotations

import asyncio
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from imgclf.inference.runtimes import open_model
from imgclf.serve.app import Batcher, create_app

from .conftest import BAD_REQUESTS, LIMITS, image_bytes


@pytest.fixture(scope="module")
def client(trained_run):
    app = create_app(trained_run / "best_model.keras", LIMITS)
    with TestClient(app) as client:
        yield client


def test_health_metadata_page_and_docs(client):
    assert client.get("/health").json()["status"] == "ok"
    info = client.get("/metadata").json()
    assert info["class_names"] == ["blue", "green", "red"] and info["image_size"] == [16, 16]
    assert info["recipe"] == "seed" and info["format"] == "keras" and len(info["sha256"]) == 64
    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text and "http" not in page.text.split("<script>")[1]
    assert client.get("/docs").status_code == 200
    assert "/predict" in client.get("/openapi.json").json()["paths"]


def test_predicts_one_and_several_images(client):
    answer = client.post("/predict", files={"files": ("red.png", image_bytes((200, 40, 40)), "image/png")})
    assert answer.status_code == 200
    (prediction,) = answer.json()["predictions"]
    assert prediction["file"] == "red.png" and prediction["top"][0]["label"] == "red"
    assert len(prediction["top"]) == 1
    files = [("files", ("g.jpg", image_bytes((40, 190, 40), fmt="JPEG"), "image/jpeg")),
             ("files", ("b.png", image_bytes((40, 40, 200)), "image/png")),
             ("files", ("gray.png", image_bytes((200, 200, 200), mode="L"), "image/png")),
             ("files", ("rgba.png", image_bytes((200, 40, 40), mode="RGBA", size=(40, 30)), "image/png"))]
    answer = client.post("/predict", files=files, data={"top_k": "3"})
    assert answer.status_code == 200
    predictions = answer.json()["predictions"]
    assert [p["top"][0]["label"] for p in predictions[:2]] == ["green", "blue"]
    assert all(len(p["top"]) == 3 for p in predictions)
    assert all(abs(sum(s["probability"] for s in p["top"]) - 1) < 1e-4 for p in predictions)
    # more classes asked for than the model has: all of them
    answer = client.post("/predict", files={"files": ("r.png", image_bytes(), "image/png")}, data={"top_k": "50"})
    assert len(answer.json()["predictions"][0]["top"]) == 3


def test_probabilities_are_the_models(client, trained_run):
    loaded = open_model(trained_run / "best_model.keras")
    content = image_bytes((120, 90, 60), fmt="PNG")
    expected = loaded.predict(np.asarray(Image.open(io.BytesIO(content)).convert("RGB"), np.float32)[None])[0]
    top = client.post("/predict", files={"files": ("x.png", content, "image/png")},
                      data={"top_k": "3"}).json()["predictions"][0]["top"]
    got = {score["label"]: score["probability"] for score in top}
    np.testing.assert_allclose([got[name] for name in loaded.class_names], expected, atol=1e-6)


@pytest.mark.parametrize("kind", BAD_REQUESTS)
def test_bad_requests_get_clear_4xx_json(client, kind):
    kwargs, status = BAD_REQUESTS[kind]
    answer = client.post("/predict", **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json")
    assert answer.json()["detail"]
    assert client.get("/health").status_code == 200  # still answering


def test_streamed_body_over_the_limit(client):
    def chunks():  # a well-formed multipart upload of 2.5 MB, without a Content-Length header
        yield b'--b\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n' \
              b"Content-Type: image/png\r\n\r\n"
        for _ in range(40):
            yield b"x" * 65536
        yield b"\r\n--b--\r\n"

    answer = client.post("/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=b"})
    assert answer.status_code == 413 and "limit" in answer.json()["detail"]
    assert client.get("/health").status_code == 200


def test_an_unexpected_decoder_error_is_a_422(client, monkeypatch):
    import struct

    import imgclf.serve.app

    def crafted(*args):
        raise struct.error("unpack requires a buffer of 4 bytes")  # what a Pillow plugin may raise

    monkeypatch.setattr(imgclf.serve.app, "decode_image", crafted)
    answer = client.post("/predict", files={"files": ("odd.tga", image_bytes(), "image/x-tga")})
    assert answer.status_code == 422 and "cannot decode (error)" in answer.json()["detail"]


def test_works_without_the_lifespan(trained_run):
    """Mounted in another app, or in a client that skips startup: the batcher starts on first use."""
    app = create_app(open_model(trained_run / "best_model.keras"))
    answer = TestClient(app).post("/predict", files={"files": ("r.png", image_bytes(), "image/png")})
    assert answer.status_code == 200 and answer.json()["predictions"][0]["top"][0]["label"] == "red"


def test_health_counts_model_calls(client):
    before = client.get("/health").json()
    client.post("/predict", files=[("files", (f"{i}.png", image_bytes(), "image/png")) for i in range(3)])
    after = client.get("/health").json()
    assert after["model_calls"] == before["model_calls"] + 1 and after["images"] == before["images"] + 3


def test_head_answers_like_get_without_a_body(client):
    for path in ("/", "/health", "/metadata"):
        head, get = client.head(path), client.get(path)
        assert head.status_code == 200 and head.content == b"", path
        assert head.headers["content-type"] == get.headers["content-type"]
    assert client.head("/predict").status_code == 405


def test_wrong_methods_and_paths(client):
    assert client.get("/predict").status_code == 405
    assert client.post("/health").status_code == 405
    assert client.get("/nowhere").status_code == 404
    broken = client.post("/predict", content=b"--xyz\r\nnot multipart", headers={
        "content-type": "multipart/form-data; boundary=xyz"})
    assert 400 <= broken.status_code < 500


def test_requests_that_arrive_together_share_a_model_call():
    calls = []

    def model(batch):
        calls.append(len(batch))
        return np.tile(np.linspace(0, 1, 3), (len(batch), 1))

    async def scenario():
        batcher = Batcher(model)
        batcher.start()
        results = await asyncio.gather(*[batcher.predict(np.zeros((1, 2, 2, 3))) for _ in range(10)])
        await batcher.stop()
        return results

    results = asyncio.run(scenario())
    assert len(results) == 10 and all(r.shape == (1, 3) for r in results)
    assert sum(calls) == 10 and len(calls) < 10  # stacked while the first call ran


def test_a_failing_model_answers_every_waiting_request():
    def model(batch):
        raise RuntimeError("boom")

    async def scenario():
        batcher = Batcher(model)
        batcher.start()
        outcome = await asyncio.gather(*[batcher.predict(np.zeros((1, 2, 2, 3))) for _ in range(3)],
                                       return_exceptions=True)
        await batcher.stop()
        return outcome

    assert all(isinstance(result, RuntimeError) for result in asyncio.run(scenario()))


@pytest.mark.parametrize("fmt", ["onnx", "litert"])
def test_serves_exports(export_runs, fmt):
    from imgclf.export.writers import default_path, export_model

    model_path = export_runs["fast-tiny"] / "best_model.keras"
    artifact = default_path(model_path, fmt)
    if not artifact.exists():
        export_model(model_path, fmt, verbose=False)
    with TestClient(create_app(artifact)) as client:
        info = client.get("/metadata").json()
        assert info["format"] == fmt and info["explain"] is False
        assert info["temperature"] == pytest.approx(open_model(model_path).temperature)  # carried by the export
        answer = client.post("/predict", files={"files": ("b.png", image_bytes((40, 40, 200)), "image/png")})
        assert answer.status_code == 200 and answer.json()["predictions"][0]["top"][0]["label"] == "blue"
        # Grad-CAM needs the .keras model's gradients: an export says so, after the usual checks
        answer = client.post("/explain", files={"file": ("b.png", image_bytes((40, 40, 200)), "image/png")})
        assert answer.status_code == 501 and "needs the gradients of the .keras model" in answer.json()["detail"]
        assert client.post("/explain", files={"file": ("e.png", b"", "image/png")}).status_code == 400


def test_explain_answers_a_png_of_the_heatmap(client):
    answer = client.post("/explain", files={"file": ("g.png", image_bytes((40, 190, 40), size=(40, 30)), "image/png")})
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    assert answer.headers["x-predicted-class"] == answer.headers["x-explained-class"] == "green"
    assert 0.5 < float(answer.headers["x-confidence"]) <= 1
    with Image.open(io.BytesIO(answer.content)) as picture:
        assert picture.size == (224, 224)  # the model's 16x16 input, enlarged 14x
    other = client.post("/explain", files={"file": ("g.png", image_bytes((40, 190, 40)), "image/png")},
                        data={"class_name": "red"})
    assert other.status_code == 200 and other.headers["x-explained-class"] == "red"
    assert other.content != answer.content
    assert client.get("/metadata").json()["explain"] is True


# /predict's bad requests that apply to one image, sent to /explain as its field `file`
EXPLAIN_BAD_REQUESTS = {kind: ({**kwargs, "files": {"file": kwargs["files"]["files"]}} if "files" in kwargs else kwargs,
                               status)
                        for kind, (kwargs, status) in BAD_REQUESTS.items()
                        if isinstance(kwargs.get("files", {}), dict) and "top_k" not in kwargs.get("data", {})}


@pytest.mark.parametrize("kind", [*EXPLAIN_BAD_REQUESTS, "unknown class"])
def test_explain_gets_the_same_4xx_as_predict(client, kind):
    kwargs, status = EXPLAIN_BAD_REQUESTS.get(kind) or (
        dict(files={"file": ("r.png", image_bytes(), "image/png")}, data={"class_name": "purple"}), 422)
    answer = client.post("/explain", **kwargs)
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"].startswith("application/json") and answer.json()["detail"]
    assert client.get("/health").status_code == 200
