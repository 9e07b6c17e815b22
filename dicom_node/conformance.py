"""The node's DICOM Conformance Statement, built from the code (PS3.2 Annex A layout).

:func:`build_statement` collects what the statement says from the code that
does it, and :func:`render_markdown` writes it as ``docs/conformance.md``:

* the Storage SCP's SOP classes and transfer syntaxes are the presentation
  contexts the receiver supports (:func:`dicom_node.receive.scp.supported_contexts`);
  the Deflated ones are those ``accept_deflated = false`` leaves out;
* what the A-ASSOCIATE-AC carries (maximum PDU length, Implementation Class
  UID and Version Name, the negotiation items answered) is read from an
  A-ASSOCIATE-AC that the receiver's own :func:`~dicom_node.protocol.upper_layer.accept_pdu`
  encodes for a request that proposes every item;
* A-ASSOCIATE-RJ reasons are the receiver's ``_RJ_*`` constants; C-STORE
  statuses are the constants of :mod:`dicom_node.protocol.status`, with their
  docstrings;
* the SCU's SOP classes are the registered result kinds
  (:func:`dicom_node.results.registry.writers`); its identification comes
  from the AE that :mod:`dicom_node.deliver.scu` builds, and its handling of
  each status from :func:`~dicom_node.deliver.destinations.dicom.is_permanent_failure`;
* configuration tables list the fields, defaults and docstrings of the
  pydantic models in :mod:`dicom_node.config`;
* the IOD annex, the character sets written, private attributes and the SR's
  coded terminology come from objects the registered writers make for a
  small synthetic CT series when the statement is built, checked against the
  IOD module tables that highdicom ships (from PS3.3).

``python -m dicom_node.conformance`` writes the file; ``--check`` exits 1 with
a diff when the file differs from what the code says now.
"""

from __future__ import annotations

import argparse
import ast
import difflib
import functools
import inspect
import json
import pkgutil
import re
import sys
import textwrap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Any

from pydantic import BaseModel

import dicom_node

__all__ = [
    "AssociateAnswer",
    "CStoreStatus",
    "ModuleUse",
    "RejectReason",
    "ResultKindInfo",
    "Statement",
    "WrittenObject",
    "build_statement",
    "main",
    "render_markdown",
]

DEFAULT_OUTPUT = Path("docs/conformance.md")

VERIFICATION = "1.2.840.10008.1.1"
"""The Verification SOP Class (PS3.4 Annex A)."""

_REFERENCE_SERIES = ("ASCII", "ISO_IR 100", "ISO_IR 192")
"""Specific Character Sets of the reference source series (ASCII: none declared)."""
_REFERENCE_NAMES = {
    "ASCII": "SAMPLE^PATIENT",
    "ISO_IR 100": "Øster^Åse",
    "ISO_IR 192": "山田^太郎",
}


# -- what the statement holds ---------------------------------------------------------


@dataclass(frozen=True)
class AssociateAnswer:
    """What the receiver's A-ASSOCIATE-AC says (PS3.7 D.3.3, PS3.8 9.3.3)."""

    application_context_name: str
    maximum_length: int
    implementation_class_uid: str
    implementation_version_name: str
    answered_items: tuple[str, ...]
    """The user information sub-items in the A-ASSOCIATE-AC."""
    unanswered_items: tuple[str, ...]
    """Sub-items the request proposed and the A-ASSOCIATE-AC does not answer."""
    rejected_extra_syntax: bool
    """Whether a context proposing only a transfer syntax not supported is refused."""


@dataclass(frozen=True)
class RejectReason:
    """One A-ASSOCIATE-RJ the receiver sends (PS3.8 9.3.4, Table 9-21)."""

    result: int
    source: int
    reason: int
    when: str


@dataclass(frozen=True)
class CStoreStatus:
    """One status of :mod:`dicom_node.protocol.status`."""

    code: int
    constant: str
    meaning: str
    when: str
    answered: bool
    """Whether the receiver's code answers it (some constant of the table may be unused)."""


@dataclass(frozen=True)
class ResultKindInfo:
    """A registered result kind: the SOP class its objects have."""

    kind: str
    sop_class_uid: str
    series_number: int


@dataclass(frozen=True)
class ModuleUse:
    """One module of an IOD (PS3.3) and whether the node's writer fills it."""

    ie: str
    module: str
    usage: str
    """M, C or U, as PS3.3 lists it for the IOD."""
    written: str
    """``"Yes"``, ``"Empty"`` (a module of Type 3 attributes only, none sent) or ``"No"``."""


@dataclass(frozen=True)
class WrittenObject:
    """What a result kind's writer made of the reference series."""

    kind: str
    sop_class_uid: str
    transfer_syntax_uid: str
    modality: str
    modules: tuple[ModuleUse, ...]
    """Modules written, and the mandatory ones whether written or not."""
    outside_iod: tuple[str, ...]
    """Attributes (outside the SR content tree) that no module of the IOD lists."""
    private_tags: tuple[str, ...]
    notice_attributes: tuple[str, ...]
    """Attributes whose value carries the "not for diagnosis" notice."""
    photometric_interpretation: str
    presentation_lut_shape: str
    character_sets: tuple[tuple[str, str], ...]
    """(reference series, Specific Character Set written) per reference series."""


@dataclass(frozen=True)
class CodeUse:
    """A coded concept in the SR the writer adds itself, and where it appears."""

    scheme: str
    value: str
    meaning: str
    uses: tuple[str, ...]


@dataclass(frozen=True)
class ConfigParameter:
    key: str
    default: str
    description: str


@dataclass(frozen=True)
class Statement:
    """Everything :func:`render_markdown` writes, as the code says it now."""

    version: str
    ae_title: str
    port: int
    host: str
    scp_sop_classes: tuple[str, ...]
    """Verification first, then every storage SOP class accepted."""
    scp_transfer_syntaxes: tuple[str, ...]
    deflated_syntaxes: tuple[str, ...]
    """The transfer syntaxes of :attr:`scp_transfer_syntaxes` that ``accept_deflated = false``
    refuses."""
    acceptor: AssociateAnswer
    rejections: tuple[tuple[str, RejectReason], ...]
    statuses: tuple[CStoreStatus, ...]
    other_command_status: int
    node_limits: dict[str, int | None]
    scu_implementation_class_uid: str
    scu_implementation_version_name: str
    scu_maximum_pdu: int
    scu_verification_syntaxes: tuple[str, ...]
    scu_max_contexts: int
    scu_status_handling: tuple[tuple[str, str], ...]
    result_kinds: tuple[ResultKindInfo, ...]
    written: tuple[WrittenObject, ...]
    sr_templates: tuple[str, ...]
    sr_codes: tuple[CodeUse, ...]
    pipeline_codes: tuple[tuple[str, str, str], ...]
    header_keywords: tuple[str, ...]
    audit_events: tuple[tuple[str, str, str, str], ...]
    tls_ciphers: tuple[str, ...]
    parameters: tuple[tuple[str, tuple[ConfigParameter, ...]], ...]
    destination_types: tuple[str, ...]

    @property
    def storage_sop_classes(self) -> tuple[str, ...]:
        return tuple(uid for uid in self.scp_sop_classes if uid != VERIFICATION)


# -- names ------------------------------------------------------------------------------


def uid_name(uid: str) -> str:
    """The name of a UID from pydicom's dictionary, else pynetdicom's keyword, else the UID."""
    from pydicom.uid import UID

    name = UID(uid).name
    if name and name != uid:
        return str(name)
    from pynetdicom import sop_class

    for keyword, value in getattr(sop_class, "_STORAGE_CLASSES", {}).items():
        if value == uid:
            return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", keyword)
    return uid


_GROUPS: tuple[tuple[str, Any], ...] = (
    ("Presentation states", lambda n: "Presentation State" in n),
    (
        "Structured reports and key object selection",
        lambda n: " SR " in f" {n} " or "Key Object" in n or "Procedure Log" in n,
    ),
    ("Waveforms", lambda n: "Waveform" in n),
    (
        "Radiotherapy",
        lambda n: n.startswith(("RT ", "C-Arm", "Robotic", "Tomotherapeutic")) or "Radiation" in n,
    ),
    (
        "Segmentations, registrations and other derived objects",
        lambda n: any(
            w in n
            for w in (
                "Segmentation",
                "Registration",
                "Fiducials",
                "Tractography",
                "Parametric Map",
                "Real World Value",
                "Surface",
                "Annotation",
            )
        ),
    ),  # fmt: skip
    ("Encapsulated documents", lambda n: n.startswith("Encapsulated")),
    ("Images", lambda n: "Image" in n or "Volume Storage" in n),
    ("Other", lambda n: True),
)


