"""Reading order of OCR lines (pure helper; the engine itself is tested on real images)."""

from narra_dagster.resources.ocr import OcrLine, reading_order


def _line(text, x0, y0, x1, y1):
    return OcrLine(text=text, confidence=1.0, box=(x0, y0, x1, y1), polygon=[])


def test_words_boxed_separately_on_one_row_keep_left_to_right_order():
    lines = [_line("daily", 300, 52, 400, 90), _line("Fresh", 10, 48, 120, 86),
             _line("below", 10, 120, 90, 150), _line("sourdough", 130, 45, 290, 88)]
    assert [line.text for line in reading_order(lines)] == ["Fresh", "sourdough", "daily", "below"]
    assert reading_order([]) == []
