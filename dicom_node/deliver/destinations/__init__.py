"""Destinations: where result objects go, one module per ``type``.

* :mod:`~dicom_node.deliver.destinations.dicom` -- ``type = "dicom"``: C-STORE to a
  DICOM peer (PS3.4 B.2), C-ECHO to check it (PS3.4 A.4);
* :mod:`~dicom_node.deliver.destinations.folder` -- ``type = "folder"``: one file
  per object under ``<path>/<StudyUID>/<SeriesUID>/``.

A type is a :class:`~dicom_node.deliver.destinations.base.Destination` class with
its settings model, registered in :mod:`dicom_node.deliver.destinations.registry`;
a new type is one module and one line there.
"""

from __future__ import annotations

from dicom_node.deliver.destinations.base import Destination, DestinationType, Outgoing
from dicom_node.deliver.destinations.registry import (
    destination_type,
    destination_types,
    open_destination,
    register_destination_type,
    unregister_destination_type,
)

__all__ = [
    "Destination",
    "DestinationType",
    "Outgoing",
    "destination_type",
    "destination_types",
    "open_destination",
    "register_destination_type",
    "unregister_destination_type",
]
