"""How the chapters show results: one figure style sized for the book's column, tables as tables.

Taught in: every chapter (set up in its first code cell with :func:`book_style`).

The rendered book's text column is about 690 pixels wide. A figure drawn :data:`COLUMN_INCHES` wide at
:data:`DPI` dots per inch fills it at its natural size, so its text (seaborn's ``notebook`` context,
scaled by 1.1: 12-13 points at 100 dpi, about 16 pixels) reads at the size of the body text. Wider
figures would be scaled down, and their text with them: lay panels out in rows instead.

Tables: :func:`show_table` renders a DataFrame as an HTML table with a stated number of digits, no
NaN and, unless it carries meaning, no index. A *checked* cell (``# NBVAL_CHECK_OUTPUT``) prints the
claims it checks as text instead: a styled table's text form is only its object name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMN_INCHES = 6.8
"""Width of a figure that fills the book's text column at its natural size (at :data:`DPI`)."""
DPI = 100
LINE_WIDTH = 76
"""Longest printed line that the rendered page shows without cutting it (monospace, the column's width)."""


def book_style() -> None:
    """The chapters' plotting style: seaborn's white grid, text at body size, figures :data:`COLUMN_INCHES`
    wide at :data:`DPI`, constrained layout (labels never cut), legends without frames. Seaborn's grids
    (``catplot``, ``relplot``) lay themselves out with tight layout instead: the warning that they switched
    is expected and silenced, so it does not print in the chapters."""
    import warnings

    import matplotlib as mpl
    import seaborn as sns

    warnings.filterwarnings("ignore", message="The figure layout has changed to tight", category=UserWarning)

    sns.set_theme(style="whitegrid", context="notebook", font_scale=1.1)
    mpl.rcParams.update({
        "figure.dpi": DPI,
        "savefig.dpi": DPI,
        "figure.figsize": (COLUMN_INCHES, 4.0),
        "figure.constrained_layout.use": True,
        "legend.frameon": False,
    })


def column_figure(nrows: int = 1, ncols: int = 1, *, height: float = 4.0, **kwargs: Any):
    """``plt.subplots`` one column wide and ``height`` inches high (``sharex``, ``sharey``... pass through)."""
    import matplotlib.pyplot as plt

    return plt.subplots(nrows, ncols, figsize=(COLUMN_INCHES, height), **kwargs)


def show_table(frame: Any, digits: int | Mapping[str, int] = 2, *, index: bool = False, na: str = "–",
               caption: str | None = None) -> Any:
    """``frame`` as a styled HTML table: floats with ``digits`` decimals (an int, or per column; a value that
    rounds to zero shows as 0, never -0), missing values as ``na``, the index shown only when ``index`` (a
    meaningful index such as a method name is better made a column, or kept with ``index=True``; a named index is
    then shown as the first column, under its name, unless the columns have a name too). With digits per
    column, a float column not named shows whole numbers without decimals (e.g. counts that a missing value made
    float) and other values with 2."""
    import pandas as pd

    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
    if (index and frame.index.nlevels == 1 and frame.index.name is not None and frame.columns.nlevels == 1
            and frame.columns.name is None and frame.index.name not in frame.columns):
        # a named index as the first column: one header row (pandas puts the index's name on a second,
        # otherwise empty, row under the header)
        frame, index = frame.reset_index(), False
    if isinstance(digits, Mapping):  # float columns it does not name: whole numbers as such, others at 2
        digits = {col: (0 if _whole(frame[col]) else 2) for col in frame.columns
                  if pd.api.types.is_float_dtype(frame[col])} | dict(digits)
    frame = _without_negative_zeros(frame, digits)
    if isinstance(digits, Mapping):
        fmt = {col: f"{{:.{d}f}}" for col, d in digits.items() if col in frame.columns}
        styler = frame.style.format(na_rep=na, escape="html").format(fmt, na_rep=na, subset=list(fmt))
    else:
        styler = frame.style.format(precision=digits, na_rep=na, thousands=",", escape="html")
    # text in cells and labels is HTML-escaped, so that tokens such as <|endoftext|> show as written
    styler = styler.format_index(escape="html", axis=0).format_index(escape="html", axis=1)
    if not index:
        styler = styler.hide(axis="index")
    if caption:
        styler = styler.set_caption(caption)
    return styler


