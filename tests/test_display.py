"""editlens.display: what the rendered page shows (tables, numbers, figures)."""

import re

import pandas as pd
import pytest

from editlens.display import show_table


def test_show_table_escapes_text_and_labels():
    frame = pd.DataFrame({"<|endoftext|>": [0.5], "token": ["<b>"]}, index=["<|im_start|>"])
    html = show_table(frame, digits=2, index=True).to_html()
    assert "&lt;|endoftext|&gt;" in html and "&lt;b&gt;" in html and "&lt;|im_start|&gt;" in html
    assert "<b>" not in html and "0.50" in html


def test_show_table_digits_per_column_escape_the_other_columns():
    frame = pd.DataFrame({"p": [0.123456], "token": ["<s>"]})
    html = show_table(frame, digits={"p": 3}).to_html()
    assert "0.123" in html and "0.1234" not in html and "&lt;s&gt;" in html


def test_show_table_digits_per_column_leave_no_float_at_six_decimals():
    """Chapter 5's steps table: counts that are floats (NaN in the column) printed 17.000000."""
    frame = pd.DataFrame({"method": ["ROME", "SADR"], "steps": [17.0, 54.0], "s": [1.684, None],
                          "share": [0.1234, -0.0001]})
    html = show_table(frame, {"s": 2}).to_html()
    assert ">17<" in html and ">54<" in html and "17.0" not in html
    assert "1.68" in html and "0.12" in html and "-0.00" not in html and "0.000000" not in html


# ---------------------------------------------------------------- numbers and intervals as text

def test_number_never_prints_minus_zero():
    from editlens.display import number

    assert number(-0.0004, 3) == "0.000" and number(-0.0004, 3, sign=True) == "+0.000"
    assert number(-0.0006, 3, sign=True) == "-0.001" and number(0.25, 2, sign=True) == "+0.25"


def test_interval_text_shows_the_sign_of_an_end_that_excludes_zero():
    from editlens.display import interval_text

    assert interval_text(-0.006, -0.0124, -0.0004, 2) == "-0.01 [-0.01, -0.0004]"
    assert interval_text(0.0002, 0.00003, 0.0003, 4) == "+0.0002 [+0.00003, +0.0003]"
    # an interval that reaches 0 keeps its digits, and a rounded 0 is never -0
    assert interval_text(-0.03, -0.061, -0.0, 2) == "-0.03 [-0.06, +0.00]"
    assert interval_text(-0.03, -0.061, 0.0004, 2) == "-0.03 [-0.06, +0.00]"
    assert interval_text(0.5, 0.4, 0.6, 3, sign=False) == "0.500 [0.400, 0.600]"


def test_interval_str_and_summary_markdown_use_interval_text():
    from editlens.compare import summary_markdown
    from editlens.stats import Interval

    assert str(Interval(-0.002, -0.0041, -0.0004, 50)) == "-0.002 [-0.004, -0.0004]"
    assert str(Interval(0.0, -0.0001, 0.0001, 50)) == "+0.000 [+0.000, +0.000]"
    table = pd.DataFrame({"metric": ["NS", "NS"], "label": ["ROME", "STEAM"], "n": [50, 50],
                          "mean": [0.98, 0.97], "low": [0.97, 0.96], "high": [0.99, 0.98],
                          "diff vs rome": [float("nan"), -0.002], "diff low": [float("nan"), -0.0041],
                          "diff high": [float("nan"), -0.0002], "CI excludes 0": [float("nan"), True]})
    md = summary_markdown(table)
    assert "| NS | STEAM | 50 | 0.970 [0.960, 0.980] | -0.002 [-0.004, -0.0002] * |" in md
    assert not re.search(r"-0\.000(?!\d)", md)  # no -0.000


# ---------------------------------------------------------------- figures: what a reader trips on

@pytest.fixture
def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from editlens.display import book_style

    book_style()
    yield plt
    plt.close("all")


