"""Console tables stay aligned with Chinese text (wide characters take two terminal columns); the one number
format; the one markdown table and its escaping rule."""

from ascend_lab.report import display_width, format_number, format_table, markdown_table


def test_wide_characters_count_two_columns():
    assert display_width("hello") == 5
    assert display_width("你好,昇腾!") == 10  # 4 wide characters, 2 narrow punctuation marks
    assert display_width("ＡＢ") == 4  # fullwidth forms


def test_rows_with_chinese_line_up():
    lines = format_table(["prompt", "cosine"], [["你好,昇腾!", 0.5], ["hello", 1.0]]).splitlines()
    widths = {display_width(line) for line in lines}
    assert len(widths) == 1, lines  # every line, border and rows, spans the same columns
    assert lines[3].index("|", 1) != lines[4].index("|", 1)  # by characters they differ; by columns they match


def test_one_number_format():
    assert [format_number(v) for v in (12345.6, 123.45, 1.2345, 0.0, 0.012345, None, 7, "x")] == [
        "12,346", "123.5", "1.23", "0.00", "0.0123", "-", "7", "x"]


def test_markdown_cells_cannot_break_the_table():
    text = markdown_table(["max |Δ|", "prompt"], [[0.5, "a|b\n你好"]], title="t", note="n")
    assert text == "# t\n\n| max \\|Δ\\| | prompt |\n|---|---|\n| 0.5 | a\\|b 你好 |\n\nn\n"
