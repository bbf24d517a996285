"""Which sources the paths a user gives name, in the order they are read.

Ingestion stores them and `recaudit validate` checks them without a database; both read the
same files in the same order (a directory's users and movies before its logs), so that what
validates is what would be stored.
"""

from __future__ import annotations

from typing import Iterable

from recaudit.recsys import detect, formats


def plan(paths: Iterable[str]) -> list[tuple[str, str]]:
    """(kind, path) for every source the paths name, checked before anything is read: a
    directory stands for its files, and standard input may be given once."""
    out = []
    for path in paths:
        kind = detect.kind(path)
        if kind == "directory":
            files = detect.directory_files(path)
            if not files:
                raise formats.InputError(path, "no users.csv, movies.csv, event log or MovieLens files in it")
            out += [(k, str(p)) for k, p in files]
        else:
            out.append((kind, path))
    if sum(path == "-" for _, path in out) > 1:
        raise formats.InputError("-", "standard input given more than once")
    return out
