"""Small plotting helpers shared by the chapters.

Taught in: Chapter 1 (layer x head maps); reused wherever a 2-D array needs a picture.
"""

from __future__ import annotations

import numpy as np


def heatmap(array, xlabel: str = "head", ylabel: str = "layer", title: str = "", ax=None, *,
            center: float | None = None, cmap: str | None = None, annot: bool = False, fmt: str = ".2f",
            cbar_label: str | None = None, mark: list[tuple[int, int]] | None = None, cbar: bool = True):
    """Seaborn heatmap of a 2-D array (rows on y, e.g. layers; columns on x, e.g. heads). Returns the axes.

    ``center`` (e.g. 0 for signed effects, 0.5 for accuracies) switches to a diverging colormap;
    ``mark`` outlines cells ``(row, col)``, e.g. the selected heads; ``cbar=False`` draws no colour
    bar (several panels side by side in the book's column)."""
    import matplotlib.pyplot as plt
    import seaborn as sns

    a = np.asarray(array, dtype=float)
    if a.ndim != 2:
        raise ValueError(f"heatmap needs a 2-D array, got shape {a.shape}")
    if ax is None:
        from editlens.display import COLUMN_INCHES

        _, ax = plt.subplots(figsize=(min(COLUMN_INCHES, 1.2 + 0.55 * a.shape[1]), min(12, 1.0 + 0.28 * a.shape[0])))
    sns.heatmap(a, ax=ax, center=center, cmap=cmap or ("RdBu_r" if center is not None else "viridis"),
                annot=annot, fmt=fmt, cbar=cbar, cbar_kws={"label": cbar_label} if cbar_label and cbar else None)
    for r, c in mark or []:
        ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="black", lw=2))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return ax
