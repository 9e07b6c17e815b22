"""The AI side of dicom-node: series -> volume -> pipeline -> findings.

This package knows nothing of networking or persistence: it never imports
pynetdicom or SQLAlchemy.  The network edge (:mod:`dicom_node`) calls into it.
"""

import logging

logging.getLogger(__name__).addHandler(logging.NullHandler())
