"""The learned gates as a heatmap (sites x zoo modules): which knowledge each layer takes."""

from __future__ import annotations

import io
import os

from vimw._extras import require
from vimw.aggregation.aggregate import ZooAggregate
from vimw.io import atomic_write_bytes


def plot_gates(aggregate: ZooAggregate, path: str | os.PathLike, title: str = "") -> None:
    """Write a PNG heatmap of the gate weights (rows: sites, columns: modules)."""
    matplotlib = require("matplotlib", "plot", "Plotting the gates")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    gates = aggregate.gates().detach().cpu().numpy()
    height = max(3.0, 0.28 * len(aggregate.site_names) + 1.5)
    fig, ax = plt.subplots(figsize=(1.3 * len(aggregate.names) + 3.0, height))
    image = ax.imshow(gates, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(aggregate.names)), aggregate.names, rotation=30, ha="right")
    ax.set_yticks(range(len(aggregate.site_names)), aggregate.site_names)
    for row in range(gates.shape[0]):
        for col in range(gates.shape[1]):
            value = gates[row, col]
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="black" if value > 0.6 else "white")
    ax.set_xlabel("zoo module")
    ax.set_ylabel("site (input -> output)")
    ax.set_title(title or f"gates ({aggregate.mode})")
    fig.colorbar(image, ax=ax, label="gate weight")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
