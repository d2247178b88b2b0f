"""VNN-LIB 2.0 lexer: text -> tokens with 1-based line/column (follows ``syntax/grammar.cf``).

Token kinds match the grammar's tokens: the compound keywords such as ``(assert`` and
``(declare-network`` (one token each, as the grammar spells them), the symbols, ``Number``,
``VersionToken`` (``<2.0>``), ``OnnxString``, ``Initialized`` and ``VariableName``.
The reserved words ``and``/``or`` become symbol tokens. At every position the longest match
wins, as in the grammar's generated lexer.
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
# One alternation; the order makes the first match the longest one (a version before '<',
# a number before '-', a keyword before '(').
_TOKEN_RE = re.compile("|".join((
    r"(?P<space>(?:[ \t\r\n\f\v]+|;[^\n]*)+)",
    r"(?P<version><[0-9]+\.[0-9]+>)",
    r"(?P<number>-?[0-9]+(?:\.[0-9]+)?)",
    "(?P<sym>" + "|".join(re.escape(k) for k in KEYWORDS + SYMBOLS) + ")",
    r'(?P<string>"(?:[^"\\]|\\["\\nt])*")',
    f"(?P<name>[{_LETTER}][{_LETTER}0-9_]*)",
    r"(?P<bad>.)",
)), re.DOTALL)


@dataclass(frozen=True)
class Token:
    """One token: ``kind`` is ``'sym'`` (keywords, symbols, reserved words), ``'version'``,
    ``'number'``, ``'string'``, ``'name'``, ``'initialized'`` or ``'eof'``."""

    kind: str
    text: str
    line: int
    col: int


def tokenize(text: str, path: str | None = None) -> list[Token]:
    """All tokens of ``text`` followed by an ``eof`` token; raises :class:`VnnlibError`."""
    tokens: list[Token] = []
    line, line_start = 1, 0
    for m in _TOKEN_RE.finditer(text):
        kind, word, pos = m.lastgroup, m.group(), m.start()
        if kind == "bad":
            what = "an unterminated string" if word == '"' else f"unexpected character {word!r}"
            raise VnnlibError(f"lexical error: {what}", path, line, pos - line_start + 1)
        if kind != "space":
            if kind == "name" and word in RESERVED:
                kind = "sym"
            elif kind == "name" and word == "initialized":
                kind = "initialized"
            tokens.append(Token(kind, word, line, pos - line_start + 1))
        nl = word.count("\n")  # whitespace, comments and strings may span lines
        if nl:
            line += nl
            line_start = pos + word.rfind("\n") + 1
    tokens.append(Token("eof", "", line, len(text) - line_start + 1))
    return tokens
