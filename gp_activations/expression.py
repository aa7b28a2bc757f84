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
    tokens = tokenize(text)
    nodes: list = []
    stack: list[list] = []  # frames: [operator name, arity, arguments done, token of the name]
    i = 0

    def fail(message, token):
        raise ExpressionError(message, text, token.position)

    while True:
        # ---- a value is expected -----------------------------------------------------------
        tok = tokens[i]
        if tok.kind == "name":
            name = tok.text
            if name in pset.operators:
                op = pset.operators[name]
                if tokens[i + 1].kind != "(":
                    fail(f"operator {name!r} takes {_args(op.arity)}: write {name}(...)", tok)
                nodes.append(pset.mapping[name])
                stack.append([name, op.arity, 0, tok])
                i += 2
                if tokens[i].kind == ")":
                    fail(f"{name}() takes {_args(op.arity)}, got 0", tokens[i])
                continue
            if name == "x" or name in pset.constants:
                nodes.append(pset.mapping[name])
            elif name.lower() in _NON_FINITE_WORDS:
                fail(f"non-finite literal {name!r} is not allowed", tok)
            else:
                fail(f"unknown name {name!r}; {pset.name} has operators "
                     f"{', '.join(pset.operators)} and terminals {', '.join(pset.terminal_names)}", tok)
            if tokens[i + 1].kind == "(":
                fail(f"{name!r} is a terminal, not an operator", tokens[i + 1])
        elif tok.kind == "number":
            value = float(tok.text)
            if not math.isfinite(value):
                fail(f"non-finite literal {tok.text!r} is not allowed", tok)
            nodes.append(literal_terminal(value))
        elif tok.kind == "end":
            fail("expression ends where an operand was expected", tok)
        elif tok.kind == "bad":
            fail(f"unexpected character {tok.text!r}", tok)
        else:
            fail(f"expected an operand, found {tok.text!r}", tok)
        i += 1
        # ---- close finished calls ------------------------------------------------------------
        while stack:
            frame = stack[-1]
            tok = tokens[i]
            frame[2] += 1
            if tok.kind == ",":
                if frame[2] >= frame[1]:
                    fail(f"{frame[0]}() takes {_args(frame[1])}, got more", tok)
                i += 1
                break
            if tok.kind == ")":
                if frame[2] != frame[1]:
                    fail(f"{frame[0]}() takes {_args(frame[1])}, got {frame[2]}", tok)
                stack.pop()
                i += 1
                continue
            if tok.kind == "end":
                fail(f"missing ')' to close {frame[0]}(", frame[3])
            if tok.kind == "bad":
                fail(f"unexpected character {tok.text!r}", tok)
            fail(f"expected ',' or ')', found {tok.text!r}", tok)
        else:
            if tokens[i].kind == "bad":
                fail(f"unexpected character {tokens[i].text!r}", tokens[i])
            if tokens[i].kind != "end":
                fail(f"unexpected {tokens[i].text!r} after the end of the expression", tokens[i])
            return gp.PrimitiveTree(nodes)


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
