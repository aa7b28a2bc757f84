"""Reading and writing activation expressions in DEAP's prefix notation.

``mul(x, sigmoid(x))`` is tokenised and parsed here -- never ``eval``'d.  The tokenizer knows
four kinds of token (names, numeric literals, parentheses, commas); the parser accepts only
the primitive set's operator names, ``x``, the set's constants and finite numeric literals,
and reports any other text with its position.  Parsing is iterative, so tree depth is not
limited by Python's recursion limit.  The result is a ``deap.gp.PrimitiveTree``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from deap import gp

from .errors import ExpressionError

_TOKEN = re.compile(
    r"\s*(?:(?P<number>[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<punct>[(),]))"
)
_NON_FINITE_WORDS = {"inf", "infinity", "nan"}


@dataclass(frozen=True)
class Token:
    kind: str  # "number", "name", "(", ")", ",", "end"
    text: str
    position: int


def tokenize(text: str) -> list[Token]:
    tokens, pos = [], 0
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        match = _TOKEN.match(text, pos)
        if match is None:  # reported by the parser when it gets here, after earlier errors
            start = pos + len(text[pos:]) - len(text[pos:].lstrip())
            tokens.append(Token("bad", text[start], start))
            break
        kind = match.lastgroup
        value = match.group(kind)
        start = match.start(kind)
        tokens.append(Token(value if kind == "punct" else kind, value, start))
        pos = match.end()
    tokens.append(Token("end", "", len(text)))
    return tokens


def literal_terminal(value: float) -> gp.Terminal:
    """A numeric constant as a DEAP terminal (formats as its repr, e.g. ``0.5``)."""
    return gp.Terminal(float(value), False, object)


def is_literal(node) -> bool:
    return isinstance(node, gp.Terminal) and not isinstance(node.value, str)


def parse(text: str, pset) -> gp.PrimitiveTree:
    """Parse prefix notation into a PrimitiveTree over ``pset`` (an ActivationPrimitiveSet)."""
    if not isinstance(text, str):
        raise ExpressionError(f"expression must be text, got {type(text).__name__}")
    if not text.strip():
        raise ExpressionError("empty expression; write e.g. mul(x, sigmoid(x))", text, 0)
    return _Parser(text, pset).run()


class _Parser:
    """One parse of ``text``: its tokens, the prefix-order nodes so far and the stack of open
    calls (a loop over the tokens, no recursion)."""

    def __init__(self, text: str, pset):
        self.text, self.pset = text, pset
        self.tokens = tokenize(text)
        self.nodes: list = []
        self.stack: list[list] = []  # frames: [operator name, arity, arguments done, name token]
        self.i = 0

    def fail(self, message: str, token: Token):
        raise ExpressionError(message, self.text, token.position)

    def run(self) -> gp.PrimitiveTree:
        """Read operands until the calls they complete are all closed, then the end."""
        while True:
            if self.operand():  # a call was opened: its first argument comes next
                continue
            if not self.close_calls():  # no call left open
                return self.end()

    # ---- a value is expected -------------------------------------------------------------
    def operand(self) -> bool:
        """Read one operand; True when it opens a call (``name(``), False when it is a value."""
        tok = self.tokens[self.i]
        if tok.kind == "name" and tok.text in self.pset.operators:
            self.open_call(tok)
            return True
        if tok.kind == "name":
            self.terminal(tok)
        elif tok.kind == "number":
            self.literal(tok)
        elif tok.kind == "end":
            self.fail("expression ends where an operand was expected", tok)
        elif tok.kind == "bad":
            self.fail(f"unexpected character {tok.text!r}", tok)
        else:
            self.fail(f"expected an operand, found {tok.text!r}", tok)
        self.i += 1
        return False

    def open_call(self, tok: Token) -> None:
        name = tok.text
        op = self.pset.operators[name]
        if self.tokens[self.i + 1].kind != "(":
            self.fail(f"operator {name!r} takes {_args(op.arity)}: write {name}(...)", tok)
        self.nodes.append(self.pset.mapping[name])
        self.stack.append([name, op.arity, 0, tok])
        self.i += 2
        if self.tokens[self.i].kind == ")":
            self.fail(f"{name}() takes {_args(op.arity)}, got 0", self.tokens[self.i])

    def terminal(self, tok: Token) -> None:
        name = tok.text
        if name == "x" or name in self.pset.constants:
            self.nodes.append(self.pset.mapping[name])
        elif name.lower() in _NON_FINITE_WORDS:
            self.fail(f"non-finite literal {name!r} is not allowed", tok)
        else:
            self.fail(f"unknown name {name!r}; {self.pset.name} has operators "
                      f"{', '.join(self.pset.operators)} and terminals "
                      f"{', '.join(self.pset.terminal_names)}", tok)
        if self.tokens[self.i + 1].kind == "(":
            self.fail(f"{name!r} is a terminal, not an operator", self.tokens[self.i + 1])

    def literal(self, tok: Token) -> None:
        value = float(tok.text)
        if not math.isfinite(value):
            self.fail(f"non-finite literal {tok.text!r} is not allowed", tok)
        self.nodes.append(literal_terminal(value))

    # ---- after a value: close finished calls -------------------------------------------------
    def close_calls(self) -> bool:
        """Count the value as an argument and close the calls it completes; True when a ``,``
        asks for the next argument, False when no call is left open."""
        while self.stack:
            frame = self.stack[-1]
            tok = self.tokens[self.i]
            frame[2] += 1
            if tok.kind == ",":
                if frame[2] >= frame[1]:
                    self.fail(f"{frame[0]}() takes {_args(frame[1])}, got more", tok)
                self.i += 1
                return True
            if tok.kind != ")":
                self.not_separator(frame, tok)
            if frame[2] != frame[1]:
                self.fail(f"{frame[0]}() takes {_args(frame[1])}, got {frame[2]}", tok)
            self.stack.pop()
            self.i += 1
        return False

    def not_separator(self, frame: list, tok: Token):
        """Fail on ``tok`` where a call's ``,`` or ``)`` belongs."""
        if tok.kind == "end":
            self.fail(f"missing ')' to close {frame[0]}(", frame[3])
        if tok.kind == "bad":
            self.fail(f"unexpected character {tok.text!r}", tok)
        self.fail(f"expected ',' or ')', found {tok.text!r}", tok)

    def end(self) -> gp.PrimitiveTree:
        tok = self.tokens[self.i]
        if tok.kind == "bad":
            self.fail(f"unexpected character {tok.text!r}", tok)
        if tok.kind != "end":
            self.fail(f"unexpected {tok.text!r} after the end of the expression", tok)
        return gp.PrimitiveTree(self.nodes)


def _args(n: int) -> str:
    return "1 argument" if n == 1 else f"{n} arguments"


def children(tree) -> list[list[int]]:
    """For every node, the indices of its children, in order."""
    kids: list[list[int]] = [[] for _ in range(len(tree))]
    open_nodes: list[list[int]] = []  # [index, children still missing]
    for idx, node in enumerate(tree):
        if open_nodes:
            parent = open_nodes[-1]
            kids[parent[0]].append(idx)
            parent[1] -= 1
            if parent[1] == 0:
                open_nodes.pop()
        if node.arity:
            open_nodes.append([idx, node.arity])
    return kids