def storage_group(name: str) -> str:
    """The heading a storage SOP class is listed under (by its name)."""
    for group, test in _GROUPS:
        if test(name):
            return group
    return "Other"  # pragma: no cover - the last test takes everything


def _rst(text: str) -> str:
    """A docstring's reST markup as Markdown, on one line."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"`\1`", text)
    text = text.replace("``", "`")
    return " ".join(text.split())


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _attribute_docstrings(cls: type) -> dict[str, str]:
    """Docstrings under the class-level attributes of *cls* and its bases (PEP 257)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass in (object, BaseModel) or not klass.__module__.startswith("dicom_node"):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        docs.update(_docs_after_names(body))
    return docs


def _docs_after_names(body: Sequence[ast.stmt]) -> dict[str, str]:
    docs: dict[str, str] = {}
    for node, after in zip(body, list(body[1:]) + [None], strict=True):
        name = None
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            name = node.target.id
        elif isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            name = target.id if isinstance(target, ast.Name) else None
        if (
            name is not None
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[name] = _rst(after.value.value)
    return docs


# -- the receiver (Storage SCP) ----------------------------------------------------------


def _scp_contexts() -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """(SOP classes, transfer syntaxes, Deflated ones) of the receiver's contexts."""
    from dicom_node.receive.scp import supported_contexts

    contexts = supported_contexts(deflated=True)
    syntaxes = tuple(str(ts) for ts in contexts[0].transfer_syntax)
    for cx in contexts:
        if tuple(str(ts) for ts in cx.transfer_syntax) != syntaxes:
            raise RuntimeError(
                f"{cx.abstract_syntax}: transfer syntaxes differ from the other contexts'; "
                "the statement lists one table for all"
            )
    without = {str(ts) for ts in supported_contexts(deflated=False)[0].transfer_syntax}
    sop_classes = tuple(dict.fromkeys(str(cx.abstract_syntax) for cx in contexts))
    deflated = tuple(ts for ts in syntaxes if ts not in without)
    return sop_classes, syntaxes, deflated


def _acceptor_answer() -> AssociateAnswer:
    """Decode the A-ASSOCIATE-AC the receiver encodes for a request proposing every item."""
    from pydicom.uid import ExplicitVRLittleEndian, SegmentationStorage
    from pynetdicom.pdu import A_ASSOCIATE_AC, A_ASSOCIATE_RQ
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        AsynchronousOperationsWindowNegotiation,
        ImplementationClassUIDNotification,
        ImplementationVersionNameNotification,
        MaximumLengthNotification,
        SCP_SCU_RoleSelectionNegotiation,
        SOPClassCommonExtendedNegotiation,
        SOPClassExtendedNegotiation,
        UserIdentityNegotiation,
    )
    from pynetdicom.presentation import build_context

    from dicom_node.config import NodeSettings
    from dicom_node.protocol.upper_layer import (
        APPLICATION_CONTEXT_NAME,
        AssociationRequest,
        accept_pdu,
    )
    from dicom_node.receive.scp import supported_contexts

    node = NodeSettings()
    rq = A_ASSOCIATE()
    rq.application_context_name = APPLICATION_CONTEXT_NAME
    rq.calling_ae_title = "PROBE"
    rq.called_ae_title = node.ae_title
    seg = build_context(SegmentationStorage, [ExplicitVRLittleEndian])
    seg.context_id = 1
    private = build_context(SegmentationStorage, ["1.2.826.0.1.3680043.2.1143.1.99"])
    private.context_id = 3
    rq.presentation_context_definition_list = [seg, private]
    max_length = MaximumLengthNotification()
    max_length.maximum_length_received = 16384
    impl = ImplementationClassUIDNotification()
    impl.implementation_class_uid = "1.2.3.4"
    version = ImplementationVersionNameNotification()
    version.implementation_version_name = "PROBE"
    window = AsynchronousOperationsWindowNegotiation()
    window.maximum_number_operations_invoked = 8
    window.maximum_number_operations_performed = 8
    role = SCP_SCU_RoleSelectionNegotiation()
    role.sop_class_uid = SegmentationStorage
    role.scu_role, role.scp_role = True, True
    extended = SOPClassExtendedNegotiation()
    extended.sop_class_uid = SegmentationStorage
    extended.service_class_application_information = b"\x01"
    common = SOPClassCommonExtendedNegotiation()
    common.sop_class_uid = SegmentationStorage
    common.service_class_uid = "1.2.840.10008.4.2"
    identity = UserIdentityNegotiation()
    identity.user_identity_type = 1
    identity.primary_field = b"probe"
    identity.positive_response_requested = True
    proposed: list[Any] = [window, role, extended, common, identity]
    rq.user_information = [max_length, impl, version, *proposed]
    pdu = A_ASSOCIATE_RQ()
    pdu.from_primitive(rq)
    request = AssociationRequest.decode(pdu.encode()[6:])
    encoded, accepted = accept_pdu(request, supported_contexts(), node.max_pdu)
    ac_pdu = A_ASSOCIATE_AC()
    ac_pdu.decode(encoded)
    ac = ac_pdu.to_primitive()
    answered = [type(item) for item in ac.user_information]
    return AssociateAnswer(
        application_context_name=str(ac.application_context_name),
        maximum_length=int(ac.maximum_length_received or 0),
        implementation_class_uid=str(ac.implementation_class_uid),
        implementation_version_name=str(
            next(
                (
                    item.implementation_version_name
                    for item in ac.user_information
                    if isinstance(item, ImplementationVersionNameNotification)
                ),
                "",
            )
        ),
        answered_items=tuple(_ITEM_NAMES.get(t.__name__, t.__name__) for t in answered),
        unanswered_items=tuple(
            _ITEM_NAMES[type(item).__name__] for item in proposed if type(item) not in answered
        ),
        rejected_extra_syntax=3 not in accepted,
    )


_ITEM_NAMES = {
    "MaximumLengthNotification": "Maximum Length",
    "ImplementationClassUIDNotification": "Implementation Class UID",
    "ImplementationVersionNameNotification": "Implementation Version Name",
    "AsynchronousOperationsWindowNegotiation": "Asynchronous Operations Window",
    "SCP_SCU_RoleSelectionNegotiation": "SCP/SCU Role Selection",
    "SOPClassExtendedNegotiation": "SOP Class Extended Negotiation",
    "SOPClassCommonExtendedNegotiation": "SOP Class Common Extended Negotiation",
    "UserIdentityNegotiation": "User Identity Negotiation",
}

_RJ_WHEN = {
    "_RJ_CALLED_AE": "The Called AE Title is not a valid AE title, or is not the node's "
    "(`[node] require_called_ae`, on by default).",
    "_RJ_CALLING_AE": "The Calling AE Title is not a valid AE title, or `[[peers]]` is "
    "configured and no entry has this Calling AE Title (and, where the entry names a host, "
    "this source address).",
    "_RJ_LOCAL_LIMIT": "A connection or association limit is reached: `max_connections`, "
    "`max_connections_per_host`, `max_associations` or `max_associations_per_ae` "
    "(also when no thread can be started). The peer may try again later.",
    "_RJ_RQ_TOO_LONG": "The A-ASSOCIATE-RQ is longer than `max_associate_rq` bytes.",
}
"""When each A-ASSOCIATE-RJ of :mod:`dicom_node.receive.scp` is sent; a new ``_RJ_``
constant there without a line here stops the statement from being built."""

_RJ_RESULT = {1: "rejected-permanent", 2: "rejected-transient"}
_RJ_SOURCE = {
    1: "DICOM UL service-user",
    2: "DICOM UL service-provider (ACSE related function)",
    3: "DICOM UL service-provider (Presentation related function)",
}
_RJ_REASON = {
    (1, 1): "no-reason-given",
    (1, 2): "application-context-name-not-supported",
    (1, 3): "calling-AE-title-not-recognized",
    (1, 7): "called-AE-title-not-recognized",
    (2, 1): "no-reason-given",
    (2, 2): "protocol-version-not-supported",
    (3, 1): "temporary-congestion",
    (3, 2): "local-limit-exceeded",
}


def _rejections() -> tuple[tuple[str, RejectReason], ...]:
    from dicom_node.receive import scp

    out = []
    for name, value in sorted(vars(scp).items()):
        if not name.startswith("_RJ_"):
            continue
        if name not in _RJ_WHEN:
            raise RuntimeError(f"dicom_node.receive.scp.{name} is not described in {__name__}")
        result, source, reason = value
        out.append((name, RejectReason(result, source, reason, _RJ_WHEN[name])))
    return tuple(sorted(out, key=lambda item: (item[1].result, item[1].source, item[1].reason)))


