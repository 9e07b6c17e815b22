"""Helpers for tests that run real peers (the node as a subprocess, DCMTK, Orthanc)."""
