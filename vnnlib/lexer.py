"""Tokenizer and s-expression tree builder for VNN-LIB text (internal to :mod:`vnnlib.parser`).

The tree is built without recursion. A list node is ``[open_index, child, ...]`` where
``open_index`` is the token index of its ``(`` and each child is either a token index
(an atom, ``int``) or another list node. Token positions (line, column) are only computed
when an error needs them, by re-scanning the text.
"""

from __future__ import annotations

import re
from typing import Union

MAX_DEPTH = 200
"""Deepest parenthesis nesting accepted (real files nest at most 5 levels)."""

# A comment, a parenthesis, or a run of anything else up to whitespace / paren / comment.
_TOKEN_RE = re.compile(r";[^\n]*|[()]|[^\s();]+")
_COMMENT_RE = re.compile(r";[^\n]*")

Node = list  # [open_index, child, ...]
Child = Union[int, Node]


class LexError(Exception):
    """A syntax error at token ``index`` (``len(tokens)`` means end of file).

    ``related`` is the index of the unclosed ``(`` for end-of-file errors, else ``None``.
    """

    def __init__(self, msg: str, index: int, related: int | None = None) -> None:
        super().__init__(msg)
        self.msg = msg
        self.index = index
        self.related = related


def tokenize(text: str) -> list[str]:
    """Split ``text`` into ``(``, ``)`` and atom tokens, dropping ``;`` comments."""
    if ";" in text:  # removing comments keeps the token sequence (they end before a newline)
        text = _COMMENT_RE.sub("", text)
    # Same tokens as _TOKEN_RE (str.split and re's \s agree on whitespace), about 2x faster.
    return text.replace("(", " ( ").replace(")", " ) ").split()


def build_tree(tokens: list[str]) -> list[Child]:
    """Group tokens into top-level s-expressions (iteratively); raises :class:`LexError`."""
    root: Node = [-1]
    cur = root
    stack: list[Node] = []
    push = stack.append
    for k, tok in enumerate(tokens):
        if tok == "(":
            node: Node = [k]
            cur.append(node)
            push(cur)
            cur = node
            if len(stack) > MAX_DEPTH:
                raise LexError(f"parentheses nested deeper than {MAX_DEPTH} levels", k)
        elif tok == ")":
            if not stack:
                raise LexError("unexpected ')' with no matching '('", k)
            cur = stack.pop()
        else:
            cur.append(k)
    if stack:
        raise LexError("expected ')' but found end of file", len(tokens), related=cur[0])
    return root[1:]


def token_offset(text: str, index: int) -> int:
    """Character offset of token number ``index`` (``len(text)`` when past the last token)."""
    if index < 0:
        return 0
    n = 0
    for m in _TOKEN_RE.finditer(text):
        start = m.start()
        if text[start] == ";":
            continue
        if n == index:
            return start
        n += 1
    return len(text)


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of character ``offset``; a TAB counts as one column."""
    line = text.count("\n", 0, offset) + 1
    col = offset - text.rfind("\n", 0, offset)
    return line, col