def _statuses() -> tuple[CStoreStatus, ...]:
    """The constants of :mod:`dicom_node.protocol.status`, with their docstrings, and
    whether the receiver's code answers each."""
    from dicom_node.protocol import status as st

    docs = _docs_after_names(ast.parse(inspect.getsource(st)).body)
    sources = "\n".join(
        path.read_text()
        for folder in ("receive", "protocol")
        for path in sorted((Path(dicom_node.__file__).parent / folder).glob("*.py"))
        if path.name != "status.py"
    )
    out = []
    for name, value in vars(st).items():
        if not name.isupper() or not isinstance(value, int) or isinstance(value, bool):
            continue
        answered = re.search(rf"\bst\.{name}\b", sources) is not None
        out.append(
            CStoreStatus(value, name, st.DESCRIPTIONS.get(value, ""), docs.get(name, ""), answered)
        )
    return tuple(sorted(out, key=lambda s: s.code))


def _other_command_status() -> int:
    """The status the receiver answers a DIMSE request other than C-ECHO and C-STORE."""
    from dicom_node.receive.scp import _Association

    source = inspect.getsource(_Association._dispatch)
    found = re.findall(r"self\._respond\(cmd, context_id, (0x[0-9A-Fa-f]{4})", source)
    if len(found) != 1:
        raise RuntimeError("cannot tell the status of an unrecognised operation from the code")
    return int(found[0], 16)


def status_class(code: int) -> str:
    """Success, Warning, or the kind of Failure, per PS3.4 B.2.3 and PS3.7 C."""
    if code == 0x0000:
        return "Success"
    if code & 0xF000 == 0xB000:
        return "Warning"
    if code & 0xFF00 == 0xA700:
        return "Failure (Refused: Out of Resources)"
    if code & 0xFF00 == 0xA900:
        return "Failure (Error: Data Set does not match SOP Class)"
    if code & 0xF000 == 0xC000:
        return "Failure (Error: Cannot understand)"
    return "Failure"


# -- the sender (Storage SCU) --------------------------------------------------------------


def _scu_identity() -> tuple[str, str, int, tuple[str, ...]]:
    """(Implementation Class UID, Version Name, maximum PDU, transfer syntaxes of the
    C-ECHO's context) of the sender's AE, built as :mod:`dicom_node.deliver.scu` builds it."""
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    from dicom_node.deliver.scu import _make_ae

    ae = _make_ae("DICOM_NODE", 30.0)
    ae.add_requested_context(Verification)
    return (
        str(ae.implementation_class_uid),
        str(ae.implementation_version_name or ""),
        int(ae.maximum_pdu_size or 0),
        tuple(str(ts) for ts in ae.requested_contexts[0].transfer_syntax),
    )


_SCU_STATUSES = (0x0000, 0xB000, 0xB007, 0xA700, 0x0110, 0x0111, 0x0212, 0x0122, 0xA900,
                 0xC000, 0x0124)  # fmt: skip


def _scu_status_handling() -> tuple[tuple[str, str], ...]:
    """What the sender does with each answer (from the code's own decision)."""
    from dicom_node.deliver.destinations.dicom import is_permanent_failure
    from dicom_node.protocol import status as st

    out = []
    for code in _SCU_STATUSES:
        if st.is_success_or_warning(code):
            what = "sent" if code == st.SUCCESS else "sent; the warning is logged and recorded"
        elif is_permanent_failure(code):
            what = "failed at once (a retry cannot fix it)"
        else:
            what = "retried after a backoff, up to the destination's `max_attempts`"
        out.append((f"0x{code:04X}", what))
    none = "failed at once" if is_permanent_failure(None) else "retried"
    out.append(("presentation context refused", none))
    out.append(("association rejected, aborted or lost", "retried (all objects of the batch)"))
    return tuple(out)


# -- result objects: the reference series through the registered writers -----------------------


def _reference_series(charset: str) -> list[Any]:
    """Four 16 x 16 axial CT slices (no patient data), in ``charset``."""
    import numpy as np
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    index = _REFERENCE_SERIES.index(charset)
    study, series, frame = "2.25.1", f"2.25.2{index}", "2.25.3"
    slices = []
    for k in range(4):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        if charset != "ASCII":
            ds.SpecificCharacterSet = charset
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = f"2.25.4{index}{k}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
        ds.FrameOfReferenceUID = frame
        ds.PatientName = _REFERENCE_NAMES[charset]
        ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "REFERENCE", "", "O"
        ds.StudyDate, ds.StudyTime, ds.AccessionNumber = "20240101", "120000", ""
        ds.ReferringPhysicianName, ds.StudyID = "", "1"
        ds.Modality, ds.Manufacturer = "CT", "reference"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows = ds.Columns = 16
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.WindowCenter, ds.WindowWidth = 40, 400
        pixels = np.full((16, 16), -1000, dtype="<i2")
        pixels[4:12, 4:12] = 40
        ds.PixelData = pixels.tobytes()
        slices.append(ds)
    return slices


def _reference_result(charset: str, *, findings: bool = True) -> Any:
    """A pipeline result on the reference series: one segment, one finding, one measurement."""
    import numpy as np

    from ai_models.codes import CODES
    from ai_models.types import AlgorithmInfo, Finding, Measurement, PipelineResult, Segment
    from ai_models.volume import load_series

    volume = load_series(_reference_series(charset))
    algorithm = AlgorithmInfo("reference", "1", weights_sha256="ab" * 32)
    if not findings:
        return PipelineResult(pipeline="reference", volume=volume, algorithm=algorithm)
    mask = np.zeros(volume.shape, dtype=bool)
    mask[1:3, 5:11, 5:11] = True
    segment = Segment(
        1, "Nodule", CODES.MORPHOLOGICALLY_ABNORMAL_STRUCTURE, CODES.NODULE, mask,
        "nodule 1", "2.25.5", anatomic_region=CODES.LUNG,
    )  # fmt: skip
    volume_mm3 = float(mask.sum() * volume.voxel_volume_mm3)
    finding = Finding(
        "nodule 1", "2.25.5", CODES.NODULE, CODES.LUNG, 1,
        [Measurement(CODES.VOLUME, volume_mm3, CODES.MM3)],
    )  # fmt: skip
    return PipelineResult(
        pipeline="reference", volume=volume, algorithm=algorithm,
        segments=[segment], findings=[finding],
    )  # fmt: skip


def _supplied_codes(result: Any) -> set[tuple[str, str]]:
    """The (scheme, value) of every code the pipeline result hands the writers."""
    codes: set[tuple[str, str]] = set()

    def add(concept: Any) -> None:
        if concept is not None:
            codes.add((concept.scheme_designator, concept.value))

    for segment in result.segments:
        for concept in (segment.category, segment.type, segment.anatomic_region):
            add(concept)
    for finding in result.findings:
        add(finding.finding_type)
        add(finding.finding_site)
        for m in finding.measurements:
            add(m.name)
            add(m.unit)
    return codes


@functools.lru_cache(1)
def _standard_tables() -> tuple[dict[str, str], dict[str, list[dict[str, str]]], dict[str, Any]]:
    """highdicom's PS3.3 tables: SOP class -> IOD, IOD -> modules, module -> attributes."""

    def load(name: str) -> Any:
        data = pkgutil.get_data("highdicom", f"_standard/{name}.json")
        if data is None:  # pragma: no cover - part of the package
            raise FileNotFoundError(f"highdicom's {name}.json")
        return json.loads(data)

    return load("sop_class_iod_map"), load("iod_module_map"), load("module_attribute_map")


_ACRONYMS = {"sop": "SOP", "sr": "SR", "sc": "SC", "icc": "ICC", "lut": "LUT", "voi": "VOI"}


def _module_title(key: str) -> str:
    words = [_ACRONYMS.get(w, w if w in ("of", "and") else w.capitalize()) for w in key.split("-")]
    return " ".join(words).replace("Multi Frame", "Multi-frame")


def _modules_written(ds: Any) -> tuple[tuple[ModuleUse, ...], tuple[str, ...]]:
    """The modules of the object's IOD it fills (and the mandatory ones), and the
    attributes no module of the IOD lists (outside the SR content tree)."""
    iods, iod_modules, module_attributes = _standard_tables()
    modules = iod_modules[iods[str(ds.SOPClassUID)]]
    top: dict[str, list[dict[str, Any]]] = {
        m["key"]: [a for a in module_attributes[m["key"]] if not a["path"]] for m in modules
    }
    owners: dict[str, int] = {}
    for attrs in top.values():
        for keyword in {a["keyword"] for a in attrs}:
            owners[keyword] = owners.get(keyword, 0) + 1
    keywords = {elem.keyword for elem in ds if elem.keyword}
    rows = []
    for module in modules:
        attrs = top[module["key"]]
        own = [a["keyword"] for a in attrs if owners[a["keyword"]] == 1] or [
            a["keyword"] for a in attrs
        ]
        required = [a["keyword"] for a in attrs if a["type"] in ("1", "2")]
        if (required and all(k in keywords for k in required)) or any(k in keywords for k in own):
            written = "Yes"
        elif not required:
            written = "Empty"
        else:
            written = "No"
        if written == "Yes" or module["usage"] == "M":
            title = _module_title(module["key"])
            rows.append(ModuleUse(module["ie"], title, module["usage"], written))
    allowed = {
        (tuple(a["path"]), a["keyword"]) for m in modules for a in module_attributes[m["key"]]
    }
    outside = sorted(set(_outside(ds, (), allowed)))
    return tuple(rows), tuple(outside)


