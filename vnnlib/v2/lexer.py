"""VNN-LIB 2.0 lexer: text -> tokens with 1-based line/column (follows ``syntax/grammar.cf``).

Token kinds match the grammar's tokens: the compound keywords such as ``(assert`` and
``(declare-network`` (one token each, as the grammar spells them), the symbols, ``Number``,
``VersionToken`` (``<2.0>``), ``OnnxString``, ``Initialized`` and ``VariableName``.
The reserved words ``and``/``or`` become symbol tokens. At every position the longest match
wins; between equally long matches the grammar's order decides (keywords first).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vnnlib.parser import VnnlibError

KEYWORDS = ("(vnnlib-version", "(declare-network", "(declare-input", "(declare-output",
            "(declare-hidden", "(isomorphic-to", "(equal-to", "(assert")
SYMBOLS = (">=", "<=", "!=", "==", "(", ")", "[", "]", ",", "-", "+", "*", ">", "<")
RESERVED = ("and", "or")

# BNFC's ``letter``: ASCII letters and the Latin-1 letters (no × or ÷).
_LETTER = "A-Za-z\u00c0-\u00d6\u00d8-\u00f6\u00f8-\u00ff"
_PATTERNS = (
    ("version", re.compile(r"<[0-9]+\.[0-9]+>")),
    ("number", re.compile(r"-?[0-9]+(?:\.[0-9]+)?")),
    ("string", re.compile(r'"(?:[^"\\]|\\["\\nt])*"')),
    ("name", re.compile(f"[{_LETTER}][{_LETTER}0-9_]*")),
)
_SPACE = re.compile(r"(?:[ \t\r\n\f\v]+|;[^\n]*)+")


@dataclass(frozen=True)
class Token:
    """One token: ``kind`` is ``'sym'`` (keywords, symbols, reserved words), ``'version'``,
    ``'number'``, ``'string'``, ``'name'``, ``'initialized'`` or ``'eof'``."""

    kind: str
    text: str
    line: int
    col: int


def _fail(msg: str, line: int, col: int, path: str | None) -> VnnlibError:
    return VnnlibError(msg, path, line, col)


def _match_at(text: str, pos: int) -> tuple[str, str] | None:
    """(kind, text) of the longest token starting at ``pos``; keywords win ties."""
    best: tuple[str, str] | None = None
    for word in KEYWORDS + SYMBOLS:
        if text.startswith(word, pos) and (best is None or len(word) > len(best[1])):
            best = ("sym", word)
    for kind, rx in _PATTERNS:
        m = rx.match(text, pos)
        if m and (best is None or len(m.group()) > len(best[1])):
            best = (kind, m.group())
    if best is not None and best[0] == "name":
        if best[1] in RESERVED:
            best = ("sym", best[1])
        elif best[1] == "initialized":
            best = ("initialized", best[1])
    return best


def tokenize(text: str, path: str | None = None) -> list[Token]:
    """All tokens of ``text`` followed by an ``eof`` token; raises :class:`VnnlibError`."""
    tokens: list[Token] = []
    pos, line, line_start = 0, 1, 0
    n = len(text)
    while True:
        m = _SPACE.match(text, pos)
        if m:
            chunk = m.group()
            nl = chunk.count("\n")
            if nl:
                line += nl
                line_start = pos + chunk.rfind("\n") + 1
            pos = m.end()
        if pos >= n:
            tokens.append(Token("eof", "", line, pos - line_start + 1))
            return tokens
        found = _match_at(text, pos)
        col = pos - line_start + 1
        if found is None:
            ch = text[pos]
            what = "an unterminated string" if ch == '"' else f"unexpected character {ch!r}"
            raise _fail(f"lexical error: {what}", line, col, path)
        kind, word = found
        tokens.append(Token(kind, word, line, col))
        nl = word.count("\n")  # only strings may span lines
        if nl:
            line += nl
            line_start = pos + word.rfind("\n") + 1
        pos += len(word)
