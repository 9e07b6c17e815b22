"""dicom-node: a DICOM node that runs AI pipelines on received series.

The network edge (SCP/SCU), orchestration and admin surfaces.  Imports go one
way only: ``dicom_node`` -> ``ai_models`` and ``dicom_node`` -> ``storage``.
"""

import logging

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