def test_figure_problems_finds_colliding_text_and_bad_legends(pyplot):
    import numpy as np

    from editlens.display import figure_problems

    fig, ax = pyplot.subplots()
    ax.set_title("panel a")
    ax.text(0.5, 1.01, "panel b", transform=ax.transAxes, ha="center")
    assert any("overlaps" in p and "panel b" in p for p in figure_problems(fig))

    fig, ax = pyplot.subplots(figsize=(2, 2))
    ax.plot(range(40))
    ax.set_xticks(range(40))  # forty tick labels in two inches
    assert any("x tick" in p and "overlaps" in p for p in figure_problems(fig))

    fig, ax = pyplot.subplots()
    ax.plot(np.arange(10), np.arange(10), label="only")
    ax.legend(loc="lower right")
    assert figure_problems(fig) == ["a legend with one entry ('only')"]

    fig, ax = pyplot.subplots()
    x = np.linspace(0, 1, 50)
    ax.plot(x, np.ones_like(x), "o-", label="a")
    ax.plot(x, x, label="b")
    ax.legend(loc="upper center")
    assert any("covers its data" in p for p in figure_problems(fig))

    fig, ax = pyplot.subplots()
    ax.plot(x, x, label="a")
    ax.plot(x, x**2, label="b")
    ax.legend(loc="upper left")
    ax.set(title="clean", xlabel="x", ylabel="y")
    assert figure_problems(fig) == []


def _summary_table(metrics: int, methods: list[str]) -> pd.DataFrame:
    import numpy as np

    rng = np.random.default_rng(0)
    rows = []
    for m in ["ES", "PS", "NS", "RelS", "DNS", "Port", "GE", "RS", "SC", "seconds"][:metrics]:
        for i, label in enumerate(methods):
            mean = rng.uniform(0.2, 0.9)
            d = None if i == 0 else rng.normal(0, 0.02)
            rows.append({"metric": m, "label": label, "method": label.lower(), "n": 50, "mean": mean,
                         "low": mean - 0.1, "high": mean + 0.1, "diff vs rome": d,
                         "diff low": None if d is None else d - 0.01, "diff high": None if d is None else d + 0.01,
                         "CI excludes 0": None if d is None else abs(d) > 0.01})
    return pd.DataFrame(rows)


def test_the_package_figures_have_no_text_collisions(pyplot, tmp_path):
    """Every plotting function of the package, on synthetic data shaped like the chapters' (30 layers x 9
    heads, a 7-token trace, Chapter 6's ten-metric summary), draws without colliding text, text cut off, a
    one-entry legend or a legend over data."""
    import numpy as np
    import torch

    from editlens import compare, tracing
    from editlens.display import figure_problems
    from editlens.plots import heatmap

    rng = np.random.default_rng(0)
    figures = {"heatmap": heatmap(rng.random((30, 9)), title="probe accuracy", center=0.5,
                                  cbar_label="held-out accuracy", mark=[(1, 2), (20, 4)]).figure,
               "heatmap, annotated": heatmap(rng.normal(size=(4, 4)), "alpha", "K", annot=True, fmt="+.2f",
                                             center=0).figure}
    tokens = ["<|endoftext|>", "The", " capital", " city", " of", " France", " is"]
    for kind in ("hidden", "mlp", "attn"):
        result = tracing.TraceResult(scores=torch.rand(7, 30), p_clean=0.565, p_corrupted=0.024,
                                     token_strs=tokens, subject_range=(5, 6), kind=kind, window=6,
                                     answer=" Paris", positions=list(range(7)))
        figures[f"trace {kind}"] = tracing.plot_trace(result).figure
    labels = ["ROME", "STEAM", "ROME+SADR", "STEAM+SADR"]
    figures["summary"] = compare.summary_figure(_summary_table(10, labels))
    figures["summary, 3 metrics"] = compare.summary_figure(_summary_table(3, labels[:2]))
    for name, fig in figures.items():
        assert figure_problems(fig) == [], name
        assert fig.get_size_inches()[0] <= 6.8 + 1e-9, name  # the column (editlens.display.COLUMN_INCHES)


def test_a_named_index_is_one_header_row_not_two():
    frame = pd.DataFrame({"model": ["unsteered", "steered"], "cons": [0.6421, 0.649]}).set_index("model")
    html = show_table(frame, 3, index=True).to_html()
    assert html.count("<tr>") == 3 and re.findall(r">([^<>]+)</th>", html)[:2] == ["model", "cons"]
    frame.columns.name = "first token"  # both named: pandas' two header rows say both names
    assert show_table(frame, 3, index=True).to_html().count("<tr>") == 4