def _whole(column: Any) -> bool:
    """Whether every present value of a float column is a whole number."""
    import numpy as np

    values = column.dropna().to_numpy(dtype=float)
    return bool(np.all(np.isfinite(values)) and np.all(values == np.round(values)))


def _without_negative_zeros(frame: Any, digits: int | Mapping[str, int]) -> Any:
    """A copy of ``frame`` whose float columns are rounded to their ``digits``, -0.0 made 0.0 (so -0.001 shows
    as 0.00, not -0.00)."""
    import pandas as pd

    frame = frame.copy()
    for col in frame.columns:
        if not pd.api.types.is_float_dtype(frame[col]):
            continue
        d = digits.get(col) if isinstance(digits, Mapping) else digits
        if d is not None:
            frame[col] = frame[col].round(d) + 0.0  # -0.0 + 0.0 == +0.0
    return frame


def fits_the_column(text: str, width: int = LINE_WIDTH) -> list[str]:
    """The lines of ``text`` longer than ``width`` characters (empty: it fits)."""
    return [line for line in str(text).splitlines() if len(line) > width]


def number(value: float, digits: int, *, sign: bool = False) -> str:
    """``value`` with ``digits`` decimals (``sign``: always with + or -). A value that rounds to zero prints as
    0 (``+0.00`` with ``sign``), never ``-0.00``."""
    text = f"{value:+.{digits}f}" if sign else f"{value:.{digits}f}"
    if float(text) == 0.0:
        text = f"{0.0:+.{digits}f}" if sign else f"{0.0:.{digits}f}"
    return text


def interval_text(mean: float, low: float, high: float, digits: int = 3, *, sign: bool = True) -> str:
    """``"mean [low, high]"`` with ``digits`` decimals, never ``-0``. An end of an interval that excludes 0 but
    rounds to 0 at ``digits`` gets as many more digits as it takes to show its sign (``[-0.0004, +0.012]``, not
    ``[+0.000, +0.012]``), so an interval never *reads* as reaching 0 when it does not."""
    excludes = low > 0 or high < 0

    def end(v: float) -> str:
        text = number(v, digits, sign=sign)
        if excludes and float(text) == 0.0:
            for d in range(digits + 1, 13):
                text = number(v, d, sign=sign)
                if float(text) != 0.0:
                    break
            else:
                text = f"{v:+.0e}" if sign else f"{v:.0e}"
        return text

    return f"{number(mean, digits, sign=sign)} [{end(low)}, {end(high)}]"


