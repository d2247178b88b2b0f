"""Recursive-descent parser for VNN-LIB 2.0 (``syntax/grammar.cf``) into :mod:`vnnlib.v2.ast`.

Every syntax error is a :class:`~vnnlib.parser.VnnlibError` at the offending token's
``line:col``. The parser checks syntax only; :mod:`vnnlib.v2.typecheck` checks meaning.
"""

from __future__ import annotations

import sys
from typing import NoReturn

from vnnlib.parser import VnnlibError
from vnnlib.v2 import ast
from vnnlib.v2.lexer import Token, tokenize

MAX_DEPTH = 200
"""Deepest expression nesting accepted."""

_COMPARISONS = (">", "<", ">=", "<=", "!=", "==")
_UNESCAPE = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def parse_query(text: str, path: str | None = None) -> ast.Query:
    """Parse query text into a :class:`~vnnlib.v2.ast.Query` (syntax only)."""
    if text.startswith("\ufeff"):
        text = text[1:]
    return _Parser(tokenize(text, path), path).query()


def _describe(tok: Token) -> str:
    return "end of file" if tok.kind == "eof" else f"'{tok.text}'"


def _unquote(text: str) -> str:
    out, i = [], 1
    while i < len(text) - 1:
        ch = text[i]
        if ch == "\\":
            out.append(_UNESCAPE[text[i + 1]])
            i += 2
        else:
            out.append(ch)
            i += 1
    return "".join(out)


