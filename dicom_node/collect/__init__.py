"""Collect and route: when a series (or study) is whole, and which jobs it makes.

* :mod:`~dicom_node.collect.collector` -- :class:`Collector`: quiet periods,
  completions and revisions, jobs queued (the SQL is in :mod:`storage.completions`);
* :mod:`~dicom_node.collect.routing` -- the routing rules' match language.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicom_node.collect.collector import Collector, CompletionReport, series_attributes

__all__ = ["Collector", "CompletionReport", "series_attributes"]


def __getattr__(name: str) -> Any:
    """The collector's names, imported when first used (validating ``[[rules]]``
    needs only :mod:`~dicom_node.collect.routing`, not the database layer)."""
    if name in __all__:
        from dicom_node.collect import collector

        return getattr(collector, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
