"""Find DICOM image files and group them by series.

DICOM files are recognised by their content, never by their name: a Part 10
file carries the 128-byte preamble followed by ``DICM`` (PS3.10 Section 7.1).
Files without a preamble are accepted when pydicom can read them and they hold
the identifying UIDs of an image (SOP Class, SOP Instance and Series Instance
UID).  Objects that cannot become a volume -- no Pixel Data, a DICOMDIR /
Media Storage Directory, SR, SEG, RT objects, waveforms, presentation states
-- are skipped with a logged reason.

Public functions
----------------
:func:`scan_paths`
    Walk files and folders; return the image files and the skipped ones.
:func:`discover_series`
    The image files grouped by SeriesInstanceUID.
:func:`read_image_datasets`
    The image files under a folder, read in full (for loading pixels).
"""

from __future__ import annotations

import logging
import os
import pathlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

__all__ = [
    "NON_IMAGE_SOP_CLASSES",
    "DicomFile",
    "SkippedFile",
    "discover_series",
    "is_dicom_file",
    "non_image_sop_class",
    "one_line",
    "read_image_datasets",
    "scan_paths",
]

logger = logging.getLogger(__name__)

#: The logger pydicom's pixel decoders write each failing plugin's traceback to.
_PYDICOM_DECODERS = "pydicom.pixels.decoders.base"


class _DecoderTracebacks(logging.Filter):
    """Keeps pydicom's per-plugin decoder tracebacks out of the logs above DEBUG.

    pydicom logs every plugin that fails to decode a frame at ERROR with its
    traceback (``LOGGER.exception``), then raises one exception that names each
    plugin's failure.  The readers here turn that exception into a
    :class:`~ai_models.errors.VolumeError` and log one line with the reason, so
    the tracebacks are re-logged at DEBUG under this module's logger.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info is None or record.levelno <= logging.DEBUG:
            return True
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "pixel decoder plugin failed: %s",
                one_line(record.getMessage()),
                exc_info=record.exc_info,
            )
        return False


def _install_decoder_filter() -> None:
    target = logging.getLogger(_PYDICOM_DECODERS)
    if not any(isinstance(f, _DecoderTracebacks) for f in target.filters):
        target.addFilter(_DecoderTracebacks())


def one_line(text: object, limit: int = 500) -> str:
    """``text`` on one line (newlines and runs of blanks folded), at most ``limit`` chars."""
    out = " ".join(str(text).split())
    return out if len(out) <= limit else out[: limit - 3] + "..."


_install_decoder_filter()

#: SOP classes that carry no image a pipeline could run on, by UID.  Objects
#: of these classes are skipped even when they hold Pixel Data (SEG, RT Dose).
NON_IMAGE_SOP_CLASSES: dict[str, str] = {
    "1.2.840.10008.1.3.10": "Media Storage Directory (DICOMDIR)",
    "1.2.840.10008.5.1.4.1.1.66": "Raw Data",
    "1.2.840.10008.5.1.4.1.1.66.1": "Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.2": "Spatial Fiducials",
    "1.2.840.10008.5.1.4.1.1.66.3": "Deformable Spatial Registration",
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.5": "Surface Segmentation",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
    "1.2.840.10008.5.1.4.1.1.67": "Real World Value Mapping",
    "1.2.840.10008.5.1.4.1.1.104.1": "Encapsulated PDF",
    "1.2.840.10008.5.1.4.1.1.104.2": "Encapsulated CDA",
    "1.2.840.10008.5.1.4.1.1.481.1": "RT Image",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
    "1.2.840.10008.5.1.4.1.1.481.3": "RT Structure Set",
    "1.2.840.10008.5.1.4.1.1.481.5": "RT Plan",
}

#: SOP class UID prefixes of non-image families: structured reports (88.x),
#: presentation states (11.x), waveforms (9.x), key object selection (88.59).
_NON_IMAGE_PREFIXES: dict[str, str] = {
    "1.2.840.10008.5.1.4.1.1.88.": "Structured Report",
    "1.2.840.10008.5.1.4.1.1.11.": "Presentation State",
    "1.2.840.10008.5.1.4.1.1.9.": "Waveform",
}

_PREAMBLE_LEN = 128


@dataclass(frozen=True)
class DicomFile:
    """One image file found on disk, with the identifiers read from its header."""

    path: pathlib.Path
    sop_instance_uid: str
    sop_class_uid: str
    series_instance_uid: str
    study_instance_uid: str
    modality: str
    number_of_frames: int | None
    """``None`` when the record was made from a database row, not the header."""
    transfer_syntax_uid: str


@dataclass(frozen=True)
class SkippedFile:
    """A file that was not taken, and why (for logs and dry runs)."""

    path: pathlib.Path
    reason: str


def is_dicom_file(path: str | os.PathLike[str]) -> bool:
    """Return True when ``path`` starts like a DICOM Part 10 file.

    Checks for ``DICM`` at byte offset 128 (PS3.10 Section 7.1).  Files
    without a preamble are not recognised here; :func:`scan_paths` tries to
    read those with pydicom as a fallback.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(_PREAMBLE_LEN + 4)
    except OSError:
        return False
    return len(head) == _PREAMBLE_LEN + 4 and head[_PREAMBLE_LEN:] == b"DICM"


