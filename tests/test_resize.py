"""Images of another shape than the model's: a model trained at HxW with --resize pad resizes
every image the same way in prediction, evaluation, export and serving (its metadata says how)."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

from imgclf import TrainConfig, train
from imgclf.data.decode import decode_image
from imgclf.evaluation.evaluate import evaluate
from imgclf.export.writers import export_model
from imgclf.inference.predict import predict_files
from imgclf.inference.runtimes import open_model
from imgclf.serve.app import create_app

from conftest import make_image_folder


@pytest.mark.slow  # a training and an export
def test_a_padded_non_square_model_resizes_the_same_way_everywhere(tmp_path):
    # 20x40 images, trained at 16x24: squash, crop and pad give different pixels
    data = make_image_folder(tmp_path / "images", per_class=70, size=(20, 40))
    run = train(TrainConfig(data_dir=str(data), model="seed", epochs=1, image_size="16x24", resize="pad",
                            out=str(tmp_path / "run"), verbose=0))
    loaded = open_model(run / "best_model.keras")
    assert loaded.image_size == (16, 24) and loaded.resize == "pad"

    path = str(next((data / "red").glob("*.png")))
    padded = decode_image(path, (16, 24), resize="pad")
    assert padded[0].max() == 0 and not np.array_equal(padded, decode_image(path, (16, 24), resize="squash"))
    expected = loaded.predict(padded[None].astype(np.float32))[0]
    (prediction,), _ = predict_files(loaded, [path], top_k=3)
    np.testing.assert_allclose([p for _, p in prediction.top], sorted(expected, reverse=True), atol=1e-6)

    report = evaluate(loaded, TrainConfig(data_dir=str(data)))
    assert report["images"] == 210

    exported = export_model(run / "best_model.keras", "onnx", verbose=False)  # checked on the run's images
    assert exported.agreement == 1.0
    onnx = open_model(exported.path)
    assert onnx.image_size == (16, 24) and onnx.resize == "pad"

    with TestClient(create_app(onnx)) as client:
        assert client.get("/metadata").json()["resize"] == "pad"
        with open(path, "rb") as handle:
            answer = client.post("/predict", files={"files": ("x.png", handle.read(), "image/png")}).json()
        # the ONNX file's own answer on the padded pixels (float32; the .keras model may run in
        # bfloat16, ~1e-3 apart unless its softmax saturates)
        served = onnx.predict(padded[None].astype(np.float32))[0]
        assert abs(answer["predictions"][0]["top"][0]["probability"] - float(served.max())) < 1e-5