def _outside(ds: Any, path: tuple[str, ...], allowed: set[tuple[Any, str]]) -> Iterator[str]:
    for elem in ds:
        keyword = elem.keyword
        if not keyword or elem.tag.group == 0x0002:
            continue
        if (path, keyword) not in allowed:
            yield " > ".join((*path, keyword))
        if elem.VR == "SQ" and keyword != "ContentSequence":
            for item in elem.value:
                yield from _outside(item, (*path, keyword), allowed)


def _private_tags(ds: Any) -> Iterator[str]:
    for elem in ds:
        if elem.tag.is_private:
            yield f"({elem.tag.group:04X},{elem.tag.element:04X})"
        if elem.VR == "SQ":
            for item in elem.value:
                yield from _private_tags(item)


def _codes(ds: Any, out: dict[tuple[str, str, str], set[str]]) -> None:
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
            if value and "CodingSchemeDesignator" in item:
                key = (str(item.CodingSchemeDesignator), str(value), str(item.get("CodeMeaning")))
                out.setdefault(key, set()).add(_CODE_USES.get(elem.keyword, elem.keyword))
            _codes(item, out)


_CODE_USES = {
    "ConceptNameCodeSequence": "concept name",
    "ConceptCodeSequence": "coded value",
    "MeasurementUnitsCodeSequence": "unit",
    "PurposeOfReferenceCodeSequence": "purpose of reference (Contributing Equipment)",
}


def _templates(ds: Any) -> Iterator[str]:
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            if elem.keyword == "ContentTemplateSequence" and "TemplateIdentifier" in item:
                yield str(item.TemplateIdentifier)
            yield from _templates(item)


def _written_objects() -> tuple[tuple[WrittenObject, ...], tuple[str, ...], tuple[CodeUse, ...]]:
    """Run the registered writers on the reference series."""
    from dicom_node.results import kind_of, result_kinds, write_results
    from dicom_node.results.common import NOT_FOR_DIAGNOSIS

    kinds = result_kinds()
    charsets: dict[str, dict[str, str]] = {}
    first: dict[str, Any] = {}
    for charset in _REFERENCE_SERIES:
        for ds in write_results(_reference_result(charset), kinds, uid_seed="c0ffee"):
            kind = kind_of(ds)
            charsets.setdefault(kind, {}).setdefault(
                charset, str(ds.get("SpecificCharacterSet") or "")
            )
            if charset == "ASCII":
                first.setdefault(kind, ds)
    positive = _reference_result("ASCII")
    negative = write_results(_reference_result("ASCII", findings=False), ["sr"])
    supplied = _supplied_codes(positive)
    codes: dict[tuple[str, str, str], set[str]] = {}
    templates: set[str] = set()
    for report in [first.get("sr"), *negative]:
        if report is None:
            continue
        _codes(report, codes)
        templates.update(_templates(report))
    sr_codes = tuple(
        CodeUse(scheme, value, meaning, tuple(sorted(uses)))
        for (scheme, value, meaning), uses in sorted(codes.items())
        if (scheme, value) not in supplied
    )
    written = []
    for kind in kinds:
        obj = first.get(kind)
        if obj is None:
            continue
        modules, outside = _modules_written(obj)
        notice = sorted(
            elem.keyword
            for elem in obj
            if isinstance(elem.value, str) and NOT_FOR_DIAGNOSIS in elem.value
        )
        written.append(
            WrittenObject(
                kind=kind,
                sop_class_uid=str(obj.SOPClassUID),
                transfer_syntax_uid=str(obj.file_meta.TransferSyntaxUID),
                modality=str(obj.get("Modality", "")),
                modules=modules,
                outside_iod=outside,
                private_tags=tuple(sorted(set(_private_tags(obj)))),
                notice_attributes=tuple(notice),
                photometric_interpretation=str(obj.get("PhotometricInterpretation", "")),
                presentation_lut_shape=str(obj.get("PresentationLUTShape", "")),
                character_sets=tuple(
                    (charset, charsets[kind].get(charset, "")) for charset in _REFERENCE_SERIES
                ),
            )
        )
    return tuple(written), tuple(sorted(templates, key=lambda t: (len(t), t))), sr_codes


def _pipeline_codes() -> tuple[tuple[str, str, str], ...]:
    from ai_models.codes import CODES
    from ai_models.types import CodedConcept

    found = {
        (c.scheme_designator, c.value, c.meaning)
        for c in vars(CODES).values()
        if isinstance(c, CodedConcept)
    }
    return tuple(sorted(found))


# -- configuration ---------------------------------------------------------------------------


def _format_default(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g} s"
    if isinstance(value, Enum):
        return f'"{value.value}"'
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, Path):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_format_default(v) for v in value) + "]"
    return str(value)


_PARAMETER_NOTES: dict[str, dict[str, str]] = {
    "NodeSettings": {
        "ae_title": "The node's AE title: the Called AE Title the Storage SCP answers to and "
        "the Calling AE Title of the Storage SCU.",
        "host": "Address the Storage SCP listens on (an IPv6 address: IPv6).",
        "port": "TCP port of the Storage SCP (plain DICOM).",
    },
    "PeerSettings": {"ae_title": "Calling AE Title of a known sender."},
    "DestinationSettings": {
        "name": "The destination's name, as rules and commands refer to it.",
        "type": "The destination type (`dicom` here).",
    },
    "DicomDestinationSettings": {
        "ae_title": "Called AE Title of the peer.",
        "host": "Host name or IP address of the peer.",
        "port": "TCP port of the peer.",
        "tls_key_file": "The private key of `tls_cert_file`.",
        "tls_check_hostname": "Check that the peer's certificate names `host`.",
    },
    "AuditSettings": {
        "database": "Keep every event in the database (`dicom-node audit` lists them).",
        "jsonl_file": "Also append each event as one JSON line to this file.",
        "syslog": "Also send each event to syslog: `udp://HOST:PORT`, `tcp://HOST:PORT` or "
        "a socket path such as `/dev/log`.",
        "syslog_facility": "The syslog facility of the events.",
    },
}
"""Descriptions of the settings whose models give none (no docstring under the field)."""


def _enum_description(annotation: Any) -> str:
    if not (isinstance(annotation, type) and issubclass(annotation, Enum)):
        return ""
    doc = _rst(annotation.__doc__ or "")
    values = ", ".join(f"`{m.value}`" for m in annotation)
    return f"{doc} One of {values}.".strip()


def _parameters(
    model: type[BaseModel], keys: Iterable[str] | None = None
) -> tuple[ConfigParameter, ...]:
    docs = _attribute_docstrings(model)
    for klass in reversed(model.__mro__):
        docs.update(_PARAMETER_NOTES.get(klass.__name__, {}))
    out = []
    for name, field in model.model_fields.items():
        if keys is not None and name not in keys:
            continue
        if field.is_required():
            default = "required"
        elif field.default_factory is not None:
            default = _format_default(field.default_factory())  # type: ignore[call-arg]
        else:
            default = _format_default(field.default)
        description = docs.get(name) or _enum_description(field.annotation)
        out.append(ConfigParameter(name, default, description))
    return tuple(out)


# -- the statement ------------------------------------------------------------------------------


