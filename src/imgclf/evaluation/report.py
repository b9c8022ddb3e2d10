"""One self-contained HTML file that explains a model: learning curves, metrics, the per-class
table (sortable), the confusion matrix, the most-confused pairs, calibration, the
highest-loss images, and the run's configuration, environment and data.

Everything is inline (figures as base64 PNG, a few lines of script to sort tables), so the
file opens offline, can be mailed, and makes no request. Written at the end of every
training run, by `imgclf report RUN_DIR` and by `imgclf evaluate --out`.
"""

from __future__ import annotations

import base64
import html
import io
import json

from matplotlib.figure import Figure

from ..run.folder import (
    CONFIG,
    CONFUSION_CSV,
    CONFUSION_PNG,
    COVERAGE_PNG,
    DATA,
    ENVIRONMENT,
    HISTORY_PNGS,
    MISCLASSIFIED,
    MISCLASSIFIED_COLUMNS,
    PER_CLASS,
    PER_CLASS_COLUMNS,
    RELIABILITY_PNG,
    REPORT,
    TOP_LOSSES_PNG,
    RunFolder,
)

FIGURE_DPI = 80  # inline figures: readable, small
MISCLASSIFIED_ROWS = 50  # rows of the misclassified table (all of them are in misclassified.csv)

STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;padding:0 1em;color:#222}
h1{font-size:1.5em}h2{font-size:1.2em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5em 0;font-size:.9em}td,th{border:1px solid #ccc;padding:3px 8px}
th{background:#f3f3f3}table.sortable th{cursor:pointer}table.sortable th:hover{background:#e6e6e6}
td.n{text-align:right;font-variant-numeric:tabular-nums}.figs img{max-width:100%;margin:4px}
.headline span{display:inline-block;margin:0 1.5em .5em 0}.headline b{font-size:1.3em}
pre{background:#f7f7f7;padding:.6em;overflow:auto;font-size:.85em}
"""
# Click a header to sort by that column (numbers as numbers); click again to reverse.
SCRIPT = """
document.querySelectorAll('table.sortable').forEach(function (table) {
  table.querySelectorAll('th').forEach(function (th, col) {
    th.addEventListener('click', function () {
      var body = table.tBodies[0], rows = Array.from(body.rows);
      var up = th.dataset.order !== 'asc';
      th.dataset.order = up ? 'asc' : 'desc';
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v || a.cells[col].textContent;
        var y = b.cells[col].dataset.v || b.cells[col].textContent;
        var nx = parseFloat(x), ny = parseFloat(y);
        var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
        return up ? c : -c;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def evaluation_figures(report: dict, top_pixels=None, top_heatmaps=None) -> dict[str, Figure]:
    """The figures of an evaluation report: confusion matrix, and with its analysis the
    reliability diagram, the coverage-accuracy curve and the highest-loss images
    (`top_pixels`: uint8, in the order of the misclassified rows; `top_heatmaps`: their
    Grad-CAM heatmaps, drawn over them)."""
    import numpy as np

    from .analysis import coverage_figure, reliability_figure, top_losses_figure
    from .plots import confusion_figure

    figures = {"confusion": confusion_figure(np.array(report["confusion_matrix"]), report["class_names"])}
    analysis = report.get("analysis")
    if analysis:
        figures["reliability"] = reliability_figure(analysis["calibration"])
        if analysis.get("selective", {}).get("curve"):
            figures["coverage"] = coverage_figure(analysis["selective"])
        if top_pixels is not None:
            figures["top_losses"] = top_losses_figure(top_pixels, analysis["misclassified"], heatmaps=top_heatmaps)
    return figures


FIGURE_FILES = {"confusion": CONFUSION_PNG, "reliability": RELIABILITY_PNG, "coverage": COVERAGE_PNG,
                "top_losses": TOP_LOSSES_PNG}


def write_reports(run: RunFolder, report: dict, prefix: str = "", top_pixels=None, top_heatmaps=None) -> None:
    """per_class.csv, confusion_matrix.csv and its figure, for one evaluated split; with
    its analysis, misclassified.csv, the reliability diagram, the coverage curve and the
    highest-loss images (`top_pixels`, with `top_heatmaps` over them). `prefix`: "test_" for
    the test split's."""
    import numpy as np

    names = report["class_names"]
    run.write_table(prefix + PER_CLASS, PER_CLASS_COLUMNS,
                    [[c["class"], f"{c['precision']:.6f}", f"{c['recall']:.6f}", f"{c['f1']:.6f}", c["support"]]
                     for c in report["per_class"]])
    matrix = np.array(report["confusion_matrix"])
    run.write_table(prefix + CONFUSION_CSV, ["true \\ predicted", *names],
                    [[name, *row] for name, row in zip(names, matrix.tolist())])
    for key, figure in evaluation_figures(report, top_pixels, top_heatmaps).items():
        run.write_figure(prefix + FIGURE_FILES[key], figure)
    if "analysis" in report:
        run.write_table(prefix + MISCLASSIFIED, MISCLASSIFIED_COLUMNS,
                        [[row[c] if not isinstance(row[c], float) else f"{row[c]:.6f}" for c in MISCLASSIFIED_COLUMNS]
                         for row in report["analysis"]["misclassified"]])


def write_history_plots(run: RunFolder) -> list:
    """loss.png, accuracy.png, f1.png and precision_recall.png from the run's history.csv."""
    from .plots import history_figures

    return [run.write_figure(name, figure) for name, figure in history_figures(run.read_history()).items()]


def write_html_report(run: RunFolder, report: dict, title: str, prefix: str = "", data: dict | None = None):
    """report.html: the evaluation `report` with the figures `write_reports(prefix)` and
    `write_history_plots` wrote (embedded as they are, not drawn again), and the run's
    configuration, environment and data summary when the folder has them."""
    curves = {name: run.read_bytes(name) for name in HISTORY_PNGS if run.read_bytes(name)}
    figures = {key: run.read_bytes(prefix + name) for key, name in FIGURE_FILES.items()}
    html = render(title=title, evaluation=report, figures={k: v for k, v in figures.items() if v},
                  history_figures=curves or None, best_epoch=run.best_epoch(), config=run.read_json(CONFIG),
                  environment=run.read_json(ENVIRONMENT), data=data if data is not None else run.read_json(DATA))
    return run.write_text(REPORT, html)


def figure_tag(figure: Figure | bytes, alt: str) -> str:
    """An <img> with the figure inline (a Figure, or the bytes of a PNG file already written)."""
    if isinstance(figure, Figure):
        buffer = io.BytesIO()
        figure.savefig(buffer, format="png", dpi=FIGURE_DPI)
        figure = buffer.getvalue()
    data = base64.b64encode(figure).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def table(headers: list[str], rows: list[list], *, sortable: bool = False, cls: str = "") -> str:
    def cell(value):
        if isinstance(value, float):
            return f'<td class="n" data-v="{value!r}">{value:.4f}</td>'
        if isinstance(value, int) and not isinstance(value, bool):
            return f'<td class="n" data-v="{value}">{value}</td>'
        return f"<td>{html.escape(str(value))}</td>"

    classes = " ".join(c for c in ("sortable" if sortable else "", cls) if c)
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(cell(v) for v in row) + "</tr>" for row in rows)
    return f'<table class="{classes}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _calibration_section(evaluation: dict, analysis: dict, figures: dict) -> str:
    calib = analysis["calibration"]
    text = (f"<h2>Calibration</h2><p>Expected calibration error {calib['ece']:.4f}: mean confidence "
            f"{calib['mean_confidence']:.4f} against accuracy {calib['accuracy']:.4f}.")
    before = analysis.get("uncalibrated")
    temperature = evaluation.get("temperature", 1.0)
    if before:
        fitted = evaluation.get("calibration") or {}
        where = f" fitted on {fitted['images']:,} images ({html.escape(fitted['source'])})" if "images" in fitted \
            else ""
        text += (f" The model divides its log-probabilities by a temperature of {temperature:.4f}{where}; "
                 "the ranking of the classes, and so the accuracy, is the same without it.</p>")
        text += table(["probabilities", "ECE", "NLL (loss)", "mean confidence"], [
            ["without the temperature", before["ece"], before["nll"], before["mean_confidence"]],
            [f"calibrated (T = {temperature:.4f})", calib["ece"], evaluation["loss"], calib["mean_confidence"]]],
            cls="calibration")
    else:
        skipped = (evaluation.get("calibration") or {}).get("skipped")
        text += f" {html.escape(skipped)}.</p>" if skipped else " The model is not calibrated (no temperature).</p>"
    return text + ('<div class="figs" id="calibration">' + figure_tag(figures["reliability"], "reliability diagram")
                   + "</div>" if "reliability" in figures else "")


def _selective_section(summary: dict, figures: dict) -> str:
    rows = [[row["threshold"], row["coverage"], row["answered"], "" if row["accuracy"] is None else row["accuracy"]]
            for row in summary["thresholds"]]
    for key in ("at_min_confidence", "for_target"):
        row = summary.get(key)
        if row and row.get("threshold") is not None:
            rows.append([row["threshold"], row["coverage"], row.get("answered", ""), row["accuracy"]])
    text = ("<h2>Selective prediction</h2><p>Images whose top probability is below a threshold are answered "
            "&ldquo;uncertain&rdquo; (<code>--min-confidence</code>): the share still answered (coverage) and the "
            "accuracy on them.</p>")
    target = summary.get("for_target")
    if target:
        text += (f"<p>Target accuracy {target['target_accuracy']:.4f}: " + (
            f"threshold {target['threshold']:.4f} reaches {target['accuracy']:.4f} on {target['coverage']:.1%} of "
            "the images.</p>" if target["threshold"] is not None else "no threshold reaches it on these images.</p>"))
    text += table(["threshold", "coverage", "answered", "accuracy"], rows, cls="selective")
    if "coverage" in figures:
        text += '<div class="figs" id="coverage">' + figure_tag(figures["coverage"], "coverage-accuracy curve") \
            + "</div>"
    return text


def render(*, title: str, evaluation: dict, figures: dict[str, Figure | bytes],
           history_figures: dict[str, Figure | bytes] | None = None, best_epoch: int | None = None,
           config: dict | None = None, environment: dict | None = None, data: dict | None = None) -> str:
    """The report's HTML. `evaluation`: evaluate_images' report with its "analysis";
    `figures`: confusion, reliability and top_losses figures (Figures, or PNG bytes)."""
    analysis = evaluation.get("analysis", {})
    parts = [f"<h1>{html.escape(title)}</h1>"]
    headline = [("accuracy", evaluation["accuracy"]), ("macro F1", evaluation["f1"]),
                ("macro precision", evaluation["precision"]), ("macro recall", evaluation["recall"]),
                ("loss", evaluation["loss"])]
    headline += [(key.replace("_", " "), value) for key, value in analysis.items() if key.startswith("top")]
    if "calibration" in analysis:
        headline.append(("ECE", analysis["calibration"]["ece"]))
    parts.append('<div class="headline" id="metrics">' + "".join(
        f"<span>{html.escape(name)}<br><b>{value:.4f}</b></span>" for name, value in headline)
        + f"<span>images<br><b>{evaluation['images']}</b></span></div>")
    if evaluation.get("source"):
        parts.append(f"<p>Evaluated on {html.escape(str(evaluation['source']))}.</p>")

    if history_figures:
        note = f" The best epoch (lowest validation loss, the kept model) is {best_epoch}." if best_epoch else ""
        parts.append(f"<h2>Learning curves</h2><p>Per epoch, training and validation.{note}</p>"
                     '<div class="figs" id="curves">'
                     + "".join(figure_tag(f, name) for name, f in history_figures.items()) + "</div>")

    parts.append("<h2>Per class</h2><p>Click a column to sort.</p>")
    parts.append(table(["class", "precision", "recall", "F1", "support"],
                       [[c["class"], c["precision"], c["recall"], c["f1"], c["support"]]
                        for c in evaluation["per_class"]], sortable=True, cls="per-class"))
    if "weighted" in analysis:
        w = analysis["weighted"]
        parts.append(table(["average", "precision", "recall", "F1"],
                           [["macro", evaluation["precision"], evaluation["recall"], evaluation["f1"]],
                            ["weighted by support", w["precision"], w["recall"], w["f1"]]]))

    parts.append('<h2>Confusion matrix</h2><div class="figs" id="confusion">'
                 + figure_tag(figures["confusion"], "confusion matrix") + "</div>")
    if analysis.get("most_confused"):
        parts.append("<h3>Most confused</h3>" + table(
            ["true class", "predicted as", "images", "share of the true class"],
            [[p["true"], p["predicted"], p["images"], p["share_of_true"]] for p in analysis["most_confused"]],
            sortable=True, cls="confused"))

    if "calibration" in analysis:
        parts.append(_calibration_section(evaluation, analysis, figures))
    if analysis.get("selective", {}).get("thresholds"):
        parts.append(_selective_section(analysis["selective"], figures))

    if "misclassified" in analysis:
        wrong = analysis["misclassified"]
        parts.append(f"<h2>Misclassified</h2><p>{len(wrong)} of {evaluation['images']} images; the highest "
                     "losses first.</p>")
        if "top_losses" in figures:
            parts.append('<div class="figs" id="top-losses">' + figure_tag(figures["top_losses"], "top losses")
                         + "</div>")
        parts.append(table(["image", "true", "predicted", "confidence", "loss"],
                           [[r["item"], r["true"], r["predicted"], r["confidence"], r["loss"]]
                            for r in wrong[:MISCLASSIFIED_ROWS]], sortable=True, cls="misclassified"))

    if data:
        skipped = data.get("skipped") or []
        parts.append("<h2>Data</h2>" + table(["", ""], [[k, v] for k, v in data.items()
                                                       if k not in ("skipped", "class_names")]))
        parts.append(f"<p>Classes: {html.escape(', '.join(data.get('class_names', [])))}</p>")
        if skipped:
            parts.append(f"<h3>Skipped files ({len(skipped)})</h3>"
                         + table(["path", "reason"], [[s["path"], s["reason"]] for s in skipped]))
    if config:
        parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(config, indent=2)) + "</pre>")
    if environment:
        parts.append("<h2>Environment</h2><pre>" + html.escape(json.dumps(environment, indent=2)) + "</pre>")

    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
            + "\n".join(parts) + f"<script>{SCRIPT}</script></body></html>")
