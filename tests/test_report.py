"""Console tables stay aligned with Chinese text (wide characters take two terminal columns)."""

from ascend_lab.report import display_width, format_table


def test_wide_characters_count_two_columns():
    assert display_width("hello") == 5
    assert display_width("你好,昇腾!") == 10  # 4 wide characters, 2 narrow punctuation marks
    assert display_width("ＡＢ") == 4  # fullwidth forms


def test_rows_with_chinese_line_up():
    lines = format_table(["prompt", "cosine"], [["你好,昇腾!", 0.5], ["hello", 1.0]]).splitlines()
    widths = {display_width(line) for line in lines}
    assert len(widths) == 1, lines  # every line, border and rows, spans the same columns
    assert lines[3].index("|", 1) != lines[4].index("|", 1)  # by characters they differ; by columns they match
