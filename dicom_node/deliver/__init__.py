"""Deliver: result objects to their destinations, retried until they arrive.

* :mod:`~dicom_node.deliver.sender` -- :class:`Sender` (claims due
  deliveries) and :func:`deliver_batch`;
* :mod:`~dicom_node.deliver.destinations` -- one module per destination
  ``type`` and their registry;
* :mod:`~dicom_node.deliver.scu` -- the DICOM SCU (C-STORE, C-ECHO) the
  ``dicom`` destination and the CLI use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dicom_node.deliver.sender import Sender, deliver_batch, folder_file, is_permanent_failure

__all__ = ["Sender", "deliver_batch", "folder_file", "is_permanent_failure"]


def __getattr__(name: str) -> Any:
    """The sender's names, imported when first used (the CLI's ``echo`` needs only
    :mod:`~dicom_node.deliver.scu`, not the sender with the database and the writers)."""
    if name in __all__:
        from dicom_node.deliver import sender

        return getattr(sender, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
