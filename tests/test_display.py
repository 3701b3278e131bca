"""editlens.display.show_table: what the rendered page shows."""

import pandas as pd

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
