"""Facts every layer shares, defined once: the megabyte, memory sizes, devices, model names.

Pure standard library and rank 0: any module may import it, it imports nothing of ours.
"""

from __future__ import annotations

import math
import re
from typing import Literal, get_args

__all__ = [
    "DEVICES",
    "MB",
    "MODEL_NAME_RULE",
    "Device",
    "check_device",
    "check_model_name",
    "parse_size_mb",
]

#: Bytes in a megabyte. Every ``*_mb`` figure in ModelMora is binary (MiB), as ``ps`` and
#: ``free -m`` show them.
MB = 2**20

#: Where a model runs: ``auto`` (a GPU when one is visible), ``cpu`` or ``cuda``.
Device = Literal["auto", "cpu", "cuda"]
#: The devices, as a tuple (for messages and checks).
DEVICES: tuple[str, ...] = get_args(Device)

#: What a model name may be, in words (the server's registry and every request's ``model``).
MODEL_NAME_RULE = "1-128 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"
_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")

# A number (``4``, ``1.5``, ``.5``), then an optional unit: b, k/kb/kib, m/mb/mib, g..., t...
_SIZE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(?:([kmgt])i?b?|(b))?\s*", re.IGNORECASE)
_UNIT_MB = {"k": 1 / 1024, "m": 1.0, "g": 1024.0, "t": 1024.0**2}
_SIZE_FORMS = "a number of MB or one with a unit (512M, 4G, 1.5GiB, .5G, 100MB)"


def parse_size_mb(value: str | float) -> float:
    """Parse a memory size into megabytes.

    Units are binary whichever way they are written (``4G``, ``4GB`` and ``4GiB`` are all
    4096 MB); ``B`` is bytes; a bare number is megabytes.

    Args:
        value: a number of MB, or text such as ``"512M"``, ``"4GB"``, ``"1.5GiB"``, ``".5G"``.

    Returns:
        The size in MB (positive and finite).

    Raises:
        ValueError: not a size, or not a positive one (the message shows the accepted forms).
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"bad memory size {value!r}: use {_SIZE_FORMS}")
    if isinstance(value, str):
        match = _SIZE.fullmatch(value)
        if match is None:
            raise ValueError(f"bad memory size {value!r}: use {_SIZE_FORMS}")
        number, unit, is_bytes = match.groups()
        if unit:
            mb = float(number) * _UNIT_MB[unit.lower()]
        else:
            mb = float(number) / MB if is_bytes else float(number)
    else:
        mb = float(value)
    if not math.isfinite(mb) or mb <= 0:
        raise ValueError(f"bad memory size {value!r}: it must be positive")
    return mb


def check_device(device: str) -> str:
    """``device`` if it is one of :data:`DEVICES`.

    Raises:
        ValueError: any other value (the message names the valid ones).
    """
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}: use one of {', '.join(DEVICES)}")
    return device


def check_model_name(name: str, what: str = "model") -> str:
    """``name`` if it follows :data:`MODEL_NAME_RULE`.

    Args:
        name: the name to check.
        what: what is named, for the message (``model``, ``job``...).

    Raises:
        ValueError: the name breaks the rule (the message states it).
    """
    if not isinstance(name, str) or _MODEL_NAME.fullmatch(name) is None:
        raise ValueError(f"bad {what} name {name!r}: a {what} name is {MODEL_NAME_RULE}")
    return name
