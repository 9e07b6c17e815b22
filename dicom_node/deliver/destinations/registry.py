"""The registered destination types, by their ``type`` in ``[[destinations]]``.

:data:`BUILT_IN_TYPES` lists the built-in ones, one line each.  The
configuration validates each ``[[destinations]]`` table with the settings
model of its type (:func:`destination_type`), and the sender builds the
destination that sends to it (:func:`open_destination`).
"""

from __future__ import annotations

import re
from typing import Any

from dicom_node.config import DestinationSettings
from dicom_node.deliver.destinations.base import Destination, DestinationType
from dicom_node.deliver.destinations.dicom import DicomDestination
from dicom_node.deliver.destinations.folder import FolderDestination

__all__ = [
    "BUILT_IN_TYPES",
    "destination_type",
    "destination_types",
    "open_destination",
    "register_destination_type",
    "unregister_destination_type",
]

#: The built-in destination types: one line per type.
BUILT_IN_TYPES: tuple[DestinationType, ...] = (
    DicomDestination,
    FolderDestination,
)

_TYPE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")

_TYPES: dict[str, DestinationType] = {}


def register_destination_type(cls: DestinationType) -> DestinationType:
    """Add a destination type; returns it (so it can decorate the class).

    Raises
    ------
    ValueError
        For a malformed or already registered ``type``, or a settings model
        that is not a :class:`~dicom_node.config.DestinationSettings`.
    """
    name = cls.type_name
    if not isinstance(name, str) or not _TYPE_RE.match(name):
        raise ValueError(f"destination type {name!r}: use lower-case letters, digits, - or _")
    if name in _TYPES:
        raise ValueError(f"destination type {name!r} is already registered")
    if not (
        isinstance(cls.settings_model, type) and issubclass(cls.settings_model, DestinationSettings)
    ):
        raise ValueError(f"destination type {name!r}: settings_model is no DestinationSettings")
    _TYPES[name] = cls
    return cls


def unregister_destination_type(name: str) -> DestinationType:
    """Remove a registered destination type; returns it (``KeyError`` if unknown)."""
    return _TYPES.pop(name)


def destination_types() -> tuple[str, ...]:
    """The registered ``type`` values."""
    return tuple(_TYPES)


def destination_type(name: Any) -> DestinationType:
    """The registered type called ``name``.

    Raises
    ------
    ValueError
        For an unknown type, listing the known ones.
    """
    if isinstance(name, str) and name in _TYPES:
        return _TYPES[name]
    raise ValueError(f"unknown destination type {name!r}; choose from {', '.join(_TYPES)}")


def open_destination(settings: DestinationSettings, *, calling_ae: str) -> Destination:
    """The destination that sends to ``settings``, calling as ``calling_ae`` where
    its protocol has a caller (DICOM's Calling AE Title)."""
    return destination_type(settings.type)(settings, calling_ae=calling_ae)


for _cls in BUILT_IN_TYPES:
    register_destination_type(_cls)
