"""The DICOM network protocol as the receiver speaks it, written by hand.

* :mod:`~dicom_node.protocol.upper_layer` -- PDUs of the DICOM Upper Layer
  (PS3.8 9.3): reading them within limits and deadlines, encoding replies;
* :mod:`~dicom_node.protocol.dimse_command` -- DIMSE command sets (PS3.7 9.3,
  E.1): C-ECHO and C-STORE requests decoded, responses encoded;
* :mod:`~dicom_node.protocol.file_meta` -- the File Meta Information the
  receiver writes in front of each data set (PS3.10 7.1);
* :mod:`~dicom_node.protocol.status` -- the DIMSE statuses the node answers
  (PS3.4 B.2.3, PS3.7 Annex C).
"""
