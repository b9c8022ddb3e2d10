"""The HTML report: written by every training run, by `imgclf report` and `evaluate --out`;
self-contained (opens offline), renders in a real browser, small at 100 classes."""

import json

import numpy as np

from imgclf.evaluation.analysis import analyse
from imgclf.evaluation.metrics import confusion_matrix, summarize
from imgclf.evaluation.plots import history_figures
from imgclf.evaluation.report import evaluation_figures, render, write_history_plots, write_reports
from imgclf.run.folder import RunFolder

from conftest import headless_chromium, run_main


def test_report_opens_in_chromium_with_its_figures_and_tables(trained_run, tmp_path):
    from selenium.webdriver.common.by import By

    report = trained_run / "report.html"
    text = report.read_text(encoding="utf-8")
    assert "http://" not in text and "https://" not in text  # nothing to fetch: works offline
    driver = headless_chromium(tmp_path / "profile")
    try:
        driver.get(report.as_uri())
        for section in ("metrics", "curves", "confusion", "calibration", "coverage", "top-losses"):
            assert driver.find_elements(By.ID, section), section
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) >= 8  # 4 learning curves, confusion matrix, reliability, coverage, top losses
        # calibration: the figures without and with the temperature training fitted, and where
        calibration = driver.find_elements(By.CSS_SELECTOR, "table.calibration tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text.split(" (")[0] for r in calibration] == [
            "without the temperature", "calibrated"]
        assert "fitted on" in driver.find_element(By.XPATH, "//h2[text()='Calibration']/following::p").text
        thresholds = driver.find_elements(By.CSS_SELECTOR, "table.selective tbody tr")
        assert [r.find_element(By.TAG_NAME, "td").text for r in thresholds][:2] == ["0.5000", "0.6000"]
        assert all(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", image)
                   for image in images)
        rows = driver.find_elements(By.CSS_SELECTOR, "table.per-class tbody tr")
        assert sorted(r.find_element(By.TAG_NAME, "td").text for r in rows) == ["blue", "green", "red"]
        header = driver.find_elements(By.CSS_SELECTOR, "table.per-class th")[4]  # support
        header.click()
        first = [int(r.find_elements(By.TAG_NAME, "td")[4].text)
                 for r in driver.find_elements(By.CSS_SELECTOR, "table.per-class tbody tr")]
        header.click()
        second = [int(r.find_elements(By.TAG_NAME, "td")[4].text)
                  for r in driver.find_elements(By.CSS_SELECTOR, "table.per-class tbody tr")]
        assert first == sorted(first) and second == sorted(second, reverse=True)
        assert "Configuration" in driver.page_source and "Environment" in driver.page_source
        assert driver.get_log("browser") == []  # no console message of any level
    finally:
        driver.quit()


def test_report_command_and_evaluate_out_write_reports(trained_run, tmp_path):
    (trained_run / "report.html").rename(tmp_path / "old.html")
    result = run_main("report", trained_run)
    assert result.returncode == 0, result.stderr[-2000:]
    assert (trained_run / "report.html").stat().st_size > 10_000
    data = json.loads((trained_run / "data.json").read_text())
    out = tmp_path / "eval"
    result = run_main("evaluate", trained_run / "best_model.keras", "--data-dir", data["source"].split(" ", 1)[1],
                      "--out", out)
    assert result.returncode == 0, result.stderr[-2000:]
    for name in ("report.html", "misclassified.csv", "reliability.png", "coverage.png", "metrics.json"):
        assert (out / name).exists(), name
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"top2_accuracy", "weighted", "calibration", "most_confused", "selective", "uncalibrated"} <= set(metrics)
    assert metrics["temperature"] != 1.0 and len(metrics["selective"]["thresholds"]) == 7
    assert run_main("report", tmp_path / "nothing").returncode != 0


def test_report_of_100_classes_stays_small():
    rng = np.random.default_rng(0)
    classes = [f"class-{i:03d}" for i in range(100)]
    labels = rng.integers(0, 100, 5000)
    logits = rng.normal(0, 1, (5000, 100))
    logits[np.arange(5000), labels] += 2.5
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    matrix = confusion_matrix(labels, probs.argmax(axis=1), 100)
    report = {**summarize(matrix, classes), "loss": 1.0, "confusion_matrix": matrix.tolist(), "class_names": classes}
    report["analysis"] = analyse(labels, probs, matrix, report["per_class"], classes, [str(i) for i in range(5000)])
    pixels = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    epochs = np.arange(1, 51)
    history = {"epoch": epochs, "loss": 1 / epochs, "val_loss": 1.2 / epochs, "accuracy": 1 - 1 / epochs,
               "val_accuracy": 1 - 1.2 / epochs, "val_f1": 1 - 1.3 / epochs, "val_precision": 1 - 1.1 / epochs,
               "val_recall": 1 - 1.25 / epochs}
    html = render(title="100 classes", evaluation=report, figures=evaluation_figures(report, pixels),
                  history_figures=history_figures(history), best_epoch=50)
    assert len(html.encode()) < 3_000_000
    assert html.count("<tr>") >= 100 + 50  # every class's row, 50 misclassified rows


def test_reports_and_plots(tmp_path):
    run = RunFolder(tmp_path)
    report = {"class_names": ["a", "b"], "confusion_matrix": [[3, 1], [0, 4]],
              "per_class": [{"class": "a", "precision": 1.0, "recall": 0.75, "f1": 0.857, "support": 4},
                            {"class": "b", "precision": 0.8, "recall": 1.0, "f1": 0.889, "support": 4}]}
    write_reports(run, report, prefix="test_")
    assert (tmp_path / "test_confusion_matrix.csv").read_text().splitlines()[1] == "a,3,1"
    assert (tmp_path / "test_per_class.csv").read_text().splitlines()[2].startswith("b,0.800000,1.000000")
    assert (tmp_path / "test_confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
    run.write_history([{"epoch": e, "loss": 1.0, "accuracy": 0.5, "val_loss": 2.0 - e / 4, "val_accuracy": 0.5,
                        "val_f1": 0.5, "val_precision": 0.5, "val_recall": 0.5} for e in (1, 2, 3)])
    written = write_history_plots(run)
    assert sorted(p.name for p in written) == ["accuracy.png", "f1.png", "loss.png", "precision_recall.png"]


def test_the_highest_loss_grid_draws_grad_cam_over_each_image(trained_run):
    from imgclf.evaluation.analysis import top_losses_figure
    from imgclf.evaluation.evaluate import top_loss_heatmaps
    from imgclf.inference.modelio import LoadedModel, load_model

    loaded = load_model(trained_run / "best_model.keras")
    pixels = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3)).astype(np.uint8)
    rows = [{"true": "red", "predicted": name, "confidence": 0.5, "loss": 1.0} for name in ("blue", "green", "red")]
    heatmaps = top_loss_heatmaps(loaded, pixels, {"analysis": {"misclassified": rows}})
    assert heatmaps.shape == (3, 16, 16)
    figure = top_losses_figure(pixels, rows, heatmaps=heatmaps)
    assert [len(ax.images) for ax in figure.axes[:3]] == [2, 2, 2]  # the image, and its heatmap over it
    assert "Grad-CAM" in figure.texts[0].get_text()
    export = LoadedModel(None, loaded.class_names, (16, 16), {}, format="onnx")
    assert top_loss_heatmaps(export, pixels, {"analysis": {"misclassified": rows}}) is None  # no gradients