def figure_problems(fig: Any, *, tolerance: float = 1.0) -> list[str]:
    """What a reader would trip on in a drawn figure, as sentences (empty: none found):

    - two texts whose boxes overlap by more than ``tolerance`` pixels in both directions (titles, the suptitle,
      axis labels, tick labels, legend entries and titles, annotations such as a heatmap's numbers, colour bars'
      labels): colliding facet titles, crowded tick labels;
    - a text that reaches outside the figure (cut off when saved);
    - a legend drawn inside an axes over that axes' data (a line's points, a scatter's markers, a bar);
    - a legend with a single entry (the title or axis label can say it).

    It draws the figure with its own renderer, so it sees the layout that ``savefig`` / the notebook shows."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = _figure_texts(fig)
    boxes = [(label, t.get_window_extent(renderer)) for label, t in texts]
    problems = []
    for i, (a, box_a) in enumerate(boxes):
        for b, box_b in boxes[i + 1:]:
            w = min(box_a.x1, box_b.x1) - max(box_a.x0, box_b.x0)
            h = min(box_a.y1, box_b.y1) - max(box_a.y0, box_b.y0)
            if w > tolerance and h > tolerance:
                problems.append(f"text {a} overlaps text {b}")
    fb = fig.bbox
    for label, box in boxes:
        if (box.x0 < fb.x0 - tolerance or box.y0 < fb.y0 - tolerance or box.x1 > fb.x1 + tolerance
                or box.y1 > fb.y1 + tolerance):
            problems.append(f"text {label} reaches outside the figure")
    legends = [(ax, ax.get_legend()) for ax in fig.axes] + [(None, leg) for leg in fig.legends]
    for ax, legend in legends:
        if legend is None or not legend.get_visible():
            continue
        entries = [t.get_text() for t in legend.get_texts() if t.get_text()]
        if len(entries) == 1:
            problems.append(f"a legend with one entry ({entries[0]!r})")
        if ax is not None and _covers_data(ax, legend.get_window_extent(renderer)):
            problems.append(f"the legend of axes {ax.get_title()!r} covers its data")
    return problems


def _figure_texts(fig: Any) -> list[tuple[str, Any]]:
    """(description, Text) for every visible, non-empty text of ``fig``."""
    found, seen = [], set()

    def add(label: str, t: Any) -> None:
        if t is not None and id(t) not in seen and t.get_visible() and t.get_text().strip():
            seen.add(id(t))  # the suptitle is also one of fig.texts
            found.append((f"{label} {t.get_text()!r}", t))

    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        add("figure title", getattr(fig, name, None))
    for t in fig.texts:
        add("figure text", t)
    for legend in fig.legends:
        if legend.get_visible():
            add("legend title", legend.get_title())
            for t in legend.get_texts():
                add("legend entry", t)
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        for t in (ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)):
            add("axes title", t)
        add("x label", ax.xaxis.label)
        add("y label", ax.yaxis.label)
        for axis, kind in ((ax.xaxis, "x tick"), (ax.yaxis, "y tick")):
            lo, hi = sorted(axis.get_view_interval())
            for tick in axis.get_major_ticks():
                if not (lo - 1e-9 * max(1.0, abs(hi - lo)) <= tick.get_loc() <= hi + 1e-9 * max(1.0, abs(hi - lo))):
                    continue  # matplotlib does not draw ticks outside the view
                add(kind, tick.label1)  # each only when drawn (add skips invisible texts)
                add(kind, tick.label2)
        for t in ax.texts:
            add("annotation", t)
        legend = ax.get_legend()
        if legend is not None and legend.get_visible():
            add("legend title", legend.get_title())
            for t in legend.get_texts():
                add("legend entry", t)
    return found


def _covers_data(ax: Any, box: Any) -> bool:
    """Whether the display-space ``box`` (a legend's) contains a point of ``ax``'s lines or scatters, or meets
    one of its bars."""
    import numpy as np
    from matplotlib.collections import PathCollection
    from matplotlib.patches import Rectangle

    ax_box = ax.get_window_extent()
    if not ax_box.overlaps(box):
        return False  # the legend is outside the axes
    points = []
    for line in ax.get_lines():
        if line.get_visible() and len(line.get_xydata()):
            points.append(line.get_transform().transform(np.asarray(line.get_xydata(), dtype=float)))
    for coll in ax.collections:
        if isinstance(coll, PathCollection) and coll.get_visible() and len(np.asarray(coll.get_offsets())):
            points.append(coll.get_offset_transform().transform(np.asarray(coll.get_offsets(), dtype=float)))
    for xy in points:
        xy = xy[np.isfinite(xy).all(axis=1)]
        inside = (xy[:, 0] >= box.x0) & (xy[:, 0] <= box.x1) & (xy[:, 1] >= box.y0) & (xy[:, 1] <= box.y1)
        if inside.any():
            return True
    for patch in ax.patches:
        if isinstance(patch, Rectangle) and patch.get_visible() and patch.get_height() != 0:
            if patch.get_window_extent().overlaps(box):
                return True
    return False
