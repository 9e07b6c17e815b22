"""Collect and route: when a series (or study) is whole, and which jobs it makes.

* :mod:`~dicom_node.collect.collector` -- :class:`Collector`: quiet periods,
  completions and revisions, jobs queued (the SQL is in :mod:`storage.completions`);
* :mod:`~dicom_node.collect.routing` -- the routing rules' match language.
"""

from dicom_node.collect.collector import Collector, CompletionReport, series_attributes

__all__ = ["Collector", "CompletionReport", "series_attributes"]
