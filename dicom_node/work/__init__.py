"""Work: a job's series through its pipeline, and the result objects written.

* :mod:`~dicom_node.work.series_run` -- one series through one pipeline (read,
  check, run, write), shared by the worker and ``analyze``;
* :mod:`~dicom_node.work.worker` -- the job function and the embedded pool
  of worker threads (the ``local`` executor);
* :mod:`~dicom_node.work.executor` -- the executor interface and registry;
  :mod:`~dicom_node.work.celery_executor` and :mod:`~dicom_node.work.celery_app`
  -- the ``celery`` executor: due jobs published to a broker for
  ``dicom-node worker`` processes;
* :mod:`~dicom_node.work.analyze` -- ``dicom-node analyze``: files in, result
  files out, no network and no database.
"""
