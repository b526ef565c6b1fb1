"""One module per architecture family (see .base.Family): how its tensors are named, reshaped and
checked, and which metadata only it writes."""

from __future__ import annotations

from typing import cast

from ..architectures import Architecture
from . import hybrid, transformer
from .base import MTP_MODES, Family, MtpMode, Named, Source

FAMILIES: dict[str, Family] = {
    "transformer": cast(Family, transformer),
    "hybrid": cast(Family, hybrid),
}


def family_of(arch: Architecture) -> Family:
    return FAMILIES[arch.family]


__all__ = ["FAMILIES", "MTP_MODES", "Family", "MtpMode", "Named", "Source", "family_of"]
