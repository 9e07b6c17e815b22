"""The shape of a destination type: a :class:`Destination` and what it is given.

A destination type (``dicom``, ``folder``, ...) is a settings model (a
subclass of :class:`dicom_node.config.DestinationSettings` whose ``type`` is
a literal) and a class that, built from those settings, sends a batch of
result objects (:meth:`Destination.send`) and checks that it can be reached
(:meth:`Destination.echo`).  :mod:`dicom_node.deliver.destinations.registry` lists
the types; ``[[destinations]]`` tables are validated by the model their
``type`` names and :func:`dicom_node.deliver.deliver_batch` sends through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from dicom_node.config import DestinationSettings
    from storage.jobs import DeliveryOutcome

__all__ = ["Destination", "DestinationType", "DeliveryOutcome", "Outgoing"]


@dataclass(frozen=True)
class Outgoing:
    """One result object to send: its delivery, its DICOM file, what it is."""

    delivery_id: int
    path: Path
    sop_instance_uid: str
    kind: str
    sop_class_uid: str = ""
    """Known from the result row; empty when the sender must read it from the file."""


class Destination(Protocol):
    """A configured destination, ready to send.

    :meth:`send` returns one :class:`~storage.jobs.DeliveryOutcome` per object,
    in order: ``sent``, or not with ``retry`` saying whether a later attempt
    may succeed, ``error`` saying why in words and ``status`` the status code
    the destination answered with, if it has one (a DIMSE status, PS3.7
    Annex C, for ``dicom``; 0x0000 for a file written).  It never raises for
    a failed object or an unreachable destination: that is an outcome.
    """

    def send(self, objects: Sequence[Outgoing]) -> list[DeliveryOutcome]:
        """Send a batch of objects (all to this destination)."""
        ...

    def echo(self) -> float:
        """Check that the destination can take objects; the round trip in seconds.

        Raises
        ------
        dicom_node.errors.DicomNodeError
            (a :class:`~dicom_node.errors.DeliveryError` or subclass) when it cannot.
        """
        ...


class DestinationType(Protocol):
    """A destination class as the registry holds it.

    Attributes
    ----------
    type_name:
        The ``type`` value of its ``[[destinations]]`` tables.
    settings_model:
        The pydantic model of those tables (its ``type`` a ``Literal``).
    """

    @property
    def type_name(self) -> str: ...

    @property
    def settings_model(self) -> type[DestinationSettings]: ...

    def __call__(self, settings: Any, *, calling_ae: str) -> Destination:
        """Build the destination from its settings and the node's AE title."""
        ...


def __getattr__(name: str) -> Any:
    """``DeliveryOutcome``, re-exported from :mod:`storage.jobs` when first asked for
    (importing this module does not import SQLAlchemy)."""
    if name == "DeliveryOutcome":
        from storage.jobs import DeliveryOutcome

        return DeliveryOutcome
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