def _iter_files(paths: Iterable[str | os.PathLike[str]]) -> Iterator[pathlib.Path]:
    for p in paths:
        path = pathlib.Path(p)
        if path.is_dir():
            for root, dirs, files in os.walk(path):
                dirs.sort()
                for name in sorted(files):
                    yield pathlib.Path(root) / name
        elif path.is_file():
            yield path
        else:
            logger.debug("not a file or folder: %s", path)


DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
MAX_INFLATED_BYTES = 1 << 30
"""Largest inflated data set read from a Deflated file (PS3.5 A.5): 1 GiB.

pydicom inflates a Deflated data set whole, in memory, before it parses a
single element; a file of a few MB can inflate to many GB (a decompression
bomb).  Such files are measured first, streaming, and refused above this."""


def deflate_bomb_reason(path: str | os.PathLike[str], limit: int | None = None) -> str:
    """Why a Deflated file must not be read ('' for any other file, or one within ``limit``).

    Streams the deflated data set (after the File Meta Information, PS3.10
    7.1) through :mod:`zlib` in bounded steps, so the measurement itself never
    holds more than a few MB.  ``limit`` defaults to :data:`MAX_INFLATED_BYTES`.
    """
    import zlib

    limit = MAX_INFLATED_BYTES if limit is None else limit

    from pydicom.filereader import _read_file_meta_info, read_preamble

    try:
        with open(path, "rb") as fp:
            read_preamble(fp, force=True)
            meta = _read_file_meta_info(fp)
            if str(meta.get("TransferSyntaxUID", "")) != DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
                return ""
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            total = 0
            while chunk := fp.read(1 << 20):
                data = inflater.decompress(chunk, 1 << 24)
                while True:
                    total += len(data)
                    if total > limit:
                        return (
                            f"Deflated data set inflates to over {limit >> 20} MiB "
                            "(a decompression bomb?): not read"
                        )
                    if not inflater.unconsumed_tail:
                        break
                    data = inflater.decompress(inflater.unconsumed_tail, 1 << 24)
    except (OSError, zlib.error, ValueError, EOFError, InvalidDicomError) as exc:
        return f"Deflated data set cannot be inflated ({type(exc).__name__})"
    except Exception:  # noqa: BLE001 - not a DICOM file meta: pydicom decides later
        return ""
    return ""


def non_image_sop_class(sop_class_uid: str) -> str | None:
    """The name of a non-image SOP class (SR, presentation state, waveform, RT
    plan, ...), or ``None`` when instances of it may be images."""
    if sop_class_uid in NON_IMAGE_SOP_CLASSES:
        return NON_IMAGE_SOP_CLASSES[sop_class_uid]
    for prefix, name in _NON_IMAGE_PREFIXES.items():
        if sop_class_uid.startswith(prefix):
            return name
    return None


def _non_image_reason(ds: Dataset) -> str | None:
    """Why ``ds`` cannot be an image input, or None when it can."""
    sop_class = str(ds.get("SOPClassUID", ""))
    name = non_image_sop_class(sop_class)
    if name is not None:
        return f"non-image SOP class {name} ({sop_class})"
    if "DirectoryRecordSequence" in ds:
        return "DICOMDIR (Media Storage Directory)"
    has_pixels = any(kw in ds for kw in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
    if not has_pixels:
        return "no Pixel Data"
    return None


def _read_header(path: pathlib.Path, *, full: bool = False) -> tuple[Dataset | None, str]:
    """Read a header (or, with ``full``, the whole file); ``(None, reason)`` if not DICOM."""
    preamble = is_dicom_file(path)
    bomb = deflate_bomb_reason(path) if preamble else ""
    if bomb:
        return None, bomb
    try:
        # defer_size keeps Pixel Data on disk but still tells us it is there.
        ds = pydicom.dcmread(path, defer_size=None if full else 1024, force=not preamble)
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError) as exc:
        return None, f"not readable as DICOM ({type(exc).__name__})"
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on junk
        return None, f"not readable as DICOM ({type(exc).__name__})"
    if not preamble:
        # Without a preamble pydicom reads anything; demand the identifying UIDs.
        try:
            if not all(ds.get(kw) for kw in ("SOPClassUID", "SOPInstanceUID")):
                return None, "no DICM preamble and no SOP Class/Instance UID"
        except Exception as exc:  # noqa: BLE001 - junk data decoded as elements
            return None, f"no DICM preamble and unreadable header ({type(exc).__name__})"
    return ds, ""


