"""The words every part of recaudit shares, imported by audits, reports and the CLI alike and
importing nothing of recaudit (the reports are rendered from audits' results, and results render
their own pages: a leaf keeps that from being a cycle): the severities of findings, and counts
and numbers as messages read them."""

from __future__ import annotations

SEVERITIES = ("info", "warning", "critical")


def counted(n: int, noun: str) -> str:
    """A count as a message reads it.

    >>> counted(1, "finding"), counted(3, "finding"), counted(1200, "new alert")
    ('1 finding', '3 findings', '1,200 new alerts')
    """
    return f"{n:,} {noun}{'' if n == 1 else 's'}"


def distinct(a: float, b: float, digits: int = 2) -> tuple[str, str]:
    """Two numbers with as many significant digits as it takes to tell them apart (at least
    `digits`), so that a message never says a figure "went from 3.89 to 3.89".

    >>> distinct(3.8912, 3.8874, 3), distinct(0.00312, 0.0031), distinct(2.0, 2.0)
    (('3.891', '3.887'), ('0.00312', '0.0031'), ('2', '2'))
    """
    while f"{a:.{digits}g}" == f"{b:.{digits}g}" and a != b and digits < 17:
        digits += 1
    return f"{a:.{digits}g}", f"{b:.{digits}g}"
