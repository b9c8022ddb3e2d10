"""`imgclf bench` runs end to end on a tiny dataset (a functional check, not a timing), through
the command's entry point in this process."""

import functools
import json

import pytest

from conftest import make_image_folder, run_main

pytestmark = pytest.mark.slow


def test_bench_writes_report_and_plot(tmp_path, monkeypatch):
    from imgclf.bench import train as bench_train

    # the real peak measurement, timed for 0.2 s instead of 2 (four of them: two precisions, two benches)
    monkeypatch.setattr(bench_train, "measure_peak_gflops", functools.partial(bench_train.measure_peak_gflops,
                                                                              seconds=0.2))
    data = make_image_folder(tmp_path / "data", per_class=10)
    out = tmp_path / "bench"
    result = run_main("bench", "--data-dir", data, "--image-size", "16", "--epochs", "2", "--fast-epochs", "2",
                      "--fast-model", "fast-small", "--target", "0.01", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "bench.json").read_text())
    assert set(report["contenders"]) == {"notebook", "reference", "fast"}
    assert "fast-small" in report["contenders"]["fast"]["name"]
    for result in report["contenders"].values():
        assert result["epochs"] == 2 and result["images_per_second"] > 0 and result["achieved_gflops"] > 0
        assert "epoch_speedup" in result
        passed = [t for t, a in zip(result["elapsed_seconds"], result["val_accuracy"]) if a >= 0.01]
        assert result["seconds_to_target"] == (passed[0] if passed else None)  # timed to --target, not (a)'s best
    assert report["target_val_accuracy"] == 0.01
    assert report["peak_gflops"]["float32"] > 0
    assert (out / "bench.png").read_bytes()[:4] == b"\x89PNG"
    # a second bench into the same folder: the earlier contender runs are moved aside, not refused or lost
    result = run_main("bench", "--data-dir", data, "--image-size", "16", "--only", "reference", "--out", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert [p.name.split(".old-")[0] for p in out.glob("reference_run.old-*")] == ["reference_run"]
    assert (out / "reference_run" / "best_model.keras").exists()


def test_bench_rejects_a_target_that_is_not_an_accuracy(tmp_path):
    data = make_image_folder(tmp_path / "data", per_class=2)
    result = run_main("bench", "--data-dir", data, "--target", "73", "--out", tmp_path / "bench")
    assert result.returncode == 1 and "between 0 and 1" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "bench").exists()
