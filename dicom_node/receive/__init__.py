"""Receive: C-STORE in, durable files and rows out.

The first stage of the data flow (receive -> collect -> route -> job ->
worker -> pipeline -> results -> deliver):

* :mod:`~dicom_node.receive.scp` -- the Storage SCP: associations, limits,
  streaming each data set into the spool;
* :mod:`~dicom_node.receive.store_handler` -- :func:`handle_store`, where a
  received data set becomes durable data (and the status to answer);
* :mod:`~dicom_node.receive.header` -- the bounded header parse at receive;
* :mod:`~dicom_node.receive.uids` -- UID checks of PS3.5 9.1;
* :mod:`~dicom_node.receive.store` -- the database and spool opened from settings;
* :mod:`~dicom_node.receive.receivers` -- receiver processes sharing the port;
* :mod:`~dicom_node.receive.reconcile` -- the spool checked against the
  database at start.
"""
