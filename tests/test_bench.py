"""`imgclf bench` runs end to end on a tiny dataset (a functional check, not a timing)."""

import json

import pytest

from conftest import make_image_folder, run_cli

pytestmark = pytest.mark.slow


def test_bench_writes_report_and_plot(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=10)
    out = tmp_path / "bench"
    result = run_cli("bench", "--data-dir", data, "--image-size", "16", "--epochs", "2", "--fast-epochs", "2",
                     "--fast-model", "fast-small",
                     "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert set(report["contenders"]) == {"notebook", "reference", "fast"}
    assert "fast-small" in report["contenders"]["fast"]["name"]
    for result in report["contenders"].values():
        assert result["epochs"] == 2 and result["images_per_second"] > 0 and result["achieved_gflops"] > 0
        assert "epoch_speedup" in result
    assert report["peak_gflops"]["float32"] > 0
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
