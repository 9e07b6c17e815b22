"""The shape of a result kind: a :class:`ResultWriter` and what it is given.

A result kind (``"seg"``, ``"sr"``, ``"gsps"``, ``"sc"``, ...) is one object
that says which SOP Class it writes (PS3.4 Annex B), the default Series
Number of its series, whether it has anything to show for a pipeline result
(:meth:`ResultWriter.applies`) and writes the objects
(:meth:`ResultWriter.write`).  :func:`dicom_node.results.write_results` runs
the registered writers (:mod:`dicom_node.results.registry`) in their order,
each with one shared :class:`WriteContext`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from pydicom.dataset import Dataset

from dicom_node.results.common import OutputUIDs, derive_uid, revision_parts, seeded_uids

if TYPE_CHECKING:
    from ai_models.types import PipelineResult
    from dicom_node.results.sr import PreviousVersion

__all__ = ["ResultWriter", "WriteContext"]


@dataclass
class WriteContext:
    """What :func:`~dicom_node.results.write_results` hands every writer of one result.

    Parameters
    ----------
    uids:
        Per kind, the UIDs and numbers fixed by the caller.
    uid_seed:
        The job's seed; every UID the caller leaves open is derived from it
        (:meth:`uids_for`, :meth:`derived_uid`).  ``None``: random UIDs.
    revision:
        0 for a first result, N > 0 for the Nth revision.
    predecessors:
        The SR(s) this result supersedes.
    negative_report:
        Whether the SR kind writes a negative report for a result with
        nothing to report.
    sc_slices:
        ``"mask"`` or ``"all"``: which slices the SC overlay renders.
    written:
        What the writers before this one wrote, by kind (the SR references
        the SEG's segments).
    """

    uids: Mapping[str, OutputUIDs] = field(default_factory=dict)
    uid_seed: str | None = None
    revision: int = 0
    predecessors: Sequence[PreviousVersion] = ()
    negative_report: bool = True
    sc_slices: str = "mask"
    written: dict[str, list[Dataset]] = field(default_factory=dict)

    def uids_for(self, kind: str, keys: Iterable[str] = ()) -> OutputUIDs:
        """The caller's UIDs of ``kind``, with those it leaves open derived from the seed.

        ``keys`` name the instances of a multi-instance series (e.g. SC images
        keyed by their source frame); see
        :func:`~dicom_node.results.common.seeded_uids`.  Without a seed the
        caller's UIDs are returned as they are (the builders generate the rest).
        """
        fixed = self.uids.get(kind) or OutputUIDs()
        if self.uid_seed is None:
            return fixed
        return seeded_uids(fixed, self.uid_seed, kind, frame_keys=keys, revision=self.revision)

    def derived_uid(self, kind: str, *parts: str) -> str | None:
        """``derive_uid(seed, kind, *parts)`` for this revision; ``None`` without a seed."""
        if self.uid_seed is None:
            return None
        return derive_uid(self.uid_seed, kind, *parts, *revision_parts(self.revision))


class ResultWriter(Protocol):
    """One result kind: its name, SOP Class, default Series Number and writer.

    Attributes
    ----------
    kind:
        The name in ``outputs`` (config, CLI) and in the stored results:
        lower case, e.g. ``"seg"``.
    sop_class_uid:
        The SOP Class UID of the objects it writes (PS3.4 Annex B); unique
        among the registered kinds, since a written object's kind is found by
        its SOP Class.
    series_number:
        Series Number (0020,0011) of its series when the caller fixes none.
    """

    kind: str
    sop_class_uid: str
    series_number: int

    def applies(self, result: PipelineResult, context: WriteContext) -> bool:
        """Whether the result has anything this kind shows; logs why not (INFO)."""
        ...

    def write(self, result: PipelineResult, context: WriteContext) -> list[Dataset]:
        """The objects of this kind for ``result`` (may be empty)."""
        ...
