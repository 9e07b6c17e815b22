"""Persistence for dicom-node: the database and the DICOM file spool.

Knows nothing of DICOM networking.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
