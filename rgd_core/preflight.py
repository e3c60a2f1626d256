"""Checks made before any expensive work: numbers, output targets, free space.

A typo in ``--out`` or ``--lr`` must cost a second, not the hour a real model spends loading, sampling its data and
training. Every function here raises ``RGDInputError`` with one line that names the flag (or file) and says what
to do; none of them loads a model.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Mapping

from rgd_core.errors import RGDInputError

# atomic_write_bytes writes ".<name>.<8 random chars>.tmp" beside the target: the longest name on disk.
TEMP_NAME_EXTRA = len("..") + 8 + len(".tmp")
# Room left on the disk beyond the estimate (file-system metadata, caches written on the way).
FREE_SPACE_MARGIN = 64 * 2**20


def check_number(flag: str, value, *, minimum: float | None = None, above: float | None = None,
                 integer: bool = False, allow_inf: bool = False) -> None:
    """``value`` must be a (finite) number, an integer when ``integer``, ``>= minimum`` and ``> above``.

    The message names the flag and the value, so three bad numbers give three different lines.
    """
    kind = "a whole number" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise RGDInputError(f"{flag} must be {kind}, not {value!r}.")
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise RGDInputError(f"{flag} must be a finite number, not {value}.")
    if minimum is not None and value < minimum:
        raise RGDInputError(f"{flag} must be at least {minimum:g}, not {value:g}.")
    if above is not None and value <= above:
        raise RGDInputError(f"{flag} must be greater than {above:g}, not {value:g}.")


def option_flag(name: str) -> str:
    """The command-line spelling of a setting, for messages: ``retain_weight`` -> ``--retain-weight``."""
    return "--" + name.replace("_", "-")


def check_numbers(values: Mapping[str, object], ranges: Mapping[str, tuple[float | None, float | None]],
                  integers: Iterable[str] = (), infinite: Iterable[str] = ("truncation_threshold",)) -> None:
    """``check_number`` for every ``name: (minimum, strictly above)`` of ``ranges`` whose value is not None, the
    message naming the option (``option_flag``); ``integers`` must be whole, only ``infinite`` may be inf."""
    integers, infinite = set(integers), set(infinite)
    for name, (minimum, above) in ranges.items():
        if values[name] is not None:
            check_number(option_flag(name), values[name], minimum=minimum, above=above, integer=name in integers,
                         allow_inf=name in infinite)


def name_max(folder: Path) -> int:
    """The longest file name (in bytes) the file system of ``folder`` (or its nearest existing parent) takes."""
    try:
        return os.pathconf(existing_parent(folder), "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):  # no pathconf (Windows) or an exotic file system
        return 255


def existing_parent(path: Path) -> Path:
    path = Path(os.path.abspath(path))
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


def check_output_folder(folder: str | Path, flag: str = "--out") -> Path:
    """``folder`` is a folder that takes new files, or can be created where a file can be written; returns it.

    Nothing is left behind: a missing folder is not created here (the first output creates it), the probe file
    is deleted at once.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise RGDInputError(f"{flag} {folder} is a file, not a folder; choose a folder for the outputs.")
    parent = existing_parent(folder)
    if not parent.is_dir():
        raise RGDInputError(f"{flag} {folder}: {parent} is a file, so the folder cannot be created.")
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as error:
        raise RGDInputError(f"{flag} {folder} cannot be written ({error.strerror or error}); choose a folder "
                            "you can write to.") from None
    return folder


def check_output_names(folder: Path, names: Iterable[str], flag: str = "--name") -> None:
    """Every output name (and its temporary twin) fits the file system's name limit."""
    limit = name_max(folder)
    for name in names:
        if len(name.encode("utf-8")) + TEMP_NAME_EXTRA > limit:
            raise RGDInputError(f"output name {name[:40]}... is {len(name.encode('utf-8'))} bytes, more than this "
                                f"file system takes ({limit - TEMP_NAME_EXTRA}); choose a shorter {flag}.")


def check_not_existing(paths: Iterable[Path], overwrite: bool) -> None:
    """Refuse to replace an existing result unless the user asked for it with ``--overwrite``."""
    if overwrite:
        return
    for path in paths:
        if path.exists() or path.is_symlink():
            raise RGDInputError(f"{path} already exists; pass --overwrite to replace it, or choose another "
                                "--name or --out.")


def check_free_space(folder: Path, needed_bytes: int, what: str) -> None:
    """The disk holding ``folder`` has room for ``needed_bytes`` (the outputs, written whole before renaming)."""
    free = shutil.disk_usage(existing_parent(folder)).free
    if free < needed_bytes + FREE_SPACE_MARGIN:
        raise RGDInputError(f"{what} needs about {_gib(needed_bytes)} in {folder} but only {_gib(free)} is free; "
                            "free some space or choose another --out.")


def _gib(count: int) -> str:
    return f"{count / 2**30:.2f} GiB" if count >= 2**28 else f"{count / 2**20:.0f} MiB"
