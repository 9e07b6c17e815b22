"""The exception tree of dicom-node.

::

    DicomNodeError
    ├── ConfigError          config.toml or environment is invalid
    ├── StoreRejected        a received instance is refused; carries the DIMSE status
    └── DeliveryError        sending to a destination failed
        └── AssociationRejectedError

Foreign exceptions (pydicom, pynetdicom, SQLAlchemy, OS errors) are translated
at the boundary with ``raise ... from``.
"""

from __future__ import annotations


class DicomNodeError(Exception):
    """Base class of the errors raised by :mod:`dicom_node`."""


class ConfigError(DicomNodeError):
    """The configuration is invalid; the message names each offending key."""


class StoreRejected(DicomNodeError):
    """A C-STORE request is refused with a DIMSE failure status.

    Parameters
    ----------
    status:
        The PS3.4 Annex B.2.3 status to answer (see :mod:`dicom_node.protocol.status`).
    reason:
        A sentence for the log and the response's Error Comment (0000,0902).
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class DeliveryError(DicomNodeError):
    """Sending objects to a destination failed."""


class AssociationRejectedError(DeliveryError):
    """The destination rejected or aborted the association."""


class SpoolFileMissing(DicomNodeError):
    """A job's source files are not visible on the host that runs it.

    Workers on other hosts read the series from the spool folder: it must be
    the same shared volume everywhere (``[storage] spool_dir``).
    """
