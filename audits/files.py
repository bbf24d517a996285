"""Files that readers may open while they are written (pages served during the report job,
results.json read by the dashboard): each is replaced whole, never rewritten in place."""

from __future__ import annotations

import os
import uuid
from pathlib import Path


def write_atomic(path: str | Path, content: str | bytes) -> Path:
    """Write a file so that a reader sees the old content or the new, whole, never a part: the
    content goes to a temporary file in the same directory (a rename within one file system
    is atomic), which then replaces `path` (os.replace). The temporary name is unique, so two
    writers of one file never share it; it is created like any new file (mode 0666 less the
    umask: tempfile's 0600 would hide the pages from a web server running as another user)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with open(temporary, "xb") as f:
            f.write(content.encode("utf-8") if isinstance(content, str) else content)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path
