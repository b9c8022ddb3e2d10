"""`imgclf compare RUN...`: several run folders side by side.

One table (recipe, the settings that differ most between runs, best epoch, validation
accuracy, F1, ECE, time) and one figure of their validation curves overlaid, written as
compare.csv, compare.png and compare.html (one self-contained file, like the report).
Everything is read from the run folders' files (config.json, metrics.json, history.csv); a run
still training or killed shows its history so far.
"""

from __future__ import annotations

import html
from pathlib import Path

from matplotlib.figure import Figure

from ..errors import ImgclfError
from ..run.atomic import atomic_path, write_csv, write_figure
from ..run.folder import CONFIG, HISTORY, METRICS, RunFolder
from .report import SCRIPT, STYLE, figure_tag, table

CSV, PNG, HTML = "compare.csv", "compare.png", "compare.html"
LEGEND_RUNS = 12  # more runs than this get no legend (it would not fit)
COLUMNS = ["run", "recipe", "epochs", "batch", "learning rate", "augment", "label smoothing", "ema", "weight decay",
           "best epoch", "val accuracy", "val f1", "ece", "seconds", "state"]


def run_row(run: RunFolder) -> dict:
    """One run's row of the table (None where the run has no such figure yet)."""
    config = run.read_json(CONFIG) or {}
    metrics = run.read_json(METRICS) or {}
    calibration = metrics.get("calibration") or {}
    budget = metrics.get("time_budget") or {}  # --time-budget: its plan may have moved, or stopped the run
    stopped = (metrics.get("early_stopping") or {}).get("stopped_after_epoch") or budget.get("stopped_after_epoch")
    state = "finished" if metrics else "unfinished"
    if stopped:
        state = f"stopped early after epoch {stopped}"
    return {
        "run": run.path.name, "recipe": config.get("model"), "epochs": budget.get("epochs_run", config.get("epochs")),
        "batch": config.get("batch_size"), "learning rate": config.get("learning_rate"),
        "augment": config.get("augment") or "recipe", "label smoothing": config.get("label_smoothing"),
        "ema": config.get("ema"), "weight decay": config.get("weight_decay"),
        "best epoch": metrics.get("best_epoch", run.best_epoch()), "val accuracy": metrics.get("accuracy"),
        "val f1": metrics.get("f1"), "ece": (calibration.get("after") or calibration).get("ece"),
        "seconds": metrics.get("train_seconds"), "state": state,
    }


def compare(runs: list[str | Path], out: str | Path | None = None, *, title: str = "imgclf runs compared") -> dict:
    """Compare run folders; write compare.csv/.png/.html to `out` (if given). Returns
    {"rows": [...], "files": [...]}."""
    if not runs:
        raise ImgclfError("compare needs at least one run folder")
    folders = [RunFolder.existing(path) for path in runs]  # each an imgclf run folder, or one line
    labels = _labels(folders)
    rows = [{**run_row(folder), "run": label} for folder, label in zip(folders, labels)]
    histories = {label: folder.read_history() for folder, label in zip(folders, labels)
                 if (folder.path / HISTORY).exists()}
    figure = curves_figure(histories)
    files = []
    if out is not None:
        out = Path(out)
        if out.exists() and not out.is_dir():
            raise ImgclfError(f"--out {out} is a file, not a folder")
        out.mkdir(parents=True, exist_ok=True)
        write_csv(out / CSV, COLUMNS, [["" if r[c] is None else r[c] for c in COLUMNS] for r in rows])
        write_figure(out / PNG, figure, 110)
        with atomic_path(out / HTML, suffix=".html") as tmp:
            tmp.write_text(render(rows, figure, title), encoding="utf-8")
        files = [str(out / name) for name in (CSV, PNG, HTML)]
    return {"rows": rows, "files": files}


def _labels(folders: list[RunFolder]) -> list[str]:
    """Run names for the table: folder names, with their parent's where two share a name."""
    names = [f.path.name for f in folders]
    return [f"{f.path.parent.name}/{f.path.name}" if names.count(f.path.name) > 1 else f.path.name for f in folders]


def curves_figure(histories: dict) -> Figure:
    """Validation loss and accuracy per epoch, one line per run."""
    figure = Figure(figsize=(11, 4))
    loss_ax, acc_ax = figure.subplots(1, 2)
    for i, (label, history) in enumerate(histories.items()):
        style = {"color": f"C{i % 10}", "ls": "-" if i < 10 else "--", "label": label, "lw": 1.4}
        if "val_loss" in history:
            loss_ax.plot(history["epoch"], history["val_loss"], **style)
        if "val_accuracy" in history:
            acc_ax.plot(history["epoch"], history["val_accuracy"], **style)
    for ax, name in ((loss_ax, "validation loss"), (acc_ax, "validation accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(name)
        ax.grid(alpha=0.3)
    if 0 < len(histories) <= LEGEND_RUNS:
        acc_ax.legend(fontsize=7, loc="lower right")
    elif histories:  # a study's dozens of trials: the table names them
        acc_ax.set_title(f"validation accuracy ({len(histories)} runs)")
    figure.tight_layout()
    return figure


def render(rows: list[dict], figure: Figure, title: str) -> str:
    """compare.html: the table (sortable) and the curves, inline."""
    cells = [[_cell(r[c], c) for c in COLUMNS] for r in rows]
    best = max((r for r in rows if r["val accuracy"] is not None), key=lambda r: r["val accuracy"], default=None)
    headline = (f"<p>Highest validation accuracy: <b>{html.escape(best['run'])}</b> "
                f"({best['val accuracy']:.4f}).</p>" if best else "<p>No run has finished yet.</p>")
    return (f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{headline}"
            f"<h2>Runs</h2>{table(COLUMNS, cells, sortable=True)}"
            f"<p>Click a column to sort. ECE: expected calibration error of the kept model's probabilities on the "
            f"validation split (after calibration, where the run calibrated).</p>"
            f"<h2>Validation curves</h2><div class=\"figs\">{figure_tag(figure, 'validation curves')}</div>"
            f"<script>{SCRIPT}</script></body></html>")


SHORT_NUMBERS = ("learning rate", "label smoothing", "ema", "weight decay", "seconds")


def _cell(value, column: str):
    if value is None:
        return ""
    return f"{value:.3g}" if column in SHORT_NUMBERS and isinstance(value, float) else value


def text_table(rows: list[dict]) -> str:
    """The table for a terminal: the columns that say the most."""
    columns = ["run", "recipe", "epochs", "learning rate", "augment", "best epoch", "val accuracy", "val f1", "ece",
               "seconds"]
    cells = [[str(_cell(round(r[c], 4) if isinstance(r[c], float) and c not in SHORT_NUMBERS else r[c], c))
              for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)
