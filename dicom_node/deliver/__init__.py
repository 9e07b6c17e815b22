"""Deliver: result objects to their destinations, retried until they arrive.

* :mod:`~dicom_node.deliver.sender` -- :class:`Sender` (claims due
  deliveries) and :func:`deliver_batch`;
* :mod:`~dicom_node.deliver.destinations` -- one module per destination
  ``type`` and their registry;
* :mod:`~dicom_node.deliver.scu` -- the DICOM SCU (C-STORE, C-ECHO) the
  ``dicom`` destination and the CLI use.
"""

from dicom_node.deliver.sender import Sender, deliver_batch, folder_file, is_permanent_failure

__all__ = ["Sender", "deliver_batch", "folder_file", "is_permanent_failure"]