def build_statement() -> Statement:
    """What the code says now (runs the registered result writers on a tiny series)."""
    from dicom_node.audit import AuditEvent
    from dicom_node.config import AuditSettings, NodeSettings, PeerSettings, StorageSettings
    from dicom_node.deliver.destinations.dicom import DicomDestinationSettings
    from dicom_node.deliver.destinations.registry import destination_types
    from dicom_node.deliver.scu import MAX_CONTEXTS
    from dicom_node.receive.header import HEADER_KEYWORDS
    from dicom_node.receive.tls import BCP195_CIPHERS
    from dicom_node.results.registry import writers

    node = NodeSettings()
    sop_classes, syntaxes, deflated = _scp_contexts()
    scu_uid, scu_version, scu_pdu, scu_echo_syntaxes = _scu_identity()
    written, templates, sr_codes = _written_objects()
    return Statement(
        version=dicom_node.__version__,
        ae_title=node.ae_title,
        port=node.port,
        host=node.host,
        scp_sop_classes=sop_classes,
        scp_transfer_syntaxes=syntaxes,
        deflated_syntaxes=deflated,
        acceptor=_acceptor_answer(),
        rejections=_rejections(),
        statuses=_statuses(),
        other_command_status=_other_command_status(),
        node_limits={
            "max_associations": node.max_associations,
            "max_associations_per_ae": node.max_associations_per_ae,
            "max_connections": node.connection_limit,
            "max_connections_per_host": node.per_host_limit,
            "receivers": node.receivers,
            "max_pdu": node.max_pdu,
            "incoming_pdu_limit": node.incoming_pdu_limit,
            "max_associate_rq": node.max_associate_rq,
            "max_dataset_mb": node.max_dataset_mb,
        },
        scu_implementation_class_uid=scu_uid,
        scu_implementation_version_name=scu_version,
        scu_maximum_pdu=scu_pdu,
        scu_verification_syntaxes=scu_echo_syntaxes,
        scu_max_contexts=MAX_CONTEXTS,
        scu_status_handling=_scu_status_handling(),
        result_kinds=tuple(
            ResultKindInfo(w.kind, w.sop_class_uid, w.series_number) for w in writers()
        ),
        written=written,
        sr_templates=templates,
        sr_codes=sr_codes,
        pipeline_codes=_pipeline_codes(),
        header_keywords=tuple(HEADER_KEYWORDS),
        audit_events=tuple(
            (e.value, e.dicom_event[0], e.dicom_event[1], e.action) for e in AuditEvent
        ),
        tls_ciphers=tuple(BCP195_CIPHERS.split(":")),
        parameters=(
            ("[node]", _parameters(NodeSettings)),
            ("[storage]", _parameters(StorageSettings, ("min_free_disk_mb",))),
            ("[[peers]]", _parameters(PeerSettings)),
            ('[[destinations]] with type = "dicom"', _parameters(DicomDestinationSettings)),
            ("[audit]", _parameters(AuditSettings)),
        ),
        destination_types=destination_types(),
    )


# -- Markdown ---------------------------------------------------------------------------------


def _table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return [*lines, ""]


def _uid_rows(uids: Iterable[str]) -> list[tuple[str, str]]:
    return [(uid_name(uid), f"`{uid}`") for uid in uids]


_TOC = (
    ("1", "Overview"),
    ("2", "Table of Contents"),
    ("3", "Introduction"),
    ("4", "Networking"),
    ("5", "Media Interchange"),
    ("6", "Support of Character Sets"),
    ("7", "Security"),
    ("8", "Annexes"),
)


def _anchor(number: str, title: str) -> str:
    text = f"{number} {title}".lower()
    return re.sub(r"[^a-z0-9 -]", "", text).replace(" ", "-")


def render_markdown(s: Statement) -> str:
    """The statement as Markdown (``docs/conformance.md``)."""
    out: list[str] = []
    add = out.append
    kinds = {k.sop_class_uid: k for k in s.result_kinds}
    result_names = ", ".join(f"{uid_name(k.sop_class_uid)} (`{k.kind}`)" for k in s.result_kinds)
    others = [uid for uid in s.storage_sop_classes if uid not in kinds]

    add(f"# DICOM Conformance Statement: dicom-node {s.version}")
    add("")
    add(
        "<!-- Generated by `python -m dicom_node.conformance` (`make conformance`) from the "
        "code's own tables; tests/node/test_conformance.py fails when it is stale. "
        "Do not edit by hand. -->"
    )
    add("")

    # 1 Overview
    add("## 1 Overview")
    add("")
    add(
        "dicom-node is a DICOM network node that receives images from modalities and archives "
        "(Storage SCP), runs AI pipelines on complete series, and sends the results as new "
        f"DICOM objects -- {result_names} -- to configured destinations (Storage SCU). "
        "It also answers and sends C-ECHO. It supports no media interchange, no query/retrieve, "
        "no worklist and no print."
    )
    add("")
    add("Table 1-1 Network Services")
    add("")
    rows: list[tuple[str, str, str]] = [("**Transfer**", "", "")]
    for k in s.result_kinds:
        rows.append((uid_name(k.sop_class_uid), "Yes", "Yes"))
    rows.append(
        (
            f"The other {len(others)} Storage SOP Classes of 4.2.1.4.1",
            "Yes (`dicom-node send` only)",
            "Yes",
        )
    )
    rows.append(("**Verification**", "", ""))
    rows.append(("Verification", "Yes", "Yes"))
    out.extend(_table(("SOP Classes", "User of Service (SCU)", "Provider of Service (SCP)"), rows))

    # 2 TOC
    add("## 2 Table of Contents")
    add("")
    for number, title in _TOC:
        add(f"- [{number} {title}](#{_anchor(number, title)})")
    add("")

    # 3 Introduction
    add("## 3 Introduction")
    add("")
    add("### 3.1 Revision History")
    add("")
    out.extend(
        _table(
            ("Document version", "Product version", "Description"),
            [(s.version, f"dicom-node {s.version}", "Generated from the code of this version")],
        )
    )
    add("### 3.2 Audience")
    add("")
    add(
        "Integrators and PACS administrators who connect dicom-node to modalities, archives and "
        "viewers, and readers who need to know which objects it creates. Familiarity with the "
        "DICOM standard (PS3.2, PS3.4, PS3.7, PS3.8) is assumed."
    )
    add("")
    add("### 3.3 Remarks")
    add("")
    add(
        "- **The built-in AI models are demonstration models trained on synthetic phantoms; they "
        "are not medical devices and must not be used for clinical decisions.** A site that "
        "plugs in its own TorchScript file or MONAI bundle answers for its results. Every "
        'created object says so: its text carries "AI, not for diagnosis" (8.1).'
    )
    add(
        "- This statement is generated from the code: the tables of SOP classes, transfer "
        "syntaxes, statuses and configuration defaults are the ones the node uses, and the IOD "
        "annex describes objects the node's writers make for a small synthetic CT series while "
        "the statement is built. The defaults are the built-in ones; a site's `config.toml` may "
        "change them (4.4)."
    )
    add(
        "- Conformance is checked against PS3.2-PS3.18 (2024 and later). The IOD module tables "
        "used in 8.1 are the PS3.3 tables that highdicom ships."
    )
    add("")

    # 4 Networking
    add("## 4 Networking")
    add("")
    add("### 4.1 Implementation Model")
    add("")
    add("#### 4.1.1 Application Data Flow")
    add("")
    add("```")
    add("modality / PACS --C-STORE, C-ECHO--> [Storage SCP AE] --durable file + database row-->")
    add("   [collect] series complete (quiet period) or study complete --> routing rules --> jobs")
    add("   [worker]  series -> volume -> AI pipeline -> findings")
    add("   [results] " + ", ".join(k.kind.upper() for k in s.result_kinds) + " objects")
    add("   [deliver] --> [Storage SCU AE] --C-STORE--> archive / PACS / viewer")
    add('                 (or a folder: type = "folder")')
    add("```")
    add("")
    add(
        "The Storage SCP AE receives instances and keeps each one on disk and in the database "
        "before it answers Success. Routing rules decide which series an AI pipeline analyses; "
        "the results are written as new series in the source study and sent by the Storage SCU "
        "AE to the destinations the rule names (destination types: "
        + ", ".join(f"`{t}`" for t in s.destination_types)
        + "). An operator may also C-ECHO a destination (`dicom-node echo`) and send any DICOM "
        "files (`dicom-node send`)."
    )
    add("")
    add("#### 4.1.2 Functional Definitions of AEs")
    add("")
    add(
        f"**Storage SCP AE** (default AE title `{s.ae_title}`, port {s.port}). Waits for "
        "associations; accepts those that pass the checks of 4.2.1.4 and 7.2; stores every "
        "C-STORE data set byte for byte as received, with File Meta Information in front "
        "(PS3.10); answers C-ECHO. Each association is served by its own thread; "
        "`[node] receivers` processes may accept from the same port."
    )
    add("")
    add(
        "**Storage SCU AE** (the same AE title as Calling AE Title). Sends result objects to "
        '`type = "dicom"` destinations, one association per batch of a destination\'s '
        "due objects, and retries per object (4.2.2.4.1). Also used by `dicom-node echo` and "
        "`dicom-node send`."
    )
    add("")
    add("#### 4.1.3 Sequencing of Real-World Activities")
    add("")
    add(
        "A series is analysed only once it is complete (no new instance for the rule's "
        "`quiet_period_s`, or the study complete); results are sent only after every object of "
        "the job is written. Results of a job are sent in the order of the registered kinds ("
        + ", ".join(f"`{k.kind}`" for k in s.result_kinds)
        + "), so the SEG arrives before the SR that references it."
    )
    add("")

    _render_scp(s, out)
    _render_scu(s, out)

    # 4.3
    add("### 4.3 Network Interfaces")
    add("")
    add("#### 4.3.1 Physical Network Interface")
    add("")
    add("The node uses the TCP/IP stack of its host; it has no physical interface of its own.")
    add("")
    add("#### 4.3.2 Additional Protocols")
    add("")
    add(
        "Host names of destinations and of `[[peers]]` entries are resolved with the host's "
        "resolver (DNS). The web dashboard and REST API (HTTP) are not part of this statement."
    )
    add("")
    add("#### 4.3.3 IPv4 and IPv6 Support")
    add("")
    add(
        f'The Storage SCP listens on `[node] host` (default `"{s.host}"`: every IPv4 '
        'address). An IPv6 address there (e.g. `"::"`) makes it listen on IPv6 (on Linux '
        "also for IPv4-mapped addresses unless the host disables it). The Storage SCU connects "
        "to whatever address a destination's host resolves to."
    )
    add("")

    # 4.4
    add("### 4.4 Configuration")
    add("")
    add("#### 4.4.1 AE Title/Presentation Address Mapping")
    add("")
    add("##### 4.4.1.1 Local AE Titles")
    add("")
    out.extend(
        _table(
            ("Application Entity", "Default AE Title", "Default TCP/IP Port", "Configured by"),
            [
                (
                    "Storage SCP",
                    f"`{s.ae_title}`",
                    str(s.port),
                    "`[node] ae_title`, `port`, `tls_port`",
                ),
                ("Storage SCU", f"`{s.ae_title}`", "any (ephemeral)", "`[node] ae_title`"),
            ],
        )  # fmt: skip
    )
    add("##### 4.4.1.2 Remote AE Title/Presentation Address Mapping")
    add("")
    add(
        'Destinations are `[[destinations]]` tables with `type = "dicom"`: `name`, '
        "`ae_title`, `host`, `port` (and TLS settings). Known senders are `[[peers]]` tables: "
        "`ae_title` and optionally `host`; without any `[[peers]]` every Calling AE Title is "
        "accepted."
    )
    add("")
    add("#### 4.4.2 Parameters")
    add("")
    add(
        "Defaults built into the node (`dicom_node/config.py`); each can be set in "
        "`config.toml` or with an environment variable `DICOM_NODE_<SECTION>__<KEY>`."
    )
    add("")
    for section, params in s.parameters:
        add(f"**{section}**")
        add("")
        out.extend(
            _table(
                ("Parameter", "Default", "Description"),
                [
                    (
                        f"`{p.key}`",
                        f"`{p.default}`" if p.default != "required" else "required",
                        p.description,
                    )
                    for p in params
                ],
            )  # fmt: skip
        )

    # 5
    add("## 5 Media Interchange")
    add("")
    add("dicom-node supports no Media Storage Application Profile; it reads and writes no media.")
    add("")

    _render_charsets(s, out)
    _render_security(s, out)
    _render_annexes(s, out)
    while out and out[-1] == "":
        out.pop()
    return "\n".join(out) + "\n"