class _Parser:
    """One pass over a token list."""

    def __init__(self, tokens: list[Token], path: str | None) -> None:
        self.tokens = tokens
        self.path = path
        self.i = 0
        self.depth = 0

    # ------------------------------------------------------------------ helpers
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, k: int = 1) -> Token:
        return self.tokens[min(self.i + k, len(self.tokens) - 1)]

    def fail(self, expected: str, tok: Token | None = None) -> NoReturn:
        tok = tok or self.tok
        raise VnnlibError(f"syntax error: expected {expected} but found {_describe(tok)}",
                          self.path, tok.line, tok.col)

    def at(self, text: str) -> bool:
        return self.tok.kind == "sym" and self.tok.text == text

    def expect(self, text: str) -> Token:
        if not self.at(text):
            self.fail(f"'{text}'")
        return self.advance()

    def expect_kind(self, kind: str, what: str) -> Token:
        if self.tok.kind != kind:
            self.fail(what)
        return self.advance()

    def advance(self) -> Token:
        tok = self.tok
        if tok.kind != "eof":
            self.i += 1
        return tok

    @staticmethod
    def pos(tok: Token) -> ast.Pos:
        return ast.Pos(tok.line, tok.col)

    # ------------------------------------------------------------- declarations
    def query(self) -> ast.Query:
        version = self.version()
        networks = [self.network()]
        while self.at("(declare-network"):
            networks.append(self.network())
        assertions = [self.assertion()]
        while self.at("(assert"):
            assertions.append(self.assertion())
        if self.tok.kind != "eof":
            self.fail("'(assert' or end of file")
        return ast.Query(version, tuple(networks), tuple(assertions))

    def version(self) -> ast.Version:
        start = self.expect("(vnnlib-version")
        tok = self.expect_kind("version", "a version such as '<2.0>'")
        major, minor = tok.text[1:-1].split(".")
        self.expect(")")
        return ast.Version(int(major), int(minor), self.pos(start))

    def network(self) -> ast.NetworkDecl:
        start = self.expect("(declare-network")
        name = self.expect_kind("name", "a network name")
        equivs: list[ast.Equivalence] = []
        while self.at("(equal-to") or self.at("(isomorphic-to"):
            head = self.advance()
            target = self.expect_kind("name", "a network name")
            self.expect(")")
            equivs.append(ast.Equivalence(head.text[1:], target.text, self.pos(head), self.pos(target)))
        if not self.at("(declare-input"):
            self.fail("'(declare-input'" if equivs else "'(equal-to', '(isomorphic-to' or '(declare-input'")
        inputs = self.tensors("(declare-input", "input")
        hiddens = self.tensors("(declare-hidden", "hidden") if self.at("(declare-hidden") else []
        if not self.at("(declare-output"):
            self.fail("'(declare-input', '(declare-hidden' or '(declare-output'" if not hiddens
                      else "'(declare-hidden' or '(declare-output'")
        outputs = self.tensors("(declare-output", "output")
        if not self.at(")"):
            self.fail("'(declare-output' or ')'")
        self.advance()
        return ast.NetworkDecl(name.text, tuple(equivs), tuple(inputs), tuple(hiddens),
                               tuple(outputs), self.pos(start), self.pos(name))

    def tensors(self, keyword: str, kind: str) -> list[ast.TensorDecl]:
        out = [self.tensor(kind)]
        while self.at(keyword):
            out.append(self.tensor(kind))
        return out

    def tensor(self, kind: str) -> ast.TensorDecl:
        start = self.advance()
        name = self.expect_kind("name", f"an {kind} variable name" if kind != "hidden"
                                else "a hidden variable name")
        etype = self.expect_kind("name", "an element type (e.g. float32, Real)")
        shape = self.shape()
        onnx_name, options = "", []
        if kind == "hidden":
            onnx_name = _unquote(self.expect_kind("string", 'an ONNX node name in double quotes').text)
        elif kind == "input":
            while self.tok.kind == "initialized":
                options.append(self.pos(self.advance()))
        if not self.at(")"):
            self.fail("'initialized' or ')'" if kind == "input" else "')'")
        self.advance()
        return ast.TensorDecl(kind, name.text, etype.text, shape, self.pos(start), self.pos(name),
                              self.pos(etype), onnx_name, tuple(options))

    def shape(self) -> tuple[ast.NumberLit, ...]:
        self.expect("[")
        if self.at("]"):
            self.advance()
            return ()
        dims = self.numbers()
        self.expect("]")
        return dims

    def numbers(self) -> tuple[ast.NumberLit, ...]:
        out = [self.number()]
        while self.at(","):
            self.advance()
            out.append(self.number())
        if not self.at("]"):
            self.fail("',' or ']'")
        return tuple(out)

    def number(self) -> ast.NumberLit:
        tok = self.expect_kind("number", "a number")
        return ast.NumberLit(tok.text, self.pos(tok))

    # -------------------------------------------------------------- expressions
    def assertion(self) -> ast.Assertion:
        start = self.expect("(assert")
        expr = self.bool_expr()
        self.expect(")")
        return ast.Assertion(expr, self.pos(start))

    def nest(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            self.fail(f"at most {MAX_DEPTH} nested expressions, not")

    def bool_expr(self) -> ast.BoolExpr:
        start = self.expect("(")
        head = self.tok
        if head.kind != "sym" or head.text not in _COMPARISONS + ("and", "or"):
            self.fail("a comparison ('<=', '>=', '<', '>', '==', '!=') or 'and'/'or'")
        self.advance()
        self.nest()
        if head.text in ("and", "or"):
            args = [self.bool_expr()]
            while self.at("("):
                args.append(self.bool_expr())
            if not self.at(")"):
                self.fail("'(' or ')'")
            expr: ast.BoolExpr = ast.Connective(head.text, tuple(args), self.pos(start))
        else:
            left = self.arith()
            right = self.arith()
            expr = ast.Compare(head.text, left, right, self.pos(start))
        self.expect(")")
        self.depth -= 1
        return expr

    def at_arith(self) -> bool:
        return self.tok.kind in ("name", "number") or self.at("(")

    def arith(self) -> ast.ArithExpr:
        tok = self.tok
        if tok.kind == "number":
            return ast.Const(self.number())
        if tok.kind == "name":
            self.advance()
            indices = None
            if self.at("["):
                self.advance()
                indices = self.numbers()
                self.advance()
            return ast.Var(tok.text, indices, self.pos(tok))
        if not self.at("("):
            self.fail("a number, a variable or '('")
        self.advance()
        op = self.tok
        if op.kind != "sym" or op.text not in ("+", "-", "*"):
            self.fail("an arithmetic operator ('+', '-', '*')")
        self.advance()
        self.nest()
        args = [self.arith()]
        while self.at_arith():
            args.append(self.arith())
        if not self.at(")"):
            self.fail("a number, a variable, '(' or ')'")
        self.advance()
        self.depth -= 1
        name = "neg" if op.text == "-" and len(args) == 1 else op.text
        return ast.Arith(name, tuple(args), self.pos(tok))


if sys.getrecursionlimit() < 4 * MAX_DEPTH + 200:  # pragma: no cover - defensive
    sys.setrecursionlimit(4 * MAX_DEPTH + 200)
