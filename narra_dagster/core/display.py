"""Showing text that came from outside (file names, S3 keys, OCR lines, transcripts) to a person.

A file name may hold anything but ``/`` and NUL: an ``ESC ]0;...BEL`` that retitles the terminal,
``ESC [31m`` colours, a carriage return that overwrites the line before it, a right-to-left
override that makes ``gpj.exe`` read ``exe.jpg``. :func:`visible` turns each such character into a
visible escape before the text reaches a terminal or a log line; machine-readable output
(``--json``, the HTTP API) keeps the exact text, JSON escapes it already.
"""

from __future__ import annotations

import re

# C0 controls (tab and newline too: a name shown on one line must stay on one line), DEL, C1
# controls (0x9b is a one-byte CSI on terminals that honour C1), the line and paragraph
# separators, the bidirectional embeddings, overrides and isolates (U+202A-U+202E,
# U+2066-U+2069), and lone surrogates (the undecodable bytes of a name that is not UTF-8, held
# by Python as U+DC80-U+DCFF: printing them raises UnicodeEncodeError on a UTF-8 console).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escape(match: re.Match) -> str:
    code = ord(match.group())
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the original byte of a non-UTF-8 name
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str) -> str:
    """``text`` with every character that could drive a terminal or reorder what is shown
    replaced by a visible escape: ``"evil\\x1b[31m.png"`` for ``"evil<ESC>[31m.png"``,
    ``\\u202e`` for a right-to-left override, ``\\xe9`` for a lone byte of a non-UTF-8 name.
    Everything else, accented letters, CJK and emoji included, is kept as is; a backslash is
    not doubled (names stay readable; ``--json`` has the exact text).

    Args:
        text: any string (``None`` is not accepted).

    Returns:
        A string safe to print on a terminal or write to a line-based log.
    """
    return _UNSAFE.sub(_escape, text)
