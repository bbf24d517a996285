"""What a path holds: an event log, users.csv, movies.csv, a MovieLens directory or a directory of
the stream world's files.

It sits above both readers, `formats` (the CSV headers, `InputError`) and `movielens` (which
version a directory holds), so that neither reader has to know the other.
"""

from __future__ import annotations

import codecs
import os
import stat
from pathlib import Path

from recaudit.recsys import predictions
from recaudit.recsys.formats import MOVIES_HEADER, READ_ERRORS, USERS_HEADER, InputError
from recaudit.recsys.movielens import detect_version

EVENT_LOG_SUFFIXES = (".log", ".log.gz", ".txt", ".txt.gz", ".jsonl", ".jsonl.gz", ".ndjson", ".ndjson.gz", ".gz")
GZIP_MAGIC = b"\x1f\x8b"
UTF16_BOMS = (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)  # UTF-32's BOMs begin with these too


def _header(first_line: bytes) -> list[str]:
    return [c.strip() for c in first_line.decode("utf-8-sig", "replace").strip().lower().split(",")]


def _table_kind(header: list[str]) -> str | None:
    """users or movies for a header that starts with their typed columns (attributes may follow)."""
    for name, typed in (("users", USERS_HEADER), ("movies", MOVIES_HEADER)):
        if header[:len(typed)] == typed:
            return name
    return None


def _gunzipped_head(path: Path) -> bytes:
    """The first bytes of a gzip file's content; what could be read of them when it is damaged
    (reading it as a log names the damage)."""
    import gzip

    try:
        with gzip.open(path, "rb") as f:
            return f.read(4096)
    except READ_ERRORS:
        return b""


def kind(path: str | Path) -> str:
    """What a path holds: ``events``, ``users``, ``movies``, ``predictions``, ``movielens`` or
    ``directory``.

    Files are told apart by their first line, not their name: a CSV with the users or movies
    header, a predictions file (a CSV header or a first JSON line with its columns, or Parquet),
    otherwise an event log. A directory with MovieLens's files is ``movielens``; any
    other directory is ``directory`` (its files are detected one by one). A path that cannot
    be read raises InputError with the OS's reason (permission denied, a symlink loop, ...).
    """
    if str(path) == "-":
        return "events"
    p = Path(path)
    try:
        # os.stat, not Path.exists/is_dir: those answer False for a symlink loop or an
        # unreadable parent, which would be reported as a missing file.
        mode = p.stat().st_mode
        if stat.S_ISDIR(mode):
            os.scandir(p).close()  # an unlistable directory is named itself, not a file in it
            return "movielens" if detect_version(p) else "directory"
        if not stat.S_ISREG(mode):
            raise InputError(p, "not a regular file")
        with open(p, "rb") as f:
            head = f.read(4096)
    except OSError as exc:
        raise InputError.from_os(exc, p) from None
    first = head[:head.find(b"\n") + 1] if b"\n" in head else head
    if p.suffix == ".gz":
        # Checked here, before anything is read or stored, so the file is named; an empty file
        # is an empty log to gzip too.
        if first and not first.startswith(GZIP_MAGIC):
            raise InputError(p, "cannot be read: not gzip-compressed, though its name ends in .gz")
        if first and predictions.format_of(_gunzipped_head(p)):
            # Predictions are read whole, as one content: a compressed one (a rotated file, say)
            # read as a log would quarantine every row.
            raise InputError(p, "a gzip-compressed predictions file: decompress it (gzip -d) to ingest it")
        return "events"
    if p.suffix.lower() == ".parquet" and not first.startswith(predictions.PARQUET_MAGIC):
        raise InputError(p, "cannot be read: not Parquet, though its name ends in .parquet")
    if predictions.format_of(head):  # a predictions CSV or JSON Lines by its first line, or Parquet
        return "predictions"
    if first.startswith(UTF16_BOMS) or b"\0" in first:
        # UTF-16 (Excel's "Unicode text", Windows PowerShell's default): an ASCII header with
        # NULs between its letters. Telling the user the header is wrong would send them astray.
        plain = _header(first.removeprefix(codecs.BOM_UTF16_LE).removeprefix(codecs.BOM_UTF16_BE)
                        .replace(b"\0", b""))
        if p.suffix.lower() == ".csv" or _table_kind(plain):
            raise InputError(p, "not UTF-8: it looks like UTF-16 (save it as UTF-8)", line=1)
        return "events"  # another binary file: as before, a log (in a directory, kept only if named like one)
    table = _table_kind(_header(first))
    if table:
        return table
    if p.suffix.lower() == ".csv":  # a CSV named so but with another header is a mistake, not a log
        raise InputError(p, f"expected the header {','.join(USERS_HEADER)} or {','.join(MOVIES_HEADER)} "
                            "(then any attribute columns)", line=1)
    return "events"


def directory_files(path: str | Path) -> list[tuple[str, Path]]:
    """The files of a stream-world directory in ingest order: users, movies, event logs, then
    predictions files."""
    order = {"users": 0, "movies": 1, "events": 2, "predictions": 3}
    found = []
    for p in sorted(Path(path).iterdir()):
        if p.is_file() and not p.name.startswith("."):
            found_kind = kind(p)
            if found_kind == "events" and not p.name.endswith(EVENT_LOG_SUFFIXES):
                continue  # READMEs, checksums and the like are not logs
            found.append((found_kind, p))
    return sorted(found, key=lambda kp: (order[kp[0]], str(kp[1])))