def _render_scp(s: Statement, out: list[str]) -> None:
    add = out.append
    a = s.acceptor
    lim = s.node_limits
    add("### 4.2 AE Specifications")
    add("")
    add("#### 4.2.1 Storage SCP AE")
    add("")
    add("##### 4.2.1.1 SOP Classes")
    add("")
    add(
        f"The Storage SCP AE provides Standard Conformance to Verification and to the "
        f"{len(s.storage_sop_classes)} Storage SOP Classes of 4.2.1.4.1 (Storage Service Class, "
        "PS3.4 Annex B, conformance level 2 (full): every element is stored, as sent; "
        "signatures stay intact because nothing is changed)."
    )
    add("")
    out.extend(
        _table(
            ("SOP Class Name", "SOP Class UID", "SCU", "SCP"),
            [(uid_name(uid), f"`{uid}`", "No", "Yes") for uid in s.scp_sop_classes[:1]]
            + [("Storage SOP Classes of 4.2.1.4.1", "see there", "No", "Yes")],
        )
    )
    add("##### 4.2.1.2 Association Policies")
    add("")
    add("###### General")
    add("")
    out.extend(
        _table(
            ("", ""),
            [
                ("Application Context Name", f"`{a.application_context_name}`"),
                (
                    "Maximum PDU length received (A-ASSOCIATE-AC)",
                    f"{a.maximum_length} bytes (`[node] max_pdu`; 0 = unlimited)",
                ),
                (
                    "Longest PDU accepted from the peer",
                    f"{lim['incoming_pdu_limit']} bytes (`max_incoming_pdu`; longer: A-ABORT)",
                ),
                ("Longest A-ASSOCIATE-RQ", f"{lim['max_associate_rq']} bytes"),
                ("Largest data set of one C-STORE", f"{lim['max_dataset_mb']} MiB"),
            ],
        )  # fmt: skip
    )
    add("###### Number of Associations")
    add("")
    per_ae = lim["max_associations_per_ae"]
    out.extend(
        _table(
            ("Limit", "Default"),
            [
                (
                    "Maximum number of simultaneous associations (`max_associations`)",
                    str(lim["max_associations"]),
                ),
                (
                    "... from one Calling AE Title (`max_associations_per_ae`)",
                    "no limit of its own" if per_ae is None else str(per_ae),
                ),
                (
                    "TCP connections at once, associated or not (`max_connections`)",
                    str(lim["max_connections"]),
                ),
                (
                    "... from one source address (`max_connections_per_host`)",
                    str(lim["max_connections_per_host"]),
                ),
                ("Receiver processes (`receivers`)", str(lim["receivers"])),
            ],
        )  # fmt: skip
    )
    add("Beyond a limit the association is rejected (transient, local limit exceeded; 4.2.1.4).")
    add("")
    add("###### Asynchronous Nature")
    add("")
    unanswered = ", ".join(a.unanswered_items)
    add(
        "The Storage SCP AE does not negotiate an Asynchronous Operations Window: the "
        f"A-ASSOCIATE-AC carries only {', '.join(a.answered_items)} (proposed {unanswered} "
        "are not answered), so the default window of one outstanding operation applies. "
        "Each request is answered before the next one is read."
    )
    add("")
    add("###### Implementation Identifying Information")
    add("")
    out.extend(
        _table(
            ("", "Value (A-ASSOCIATE-AC)"),
            [
                ("Implementation Class UID", f"`{a.implementation_class_uid}`"),
                ("Implementation Version Name", f"`{a.implementation_version_name}`"),
            ],
        )
    )
    add("##### 4.2.1.3 Association Initiation Policy")
    add("")
    add("The Storage SCP AE initiates no associations.")
    add("")
    add("##### 4.2.1.4 Association Acceptance Policy")
    add("")
    add(
        "Associations are accepted from any Calling AE Title unless `[[peers]]` lists the "
        "accepted ones (7.2). The A-ASSOCIATE-RQ must arrive within `acse_timeout` (ARTIM, "
        "PS3.8 9.1.6) of the connection; each DIMSE message must be complete within "
        "`dimse_timeout` of its first byte, and an associated peer silent for "
        "`network_timeout` is aborted. Rejections (PS3.8 9.3.4):"
    )
    add("")
    out.extend(
        _table(
            ("Result", "Source", "Reason/Diag.", "When"),
            [
                (
                    f"{r.result} {_RJ_RESULT.get(r.result, '')}",
                    f"{r.source} {_RJ_SOURCE.get(r.source, '')}",
                    f"{r.reason} {_RJ_REASON.get((r.source, r.reason), '')}",
                    r.when,
                )
                for _name, r in s.rejections
            ],
        )
    )
    add(
        "A connection refused on the TLS port is closed without an A-ASSOCIATE-RJ "
        "(a clear-text PDU would mean nothing to a TLS client)."
    )
    add("")
    add("###### 4.2.1.4.1 Activity -- Receive Storage and Verification Requests")
    add("")
    add("**Accepted Presentation Contexts.** Every SOP Class below is accepted with every "
        "transfer syntax of Table 4.2-1, role SCP, without extended negotiation. In each "
        "presentation context the node accepts the first proposed transfer syntax it "
        "supports; a context proposing none of them is refused (result 4, "
        "transfer-syntaxes-not-supported), a context of any other abstract syntax likewise "
        "(result 3, abstract-syntax-not-supported).")  # fmt: skip
    add("")
    add("Table 4.2-1 Transfer Syntaxes accepted (for every SOP Class below)")
    add("")
    out.extend(
        _table(
            ("Transfer Syntax Name", "UID", "Note"),
            [
                (
                    *row,
                    "only with `[node] accept_deflated = true` (the default)"
                    if uid in s.deflated_syntaxes
                    else "",
                )
                for uid, row in zip(
                    s.scp_transfer_syntaxes, _uid_rows(s.scp_transfer_syntaxes), strict=True
                )
            ],
        )  # fmt: skip
    )
    add(
        "The data set is stored as received, in the transfer syntax it came in; the node "
        "decodes only its header (a Deflated data set is inflated for at most its first "
        "8 MiB to read it)."
    )
    add("")
    groups: dict[str, list[str]] = {}
    for uid in s.storage_sop_classes:
        groups.setdefault(storage_group(uid_name(uid)), []).append(uid)
    add(
        f"Table 4.2-2 SOP Classes accepted ({len(s.scp_sop_classes)}: Verification and "
        f"{len(s.storage_sop_classes)} Storage SOP Classes, as pynetdicom lists them)"
    )
    add("")
    out.extend(
        _table(("SOP Class Name", "SOP Class UID", "Role"),
               [(*row, "SCP") for row in _uid_rows(s.scp_sop_classes[:1])])
    )  # fmt: skip
    for group, _test in _GROUPS:
        if group not in groups:
            continue
        add(f"**{group}** ({len(groups[group])})")
        add("")
        out.extend(
            _table(("SOP Class Name", "SOP Class UID", "Role"),
                   [(*row, "SCP") for row in _uid_rows(groups[group])])
        )  # fmt: skip
    add("**SOP Specific Conformance -- Verification.** A C-ECHO-RQ is answered Success "
        f"(0x0000). Any other DIMSE request is answered 0x{s.other_command_status:04X} "
        "(Unrecognized operation).")  # fmt: skip
    add("")
    add(
        "**SOP Specific Conformance -- Storage.** A C-STORE-RSP with Success is sent only "
        "after the data set and its database row are durable (fsync, or a group-committed "
        "intake journal). The same SOP Instance UID sent again with the same bytes is "
        "recorded once and answered Success; with different bytes `[node] duplicate_policy` "
        "decides (keep the first, replace, or reject). The node does not coerce or discard "
        "elements, so it sends no Warning status. Each failure carries an Error Comment "
        "(0000,0902) with the reason. Stored instances are kept until `[retention]` deletes "
        "them (off by default: kept indefinitely). Statuses (`dicom_node/protocol/status.py`):"
    )
    add("")
    out.extend(
        _table(
            ("Status", "Code", "Meaning", "When", "Sent by the node"),
            [
                (
                    status_class(st.code),
                    f"0x{st.code:04X}",
                    st.meaning,
                    st.when,
                    "Yes" if st.answered else "No (defined, not used)",
                )
                for st in s.statuses
            ],
        )  # fmt: skip
    )


