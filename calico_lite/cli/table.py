"""The CLI's one table formatter: kubectl-style columns and calicoctl-style boxes.

Hand-rolled rather than `tabulate`: the output is a contract (scripts and tests read it), and
tabulate cannot reproduce it byte for byte (its plain format sizes every column to its
content, right-aligns numbers, and its boxed formats differ in the header rule), while what we
need is two small functions. A library would earn its place only if we wanted its many styles.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence


def row(cells: Sequence[object], widths: Sequence[int]) -> str:
    """Cells one space apart, left-aligned; cell i padded to widths[i] (a minimum: a longer
    value pushes the rest of its line right). Cells past `widths`, the last one included,
    are not padded, so lines carry no trailing blanks."""
    padded = [str(c).ljust(widths[i]) if i < len(widths) and i < len(cells) - 1 else str(c)
              for i, c in enumerate(cells)]
    return " ".join(padded)


def columns(header: Sequence[str] | None, rows: Iterable[Sequence[object]],
            widths: Sequence[int]) -> list[str]:
    """Fixed-width columns with an optional header line, like `kubectl get`."""
    return ([row(header, widths)] if header else []) + [row(r, widths) for r in rows]


def boxed(header: Sequence[str], rows: Sequence[Sequence[object]], indent: str = "") -> list[str]:
    """A +---+ table sized to its content, like `calicoctl node status`."""
    cells = [[str(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    sep = indent + "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(values: Sequence[str]) -> str:
        return indent + "| " + " | ".join(v.ljust(w) for v, w in zip(values, widths)) + " |"
    return [sep, line(header), sep, *(line(r) for r in cells), sep]
