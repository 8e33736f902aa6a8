"""Render a ``ConfusionMatrix`` as CSV text and as a PNG heat map (matplotlib, Agg, no pyplot)."""

from __future__ import annotations

import csv
import io

from eval.viggo_metrics import ConfusionMatrix


def confusion_csv(cm: ConfusionMatrix) -> str:
    """CSV with header ``reference\\predicted,<columns...>`` and one row of counts per reference."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["reference\\predicted", *cm.columns])
    for name, row in zip(cm.rows, cm.counts):
        writer.writerow([name, *row])
    return buf.getvalue()


def confusion_png(cm: ConfusionMatrix, title: str = "ViGGO function confusion matrix") -> bytes:
    """PNG bytes: counts as a heat map, rotated column labels, the count written in every cell."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(cm.rows), len(cm.columns)
    fig = Figure(figsize=(1.0 + 0.8 * n_cols, 1.5 + 0.6 * n_rows), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    data = [list(r) for r in cm.counts]
    peak = max((max(r) for r in data if r), default=0)
    image = ax.imshow(data, cmap="Blues", vmin=0, vmax=max(peak, 1), aspect="auto")
    fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02, label="count")
    ax.set_xticks(range(n_cols))
    ax.set_xticklabels(cm.columns, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n_rows))
    ax.set_yticklabels(cm.rows)
    ax.set_xlabel("predicted function")
    ax.set_ylabel("reference function")
    total = sum(sum(r) for r in data)
    ax.set_title(f"{title} (n={total})")
    for i, row in enumerate(data):
        for j, count in enumerate(row):
            color = "white" if peak and count > peak / 2 else "black"
            ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