def _image_reason(ds: Dataset) -> str:
    """Why ``ds`` is not an image input ('' when it is one)."""
    try:
        reason = _non_image_reason(ds) or ""
        if not reason:
            missing = [
                kw
                for kw in ("SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns")
                if not ds.get(kw)
            ]
            if missing:
                reason = "missing " + ", ".join(missing)
    except Exception as exc:  # noqa: BLE001 - a broken element in the header
        reason = f"unreadable header ({type(exc).__name__}: {exc})"
    return reason


def _skip(path: pathlib.Path, reason: str) -> SkippedFile:
    logger.info("skipping a file: %s", reason)
    logger.debug("skipped %s: %s", path, reason)
    return SkippedFile(path, reason)


def read_image_datasets(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
) -> tuple[list[Dataset], list[SkippedFile]]:
    """Read every DICOM image file under ``paths`` in full (one read per file).

    The same selection as :func:`scan_paths`, for callers that need the
    pixels anyway (reading the header first and the file again costs twice).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    datasets: list[Dataset] = []
    skipped: list[SkippedFile] = []
    for path in _iter_files(paths):
        ds, reason = _read_header(path, full=True)
        if ds is not None:
            reason = _image_reason(ds)
        if reason or ds is None:
            skipped.append(_skip(path, reason))
        else:
            datasets.append(ds)
    return datasets, skipped


def scan_paths(
    paths: Iterable[str | os.PathLike[str]],
) -> tuple[list[DicomFile], list[SkippedFile]]:
    """Find the DICOM image files under ``paths``.

    Parameters
    ----------
    paths:
        Files and/or folders; folders are walked recursively (sorted, so the
        result is deterministic).

    Returns
    -------
    images, skipped:
        The image files with their identifiers, and every other file with the
        reason it was skipped (logged at INFO without the path; the path is
        logged at DEBUG only, as it may contain patient names).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    images: list[DicomFile] = []
    skipped: list[SkippedFile] = []
    for path in _iter_files(paths):
        ds, reason = _read_header(path)
        if ds is not None:
            reason = _image_reason(ds)
        if reason or ds is None:
            skipped.append(_skip(path, reason))
            continue
        try:
            n_frames = int(ds.get("NumberOfFrames") or 1)
        except (TypeError, ValueError):
            skipped.append(_skip(path, "invalid NumberOfFrames"))
            continue
        try:
            meta = getattr(ds, "file_meta", None)
            found = DicomFile(
                path=path,
                sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.get("SOPClassUID", "")),
                series_instance_uid=str(ds.SeriesInstanceUID),
                study_instance_uid=str(ds.get("StudyInstanceUID", "")),
                modality=str(ds.get("Modality", "")),
                number_of_frames=n_frames,
                transfer_syntax_uid=str(meta.get("TransferSyntaxUID", "")) if meta else "",
            )
        except Exception as exc:  # noqa: BLE001 - a broken element in the header
            skipped.append(_skip(path, f"unreadable header ({type(exc).__name__})"))
            continue
        images.append(found)
    logger.info("found %d image file(s), skipped %d file(s)", len(images), len(skipped))
    return images, skipped


def discover_series(
    paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str],
) -> dict[str, list[DicomFile]]:
    """Group the DICOM image files under ``paths`` by SeriesInstanceUID.

    Parameters
    ----------
    paths:
        One path or several; each a file or a folder (walked recursively).

    Returns
    -------
    dict
        SeriesInstanceUID -> the image files of that series, in path order.
        Non-image and non-DICOM files are left out (see :func:`scan_paths`).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    images, _ = scan_paths(paths)
    series: dict[str, list[DicomFile]] = {}
    for f in images:
        series.setdefault(f.series_instance_uid, []).append(f)
    return series
