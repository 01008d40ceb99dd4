"""Update bundles without a relay: the newest `*.raucb` in the update folders (the boot
partition, a USB stick) not dealt with before. A stick may hold anything, so the listing and
the hashing are bounded.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Sequence
from pathlib import Path

from pits_appliance.update_download import sha256_file

MAX_LOCAL_LISTED = 1000  # names looked at in one update folder (a stick may hold anything)
MAX_LOCAL_CHECKED = 8  # newest local bundles hashed in one scan (each is hundreds of MB)

ShaCache = dict[tuple[str, int, float], str]


def listed(folders: Sequence[Path]) -> list[tuple[float, Path, int]]:
    """(mtime, path, size) of the `*.raucb` files in the folders, at most MAX_LOCAL_LISTED
    names looked at in each; a folder that cannot be read is skipped."""
    found: list[tuple[float, Path, int]] = []
    for folder in folders:
        try:
            for path in itertools.islice(folder.glob("*.raucb"), MAX_LOCAL_LISTED):
                st = path.stat()
                if path.is_file():
                    found.append((st.st_mtime, path, st.st_size))
        except OSError:
            continue
    return found


async def newest_unhandled(
    folders: Sequence[Path], handled: list[str], cache: ShaCache
) -> Path | None:
    """The newest bundle whose sha256 is not in `handled`; it and the older ones beside it
    are added to `handled` (an older one it supersedes is never installed after it)."""
    chosen: Path | None = None
    for mtime, path, size in sorted(listed(folders), reverse=True)[:MAX_LOCAL_CHECKED]:
        key = (str(path), size, mtime)
        try:
            cached = cache.get(key)
            sha = cached if cached else await asyncio.to_thread(sha256_file, path)
        except OSError:
            continue
        cache[key] = sha
        if sha not in handled:
            handled.append(sha)
            chosen = chosen or path
    return chosen
