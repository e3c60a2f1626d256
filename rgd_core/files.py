"""File output that never leaves a half-written file behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # torch loads in seconds; prompt files and reports should not wait for it
    from torch import Tensor


def atomic_write_bytes(data: bytes, path: str | Path) -> Path:
    """Write to a temporary file in the target folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the permissions open() would
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_safetensors_atomic(
    tensors: Mapping[str, "Tensor"], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    from safetensors.torch import save

    return atomic_write_bytes(save(dict(tensors), metadata=dict(metadata or {})), path)
