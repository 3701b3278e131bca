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
    rounds to zero shows as 0, never -0), missing values as ``na``, the index shown only when ``index`` (a meaningful index such as a method name
    is better made a column, or kept with ``index=True``)."""
    import pandas as pd

    frame = frame.to_frame() if isinstance(frame, pd.Series) else frame
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
