"""Calico-style label selectors for BGP peers (pure): `rack == "rack1" && has(route-reflector)`.

Grammar (what operators write in Calico's BGPPeer nodeSelector / peerSelector):

    expr    := or
    or      := and ( "||" and )*
    and     := unary ( "&&" unary )*
    unary   := "!" unary | "(" expr ")" | term
    term    := "all()" | "has(" KEY ")" | KEY ("==" | "!=") STRING
              | KEY ("in" | "not in") "{" STRING ("," STRING)* "}"

An empty selector selects nothing; `all()` selects every node. A key absent from the labels
is `!= anything` and `== nothing`, as in Calico.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

Labels = Mapping[str, str]
Predicate = Callable[[Labels], bool]

_TOKEN = re.compile(r"""\s*(?:(?P<op>&&|\|\||==|!=|!|\(|\)|\{|\}|,)
                        |(?P<str>"[^"]*"|'[^']*')
                        |(?P<word>[A-Za-z0-9_./-]+(?:\(\))?))""", re.X)


class SelectorError(ValueError):
    """The selector text does not parse; the message points at the offending spot."""


@dataclass(frozen=True)
class Selector:
    text: str
    _match: Predicate

    def matches(self, labels: Labels) -> bool:
        return self._match(labels)

    def __str__(self) -> str:
        return self.text


def parse_selector(text: str) -> Selector:
    text = (text or "").strip()
    if not text:
        return Selector("", lambda labels: False)
    tokens = _tokenize(text)
    p = _Parser(tokens, text)
    pred = p.expr()
    if p.i != len(tokens):
        raise SelectorError(f"selector {text!r}: unexpected {tokens[p.i]!r}")
    return Selector(text, pred)


def _tokenize(text: str) -> list[str]:
    out, pos = [], 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            if text[pos:].strip() == "":
                break
            raise SelectorError(f"selector {text!r}: cannot read from {text[pos:]!r}")
        out.append(next(v for v in m.groupdict().values() if v is not None))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, tokens: list[str], text: str):
        self.t, self.i, self.text = tokens, 0, text

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise SelectorError(f"selector {self.text!r}: expected {want or 'more'}, got {tok!r}")
        self.i += 1
        return tok

    def expr(self) -> Predicate:
        parts = [self.conj()]
        while self.peek() == "||":
            self.take()
            parts.append(self.conj())
        return parts[0] if len(parts) == 1 else (lambda labels: any(f(labels) for f in parts))

    def conj(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() == "&&":
            self.take()
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else (lambda labels: all(f(labels) for f in parts))

    def unary(self) -> Predicate:
        tok = self.peek()
        if tok == "!":
            self.take()
            inner = self.unary()
            return lambda labels: not inner(labels)
        if tok == "(":
            self.take()
            inner = self.expr()
            self.take(")")
            return inner
        return self.term()

    def term(self) -> Predicate:
        tok = self.take()
        if tok == "all()":
            return lambda labels: True
        if tok == "has":
            self.take("(")
            key = self.key()
            self.take(")")
            return lambda labels: key in labels
        key = self._check_key(tok)
        op = self.take()
        if op in ("==", "!="):
            value = self.string()
            if op == "==":
                return lambda labels: labels.get(key) == value
            return lambda labels: labels.get(key) != value
        if op == "not" and self.peek() == "in":
            self.take()
            values = self.set_()
            return lambda labels: labels.get(key) not in values
        if op == "in":
            values = self.set_()
            return lambda labels: labels.get(key) in values
        raise SelectorError(f"selector {self.text!r}: expected ==, !=, in or not in after {key!r}")

    def set_(self) -> frozenset[str]:
        self.take("{")
        values = {self.string()}
        while self.peek() == ",":
            self.take()
            values.add(self.string())
        self.take("}")
        return frozenset(values)

    def key(self) -> str:
        return self._check_key(self.take())

    def _check_key(self, tok: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9_./-]+", tok):
            raise SelectorError(f"selector {self.text!r}: {tok!r} is not a label key")
        return tok

    def string(self) -> str:
        tok = self.take()
        if len(tok) < 2 or tok[0] not in "\"'" or tok[-1] != tok[0]:
            raise SelectorError(f"selector {self.text!r}: expected a quoted value, got {tok!r}")
        return tok[1:-1]
