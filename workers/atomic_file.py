"""Writing a file so that a reader sees the old file or the whole new one, never half of it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def write_atomically(target: Path, write: Callable[[BinaryIO], object]) -> Path:
    """Call ``write(binary file)`` on a temporary file beside ``target``, then rename it over
    ``target`` (readable by all, as a file written plainly would be); a failure, Ctrl-C
    included, leaves no temporary file. The temporary file's name stays short: the target's own
    name may be near the file system's limit."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:100]}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target