def _render_scu(s: Statement, out: list[str]) -> None:
    add = out.append
    add("#### 4.2.2 Storage SCU AE")
    add("")
    add("##### 4.2.2.1 SOP Classes")
    add("")
    add(
        "The Storage SCU AE provides Standard Conformance to the Storage SOP Classes of the "
        "objects it creates (the registered result kinds) and to Verification. "
        "`dicom-node send` (an operator's command) sends any Storage SOP Class found in the "
        "files given."
    )
    add("")
    out.extend(
        _table(
            (
                "SOP Class Name",
                "SOP Class UID",
                "Result kind",
                "Default Series Number",
                "SCU",
                "SCP",
            ),
            [
                (
                    uid_name(k.sop_class_uid),
                    f"`{k.sop_class_uid}`",
                    f"`{k.kind}`",
                    str(k.series_number),
                    "Yes",
                    "No",
                )
                for k in s.result_kinds
            ]
            + [("Verification", f"`{VERIFICATION}`", "", "", "Yes", "No")],
        )  # fmt: skip
    )
    add("##### 4.2.2.2 Association Policies")
    add("")
    pdu = s.scu_maximum_pdu
    out.extend(
        _table(
            ("", ""),
            [
                ("Application Context Name", "`1.2.840.10008.3.1.1.1`"),
                (
                    "Maximum PDU length received (proposed)",
                    f"{pdu} ({'unlimited' if pdu == 0 else 'bytes'})",
                ),
                ("Presentation contexts per association", f"at most {s.scu_max_contexts}"),
                ("Associations at once", "one per sender (one in `serve`), one batch at a time"),
                ("Asynchronous Operations Window", "not proposed (one outstanding operation)"),
                ("Extended negotiation, role selection, user identity", "not proposed"),
                ("Implementation Class UID", f"`{s.scu_implementation_class_uid}`"),
                ("Implementation Version Name", f"`{s.scu_implementation_version_name}`"),
                ("Timeouts", "`timeout_s` of the destination (ACSE, DIMSE, network, connect)"),
            ],
        )  # fmt: skip
    )
    add("##### 4.2.2.3 Association Acceptance Policy")
    add("")
    add("The Storage SCU AE accepts no associations.")
    add("")
    add("##### 4.2.2.4 Association Initiation Policy")
    add("")
    add("###### 4.2.2.4.1 Activity -- Send Results")
    add("")
    add(
        "When a job's objects are written, the sender opens one association per batch of a "
        "destination's due objects. Each (SOP Class, transfer syntax) pair of the files is "
        "proposed as its own presentation context, so every object goes as it is, without "
        "transcoding; each SOP Class whose files are not in Explicit VR Little Endian gets one "
        "more context proposing Explicit VR Little Endian. An association aborted mid-way is "
        "re-established, resuming with the object not acknowledged."
    )
    add("")
    rows = []
    for w in s.written:
        rows.append((uid_name(w.sop_class_uid), f"`{w.sop_class_uid}`",
                     f"{uid_name(w.transfer_syntax_uid)} `{w.transfer_syntax_uid}`",
                     "SCU", "None"))  # fmt: skip
    rows.append(("Any Storage SOP Class (`dicom-node send`)", "",
                 "the file's own, and Explicit VR Little Endian `1.2.840.10008.1.2.1`",
                 "SCU", "None"))  # fmt: skip
    echo_syntaxes = ", ".join(uid_name(ts) for ts in s.scu_verification_syntaxes)
    rows.append(("Verification", f"`{VERIFICATION}`", echo_syntaxes, "SCU", "None"))
    add("Proposed Presentation Contexts (result objects are written in the transfer syntax shown)")
    add("")
    out.extend(_table(("Abstract Syntax", "UID", "Transfer Syntax", "Role", "Ext. Neg."), rows))
    add("**SOP Specific Conformance -- Storage SCU.** What the sender does with each answer:")
    add("")
    out.extend(_table(("C-STORE-RSP status or event", "Outcome of the object"),
                      s.scu_status_handling))  # fmt: skip
    add("###### 4.2.2.4.2 Activity -- Verification")
    add("")
    add("`dicom-node echo DESTINATION` sends one C-ECHO-RQ on an association of its own; any "
        "status but Success is reported as a failure.")  # fmt: skip
    add("")


def _render_charsets(s: Statement, out: list[str]) -> None:
    add = out.append
    add("## 6 Support of Character Sets")
    add("")
    add(
        "**Received.** The Storage SCP accepts data sets in any Specific Character Set "
        "(0008,0005) and stores them unchanged. It decodes the attributes it records "
        "(e.g. Patient's Name, descriptions) with the character set the data set declares."
    )
    add("")
    add(
        "**Created.** Result objects copy the patient and study attributes of the source, "
        "with the source's Specific Character Set; an unknown term is replaced (ISO_IR 192 "
        "when the copied text is not ASCII). What the writers set for reference series in "
        "three character sets (empty: none, i.e. the default repertoire):"
    )
    add("")
    header = ["Source series", *(f"`{w.kind}`" for w in s.written)]
    rows = []
    for i, charset in enumerate(_REFERENCE_SERIES):
        label = "ASCII text, none declared" if charset == "ASCII" else charset
        rows.append([label, *(w.character_sets[i][1] or "(none)" for w in s.written)])
    out.extend(_table(header, rows))
    inconsistent = [
        w.kind
        for w in s.written
        if any(charset != "ASCII" and not value for charset, value in w.character_sets)
    ]
    if inconsistent:
        add(
            "Note: " + ", ".join(f"`{k}`" for k in inconsistent) + " objects declare no "
            "Specific Character Set for a source whose copied text is not ASCII; receivers "
            "then read that text as the default repertoire."
        )
        add("")


