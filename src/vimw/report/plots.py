"""The report's figures (matplotlib, the ``plot`` extra), written as PNG files."""

from __future__ import annotations

import io
import os
from collections import defaultdict

from vimw._extras import require
from vimw.io import atomic_write_bytes


def _pyplot():
    matplotlib = require("matplotlib", "plot", "The report's plots")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike) -> None:
    plt = _pyplot()
    fig.tight_layout()
    buffer = io.BytesIO()
    # "tight" grows the image to hold the legends placed outside the axes
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def legend_outside(ax, handles=None, **options) -> None:
    """The axes' legend (or one of ``handles``) to the right of the plot, where it can hide no data."""
    handles = handles if handles is not None else ax.get_legend_handles_labels()[0]
    if handles:
        ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, frameon=False,
                  **options)


def accuracy_vs_shots(summary: list[dict], task: str, path: str | os.PathLike) -> None:
    """Test accuracy (mean, +- std over seeds) against shots per class, one line per method."""
    plt = _pyplot()
    lines: dict[str, list[tuple[int, float, float]]] = defaultdict(list)
    for row in summary:
        if row.get("task") == task and row.get("shots") is not None and row.get("test_mean") is not None:
            lines[row["method"]].append((int(row["shots"]), float(row["test_mean"]), float(row.get("test_std") or 0.0)))
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    # Shots double (5, 10, 20): a log axis spaces them evenly; a small per-method shift
    # keeps the error bars of methods at the same shot count from hiding each other.
    ax.set_xscale("log", base=2)
    methods = sorted(lines)
    for position, method in enumerate(methods):
        points = sorted(lines[method])
        xs, ys, es = zip(*points)
        shift = 2 ** (0.025 * (position - (len(methods) - 1) / 2))
        ax.errorbar([x * shift for x in xs], ys, yerr=es, marker="o", capsize=3, label=method)
    shots = sorted({p[0] for points in lines.values() for p in points})
    if shots:
        ax.set_xticks(shots, [str(s) for s in shots])
        ax.minorticks_off()
    ax.set_xlabel("shots per class")
    ax.set_ylabel("test accuracy")
    ax.set_title(task)
    ax.grid(alpha=0.3)
    legend_outside(ax, fontsize=8)
    _save(fig, path)


def transfer_bars(summary: dict[str, dict], path: str | os.PathLike) -> None:
    """TransMiter: base / novel / HM accuracy per model, grouped bars with std error bars."""
    plt = _pyplot()
    names = list(summary)
    metrics = ("base", "novel", "hm")
    width = 0.8 / len(metrics)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(names) + 2), 4.2))
    for i, metric in enumerate(metrics):
        xs = [j + (i - 1) * width for j in range(len(names))]
        ys = [float(summary[n].get(metric) or 0.0) for n in names]
        es = [float(summary[n].get(f"{metric}_std") or 0.0) for n in names]
        ax.bar(xs, ys, width, yerr=es, capsize=2, label=metric.upper() if metric == "hm" else metric)
    ax.set_xticks(range(len(names)), [n.replace("_", "\n") for n in names], fontsize=8)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("TransMiter: base / novel / harmonic mean")
    ax.grid(axis="y", alpha=0.3)
    legend_outside(ax, fontsize=8)
    _save(fig, path)


def training_curves(runs: dict[str, list[dict]], path: str | os.PathLike, title: str = "") -> None:
    """Train loss and validation score against epoch, one line per run."""
    plt = _pyplot()
    from matplotlib.lines import Line2D

    fig, (loss_ax, val_ax) = plt.subplots(1, 2, figsize=(10.0, 3.8))
    handles = []
    for number, (name, records) in enumerate(runs.items()):
        epochs = [r.get("epoch", i + 1) for i, r in enumerate(records)]
        losses = [r.get("train_loss") for r in records]
        scores = [r.get("val_score") for r in records]
        colour = f"C{number % 10}"  # one colour per run in both panels, so one legend serves both
        if any(v is not None for v in losses):
            loss_ax.plot(epochs, losses, marker="o", label=name, color=colour)
        if any(v is not None for v in scores):
            val_ax.plot(epochs, scores, marker="o", label=name, color=colour)
        if any(v is not None for v in losses + scores):
            handles.append(Line2D([], [], color=colour, marker="o", label=name))
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("train loss")
    val_ax.set_xlabel("epoch")
    val_ax.set_ylabel("validation score")
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, val_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    legend_outside(val_ax, handles, fontsize=7)  # one legend for both panels
    if title:
        fig.suptitle(title)
    _save(fig, path)
