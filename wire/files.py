"""The one file writer both programs use: atomic, private, durable.

Both ends keep secrets in small files (the relay its key set, revocation list and renewal
ledger; the box its token and the one before). Each is replaced whole: written to a temporary
file in the same folder, readable by its owner only from the start, synced, renamed over the
old one, and the folder synced, so that a power cut leaves the old content or the new, never
half, and never a moment where another user could read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, text: str) -> None:
    """Replace `path` with `text` (UTF-8, mode 0600), atomically and durably."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)  # the rename itself survives a power cut
    finally:
        os.close(folder)