def _render_security(s: Statement, out: list[str]) -> None:
    add = out.append
    add("## 7 Security")
    add("")
    add("### 7.1 Security Profiles")
    add("")
    add(
        "**Storage SCP.** With `[node] tls_port` the node also listens for DICOM over TLS "
        "(PS3.15 B.9, BCP 195 Secure Transport Connection Profile), beside the plain port or "
        "alone (`tls_only`): TLS 1.2 or later, no compression, no renegotiation, these TLS 1.2 "
        "cipher suites (TLS 1.3 suites as the TLS library offers them): "
        + ", ".join(f"`{c}`" for c in s.tls_ciphers)
        + ". With `tls_ca_file` a client certificate is asked for and verified; "
        "`tls_require_client_cert` refuses clients without one. The verified subject is the "
        "association's TLS identity in logs and the audit trail."
    )
    add("")
    add(
        "**Storage SCU.** A destination with `tls = true` is reached over TLS with the "
        "system's default client settings: the peer's certificate is verified against "
        "`tls_ca_file` (or the system's CAs), its host name checked unless "
        "`tls_check_hostname = false`; `tls_cert_file`/`tls_key_file` give a client certificate."
    )
    add("")
    add("### 7.2 Association Level Security")
    add("")
    add(
        "- `[node] require_called_ae` (default on): the Called AE Title must be the node's.\n"
        "- `[[peers]]`: when any is configured, only a Calling AE Title listed there is "
        "accepted, and where the entry names a `host` (an IP address, or a name resolved when "
        "the association arrives) only from that address.\n"
        "- Limits bound what one peer can hold before and after it is accepted (4.2.1.2); "
        "each refusal is audited."
    )
    add("")
    add("### 7.3 Audit Trail")
    add("")
    add(
        "The node records audit events (PS3.15 A.5; no patient names or IDs, studies by "
        "Study Instance UID) in its database, and optionally as JSON lines in a file and to "
        "syslog (RFC 5424 with a JSON body; not the DICOM audit message XML schema). "
        "Each event names the DICOM audit message it corresponds to:"
    )
    add("")
    out.extend(
        _table(
            ("Event", "EventID (DCM)", "Meaning", "EventActionCode"),
            [
                (f"`{name}`", code, meaning, action)
                for name, code, meaning, action in s.audit_events
            ],
        )  # fmt: skip
    )


def _render_annexes(s: Statement, out: list[str]) -> None:
    add = out.append
    add("## 8 Annexes")
    add("")
    add("### 8.1 IOD Contents")
    add("")
    add("#### 8.1.1 Created SOP Instances")
    add("")
    add(
        "Every result object is a new instance in a new series of the source study, with the "
        "Patient and General Study attributes of the source, the algorithm in the Contributing "
        'Equipment Sequence, and the text "AI, not for diagnosis" in the attributes listed. '
        "Usage: M mandatory, C conditional, U user option (PS3.3). Written: Yes, or Empty "
        "for a module of Type 3 attributes only where none is sent. Modules not listed are "
        "not written."
    )
    add("")
    for i, w in enumerate(s.written, 1):
        add(f"##### 8.1.1.{i} {uid_name(w.sop_class_uid)} (`{w.kind}`)")
        add("")
        facts = [
            ("SOP Class UID", f"`{w.sop_class_uid}`"),
            ("Modality", w.modality or "(none)"),
            ("Transfer syntax", f"{uid_name(w.transfer_syntax_uid)} `{w.transfer_syntax_uid}`"),
            ("Notice \"AI, not for diagnosis\" in",
             ", ".join(w.notice_attributes) or "(nowhere)"),
        ]  # fmt: skip
        if w.photometric_interpretation:
            facts.append(("Photometric Interpretation", w.photometric_interpretation))
        if w.presentation_lut_shape:
            facts.append(("Presentation LUT Shape", w.presentation_lut_shape))
        out.extend(_table(("", ""), facts))
        out.extend(
            _table(("IE", "Module", "Usage", "Written"),
                   [(m.ie, m.module, m.usage, m.written) for m in w.modules])
        )  # fmt: skip
    add("#### 8.1.2 Usage of Attributes from Received IODs")
    add("")
    add(
        "Received instances are stored unchanged. Of each header the node records "
        + ", ".join(s.header_keywords)
        + "; routing rules may test the other standard attributes of a series' first "
        "instance (not binary, sequence or person-name values, nor patient attributes other "
        "than age, sex, size and weight). A pipeline reads its series' images (pixel data "
        "and geometry)."
    )
    add("")
    add("#### 8.1.3 Attribute Mapping")
    add("")
    add(
        "Patient, study and Frame of Reference attributes of created objects are copied from "
        "the source series; invalid source values are emptied (Type 2) or left out (Type 3)."
    )
    add("")
    add("#### 8.1.4 Coerced/Modified Fields")
    add("")
    add("The Storage SCP coerces and modifies nothing: received data sets are stored as sent.")
    add("")
    add("### 8.2 Data Dictionary of Private Attributes")
    add("")
    private = {w.kind: w.private_tags for w in s.written if w.private_tags}
    if private:
        for kind, tags in private.items():
            add(f"- `{kind}`: " + ", ".join(tags))
    else:
        add("The objects the node creates hold no private attributes.")
    add("")
    add("### 8.3 Coded Terminology and Templates")
    add("")
    add(
        "The SR is a TID 1500 Measurement Report. Templates named in its Content Template "
        "Sequences: " + ", ".join(f"TID {t}" for t in s.sr_templates) + "."
    )
    add("")
    add("Codes the SR writer adds itself (for a finding report and a negative report):")
    add("")
    out.extend(
        _table(("Coding Scheme", "Code Value", "Code Meaning", "Used as"),
               [(c.scheme, f"`{c.value}`", c.meaning, ", ".join(c.uses)) for c in s.sr_codes])
    )  # fmt: skip
    add(
        "Finding types, sites, segment categories, measurements and units come from the "
        "pipeline. The built-in pipelines use these (a site model's come from its "
        "`[[models]]` labels):"
    )
    add("")
    out.extend(
        _table(("Coding Scheme", "Code Value", "Code Meaning"),
               [(scheme, f"`{value}`", meaning) for scheme, value, meaning in s.pipeline_codes])
    )  # fmt: skip
    add("### 8.4 Grayscale Image Consistency")
    add("")
    shapes = [
        f"`{w.kind}`: {w.presentation_lut_shape}" for w in s.written if w.presentation_lut_shape
    ]
    colour = [
        f"`{w.kind}`: {w.photometric_interpretation}"
        for w in s.written
        if w.photometric_interpretation and w.kind not in ("seg",)
    ]
    add(
        "The node displays no images and does not support the Grayscale Standard Display "
        "Function (PS3.14) itself. Presentation LUT Shape of created objects (MONOCHROME2 "
        "source): " + (", ".join(shapes) or "none") + "; the GSPS uses INVERSE for a "
        "MONOCHROME1 source. Photometric Interpretation of created images: "
        + (", ".join(colour) or "none")
        + "."
    )
    add("")
    add("### 8.5 Standard Extended/Specialized/Private SOP Classes")
    add("")
    extended = {w.kind: w.outside_iod for w in s.written if w.outside_iod}
    if extended:
        add("Standard Extended SOP Classes (attributes outside the IOD's modules):")
        add("")
        for kind, attrs in extended.items():
            add(f"- `{kind}`: " + ", ".join(attrs))
    else:
        add(
            "None: every attribute of the created objects (outside the SR content tree, which "
            "its templates govern) belongs to a module of the IOD. The node defines no "
            "specialized or private SOP classes."
        )
    add("")
    add("### 8.6 Private Transfer Syntaxes")
    add("")
    private_ts = [ts for ts in s.scp_transfer_syntaxes if not ts.startswith("1.2.840.10008.")]
    if private_ts:
        add("Accepted: " + ", ".join(f"`{ts}`" for ts in private_ts))
    else:
        add("None.")
    add("")


# -- command line -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dicom_node.conformance [--check] [--output PATH]``."""
    parser = argparse.ArgumentParser(
        prog="python -m dicom_node.conformance",
        description="Write the DICOM Conformance Statement from the code, or check it.",
    )
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help=f"default: {DEFAULT_OUTPUT}"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="do not write; exit 1 with a diff when the file is not what the code says",
    )
    args = parser.parse_args(argv)
    text = render_markdown(build_statement())
    path: Path = args.output
    if args.check:
        current = path.read_text(encoding="utf-8") if path.is_file() else ""
        if current == text:
            print(f"{path} is up to date")
            return 0
        sys.stdout.writelines(
            difflib.unified_diff(
                current.splitlines(keepends=True),
                text.splitlines(keepends=True),
                fromfile=str(path),
                tofile=f"{path} (from the code)",
            )
        )
        print(
            f"{path} is stale: run `python -m dicom_node.conformance` (make conformance)",
            file=sys.stderr,
        )
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
