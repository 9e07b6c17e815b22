"""``config.toml`` -> typed, validated settings.

One pydantic-settings model, :class:`Settings`, with one section per table of
``config.toml``.  Every setting can also come from an environment variable
named ``DICOM_NODE_<SECTION>__<KEY>`` (e.g. ``DICOM_NODE_NODE__PORT=11113``);
the environment wins over the file, the file over the defaults.  Unknown keys
are errors, never silently ignored.

Build the settings once in the CLI with :func:`load_settings` and pass them
down; nothing reads the configuration behind the caller's back.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import sys
from datetime import timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    SecretStr,
    SerializationInfo,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from dicom_node.errors import ConfigError
from dicom_node.receive.uids import UidPolicy

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AuditSettings",
    "CelerySettings",
    "DestinationSettings",
    "DuplicatePolicy",
    "ModelLabelSettings",
    "ModelSettings",
    "NodeSettings",
    "PeerSettings",
    "ResultKind",
    "RetentionSettings",
    "RuleSettings",
    "Settings",
    "StorageSettings",
    "WebSettings",
    "WorkerSettings",
    "load_settings",
]

DEFAULT_CONFIG_PATH = Path("config.toml")
"""Where :func:`load_settings` looks when no path is given."""

_AE_TITLE_RE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")


def _check_ae_title(value: str) -> str:
    """Validate an AE title (PS3.5 6.2, VR AE).

    At most 16 characters of the default repertoire, no backslash, no control
    characters, not only spaces.  Leading/trailing spaces are not significant
    and are stripped.
    """
    stripped = value.strip()
    if not stripped or not _AE_TITLE_RE.match(value) or len(value) > 16:
        raise ValueError(
            f"invalid AE title {value!r}: 1-16 printable ASCII characters, "
            "no backslash, not only spaces (PS3.5 6.2)"
        )
    return stripped


AETitle = Annotated[str, AfterValidator(_check_ae_title)]
Port = Annotated[int, Field(ge=1, le=65535)]


#: The kinds :mod:`dicom_node.results.registry` registers when it is imported
#: (its ``BUILT_IN_WRITERS``, in order).
_BUILT_IN_RESULT_KINDS = ("seg", "sr", "gsps", "sc")


def _check_result_kind(value: str) -> str:
    """A result kind registered in :mod:`dicom_node.results.registry`.

    Until the registry is imported the registered kinds are the built-in ones,
    so a built-in kind is taken without importing the registry (and with it the
    result writers, highdicom and numpy): the CLI reads a configuration fast.
    """
    if value in _BUILT_IN_RESULT_KINDS and "dicom_node.results.registry" not in sys.modules:
        return value
    from dicom_node.results.registry import result_kinds

    kinds = result_kinds()
    if value not in kinds:
        raise ValueError(f"unknown result kind {value!r}; choose from {', '.join(kinds)}")
    return value


ResultKind = Annotated[str, AfterValidator(_check_result_kind)]
"""A result kind in ``outputs``: ``"seg"``, ``"sr"``, ``"gsps"``, ``"sc"`` or a registered one."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DuplicatePolicy(str, Enum):
    """What to do when an instance arrives again with *different* bytes.

    The same bytes again are always recorded once and acknowledged.
    """

    KEEP_FIRST = "keep-first"
    """Keep the stored copy, acknowledge, log a warning."""
    REPLACE = "replace"
    """Replace the stored copy with the new one."""
    REJECT = "reject"
    """Answer a failure status and keep the stored copy."""


class NodeSettings(_Section):
    """``[node]``: the DICOM network edge (PS3.8 upper layer, PS3.7 DIMSE)."""

    ae_title: AETitle = "DICOM_NODE"
    host: str = "0.0.0.0"
    port: Port = 11112
    max_pdu: Annotated[int, Field(ge=0)] = 262144
    """Maximum PDU length we accept (0 = unlimited); larger is faster."""
    max_associations: Annotated[int, Field(ge=1)] = 32
    """Established associations at once; beyond, A-ASSOCIATE-RJ (transient,
    local limit exceeded, PS3.8 9.3.4)."""
    require_called_ae: bool = True
    """Reject associations whose Called AE Title is not :attr:`ae_title`."""
    # -- limits on what one peer can hold (connections, memory, time) -----------------
    max_connections: Annotated[int | None, Field(ge=1)] = None
    """TCP connections at once, associated or not (each has one thread, so this
    also bounds the receiver's threads); ``None``: twice :attr:`max_associations`.
    Beyond, the connection is refused with A-ASSOCIATE-RJ (transient, local limit
    exceeded)."""
    max_connections_per_host: Annotated[int | None, Field(ge=1)] = None
    """Connections at once from one source address; ``None``: :attr:`max_associations`."""
    max_associate_rq: Annotated[int, Field(ge=1024, le=16 * 2**20)] = 65536
    """Longest A-ASSOCIATE-RQ accepted, in bytes (the first PDU on a connection);
    longer ones get A-ASSOCIATE-RJ (permanent, local limit exceeded)."""
    acse_timeout: timedelta = timedelta(seconds=30)
    """Deadline of the whole ACSE phase, from accepting the connection to the
    A-ASSOCIATE-AC/RJ (the ARTIM timer, PS3.8 9.1.6)."""
    dimse_timeout: timedelta = timedelta(seconds=60)
    """Deadline of one DIMSE message as it arrives, from its first byte to its
    last fragment (command and data set); must cover the largest data set
    over the slowest link."""
    network_timeout: timedelta = timedelta(seconds=60)
    """Longest wait for any bytes at all from an associated peer (idle)."""
    shutdown_grace: timedelta = timedelta(seconds=30)
    """How long SIGTERM waits for in-flight associations to finish."""
    duplicate_policy: DuplicatePolicy = DuplicatePolicy.KEEP_FIRST
    receivers: Annotated[int, Field(ge=1, le=64)] = 1
    """Receiver processes accepting from the DICOM port; 1 = in-process."""
    max_incoming_pdu: Annotated[int | None, Field(ge=4096, le=2**30)] = None
    """Longest PDU accepted from an associated peer, in bytes: what one
    association's PDU buffer can reach (a longer one is aborted as soon as its
    header arrives).  ``None``: :attr:`max_pdu` plus 1 KiB of slack for senders
    that count headers in it (PS3.8 D.1); with ``max_pdu = 0``, 64 MiB."""
    max_associations_per_ae: Annotated[int | None, Field(ge=1)] = None
    """Established associations at once from one Calling AE Title; beyond,
    A-ASSOCIATE-RJ (transient, local limit exceeded).  ``None``: only
    :attr:`max_associations` applies."""

    # -- DICOM over TLS (PS3.15 B.9 BCP 195 secure transport connection profile) ------
    tls_port: Port | None = None
    """A second listening port that speaks DICOM over TLS (``None``: no TLS)."""
    tls_only: bool = False
    """Listen on :attr:`tls_port` only, without the plain :attr:`port`."""
    tls_cert_file: Path | None = None
    """The node's certificate (PEM, may hold the chain)."""
    tls_key_file: Path | None = None
    """The private key of :attr:`tls_cert_file` (PEM, unencrypted)."""
    tls_ca_file: Path | None = None
    """CA certificates (PEM) that client certificates are verified against;
    ``None``: client certificates are neither asked for nor accepted."""
    tls_require_client_cert: bool = False
    """Refuse TLS clients that present no certificate signed by :attr:`tls_ca_file`
    (without it, a client may present none; one it presents must still verify)."""

    # -- what a received data set may be (PS3.4 B.2.3 statuses on refusal) --------
    uid_policy: UidPolicy = UidPolicy.STRICT
    """UIDs that break PS3.5 9.1 (digits and dots, no leading zeros, at most 64):
    ``strict`` answers 0xC005, ``warn`` stores and logs a warning (legacy senders;
    ``[[peers]] uid_policy`` overrides it per sender).  Empty, over-long and
    non-ASCII values are refused either way."""
    accept_deflated: bool = True
    """Accept Deflated Explicit VR Little Endian (PS3.5 A.5); ``false`` rejects its
    presentation contexts.  Either way at most 8 MiB of a data set is inflated."""
    max_dataset_mb: Annotated[int, Field(ge=1)] = 4096
    """Largest data set one C-STORE may carry (MiB); larger ones get 0xA700."""
    disk_check_mb: Annotated[int, Field(ge=1)] = 16
    """While a data set is written, free space is checked against
    ``[storage] min_free_disk_mb`` after every this many MiB (0xA700 below it)."""

    @field_validator("tls_cert_file", "tls_key_file", "tls_ca_file")
    @classmethod
    def _tls_file_exists(cls, value: Path | None) -> Path | None:
        """Relative to the configuration file's folder; the file must exist."""
        if value is None:
            return None
        if not value.is_absolute():
            toml_path = _TOML_PATH["path"]
            base = toml_path.resolve().parent if toml_path is not None else Path.cwd()
            value = (base / value).resolve()
        if not value.is_file():
            raise ValueError(f"file not found: {value}")
        return value

    @model_validator(mode="after")
    def _tls_settings_fit_together(self) -> NodeSettings:
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file must be given together")
        if self.tls_port is not None and self.tls_cert_file is None:
            raise ValueError("tls_port needs tls_cert_file and tls_key_file")
        if self.tls_require_client_cert and self.tls_ca_file is None:
            raise ValueError("tls_require_client_cert needs tls_ca_file (the CA to verify with)")
        if self.tls_only and self.tls_port is None:
            raise ValueError("tls_only needs tls_port")
        if self.tls_port is not None and self.tls_port == self.port and not self.tls_only:
            raise ValueError(f"tls_port ({self.tls_port}) must differ from port")
        return self

    @model_validator(mode="after")
    def _incoming_pdu_covers_max_pdu(self) -> NodeSettings:
        if self.max_incoming_pdu is not None and self.max_incoming_pdu < self.max_pdu:
            raise ValueError(
                f"max_incoming_pdu ({self.max_incoming_pdu}) must be at least "
                f"max_pdu ({self.max_pdu}), the most we told peers they may send"
            )
        return self

    @property
    def incoming_pdu_limit(self) -> int:
        """:attr:`max_incoming_pdu` with its default applied."""
        if self.max_incoming_pdu is not None:
            return self.max_incoming_pdu
        return self.max_pdu + 1024 if self.max_pdu else 64 * 2**20

    @model_validator(mode="after")
    def _connections_cover_associations(self) -> NodeSettings:
        if self.max_connections is not None and self.max_connections < self.max_associations:
            raise ValueError(
                f"max_connections ({self.max_connections}) must be at least "
                f"max_associations ({self.max_associations})"
            )
        return self

    @property
    def connection_limit(self) -> int:
        """:attr:`max_connections` with its default applied."""
        return self.max_connections or 2 * self.max_associations

    @property
    def per_host_limit(self) -> int:
        """:attr:`max_connections_per_host` with its default applied."""
        return self.max_connections_per_host or self.max_associations


class StorageSettings(_Section):
    """``[storage]``: the spool folder and the database."""

    spool_dir: Path = Path("var/spool")
    database_url: str = "sqlite:///var/dicom-node.db"
    min_free_disk_mb: Annotated[int, Field(ge=0)] = 1024
    """Below this much free space on the spool's disk, C-STORE answers 0xA700."""
    fsync: bool = True
    """fsync each received file before acknowledging it (turn off only for tests)."""
    intake_journal: bool = True
    """Acknowledge a new instance of a series being received after one durable append
    to an intake journal (``<spool>/.intake/``, group-committed), and write its file
    and database rows in batches just after; the journal is replayed at start-up.
    Off: every instance's file and rows are written before it is acknowledged."""
    intake_max_instance_kb: Annotated[int, Field(ge=0)] = 256
    """Data sets up to this size are held in memory and journaled; larger ones are
    written straight to their file (measured: a 512 KB CT slice is received faster
    with one file write and flush than with its bytes written twice, journal and
    file; 8 KB instances are faster through the journal)."""
    results_dir: Path = Path("var/results")
    """Result objects (SEG, SR, SC) wait here until every delivery is done."""
    shared_spool: bool = False
    """The spool is a volume that receivers on other hosts (or other ports) write to
    as well (``serve --role receiver`` on several hosts): each receiver keeps its
    unfinished files in a temporary folder of its own (``.tmp/<host>-<port>``), and
    the start-up reconciliation leaves spool files younger than
    ``reconcile_min_age_s`` alone (another receiver may be committing them)."""
    reconcile_min_age_s: Annotated[float, Field(ge=0)] = 600.0
    """With ``shared_spool``: how old a spool file without a database row must be
    before a starting receiver registers or quarantines it."""

    @field_validator("database_url")
    @classmethod
    def _known_database(cls, value: str) -> str:
        if not value.startswith(("sqlite:", "postgresql:", "postgresql+")):
            raise ValueError(
                f"unsupported database_url {value!r}: use sqlite:///PATH or postgresql://..."
            )
        return value


class RetentionSettings(_Section):
    """``[retention]``: how long received instances and results stay on disk.

    Off by default (everything is kept).  Only what the node has finished
    with is ever deleted (:mod:`storage.retention`): a series whose
    completion is pending, whose study has a queued, running or retrying job,
    or whose results have a pending delivery is kept whatever its age.
    """

    keep_days: Annotated[float | None, Field(gt=0)] = None
    """Delete received instances, and the results made from them, this many days
    after the series was last received; ``None``: no age limit."""
    disk_high_watermark_percent: Annotated[float | None, Field(gt=0, le=100)] = None
    """When the spool's (or the results folder's) file system is fuller than this,
    the least recently received purgeable series are deleted, younger than
    ``keep_days`` too, until it is down to ``disk_low_watermark_percent``;
    ``None``: no watermark."""
    disk_low_watermark_percent: Annotated[float | None, Field(gt=0, lt=100)] = None
    """What a watermark purge frees down to; ``None``: 10 points below the high mark."""
    interval_s: Annotated[float, Field(gt=0)] = 300.0
    """How often the collector process looks for something to purge."""
    batch_size: Annotated[int, Field(ge=1, le=10000)] = 100
    """Series marked and deleted per step."""

    @model_validator(mode="after")
    def _low_below_high(self) -> RetentionSettings:
        high, low = self.disk_high_watermark_percent, self.disk_low_watermark_percent
        if low is not None and high is None:
            raise ValueError("disk_low_watermark_percent needs disk_high_watermark_percent")
        if low is not None and high is not None and low >= high:
            raise ValueError(
                f"disk_low_watermark_percent ({low}) must be below "
                f"disk_high_watermark_percent ({high})"
            )
        return self

    @property
    def enabled(self) -> bool:
        """True when an age limit or a watermark is set."""
        return self.keep_days is not None or self.disk_high_watermark_percent is not None

    @property
    def low_watermark(self) -> float | None:
        """:attr:`disk_low_watermark_percent` with its default applied."""
        high = self.disk_high_watermark_percent
        if high is None:
            return None
        if self.disk_low_watermark_percent is not None:
            return self.disk_low_watermark_percent
        return max(high - 10.0, high / 2)


class AuditSettings(_Section):
    """``[audit]``: where the audit trail goes (:mod:`dicom_node.audit`).

    Every event is kept in the database (``dicom-node audit`` lists it; the
    dashboard shows it to operators) unless ``database = false``; besides,
    ``jsonl_file`` appends one JSON object a line, and ``syslog`` sends each
    event to a syslog collector as an RFC 5424 message with a JSON body
    (``udp://host:514``, ``tcp://host:601`` or a local socket such as ``/dev/log``).
    """

    database: bool = True
    jsonl_file: Path | None = None
    syslog: str | None = None
    syslog_facility: Literal["auth", "authpriv", "local0", "local1", "local2", "local3",
                             "local4", "local5", "local6", "local7", "user"] = "authpriv"

    @field_validator("syslog")
    @classmethod
    def _syslog_address(cls, value: str | None) -> str | None:
        if value is None or value.startswith("/"):
            return value
        scheme, sep, rest = value.partition("://")
        host, _, port = rest.rpartition(":")
        if not sep or scheme not in ("udp", "tcp") or not host or not port.isdigit():
            raise ValueError(
                f"syslog {value!r}: use udp://HOST:PORT, tcp://HOST:PORT or a socket path"
            )
        return value


class PeerSettings(_Section):
    """``[[peers]]``: a known sender (Calling AE Title, and optionally its host)."""

    ae_title: AETitle
    host: str | None = None
    """IP address or host name; ``None`` accepts the AE title from any host."""
    uid_policy: UidPolicy | None = None
    """``[node] uid_policy`` for this sender only (``None``: the node's)."""


class DestinationSettings(_Section):
    """``[[destinations]]``: where results go; what every destination type has.

    Each ``type`` has its own settings model, a subclass registered with its
    destination in :mod:`dicom_node.deliver.destinations.registry` (``dicom``: a
    DICOM peer, ``folder``: a folder); a table is validated by the model its
    ``type`` names (:data:`Destination`).
    """

    required_fields: ClassVar[tuple[str, ...]] = ()
    """Keys the type needs; missing ones are reported in one line."""
    path_fields: ClassVar[tuple[str, ...]] = ()
    """Path settings made relative to the configuration file (:meth:`Settings.resolve_paths`)."""

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    type: str
    outputs: list[ResultKind] | None = None
    """Narrow the outputs a rule sends here (``None`` = all the rule makes)."""
    max_attempts: Annotated[int, Field(ge=1)] = 12
    """Attempts per object before its delivery is marked failed (retryable by command)."""
    retry_base_s: Annotated[float, Field(gt=0)] = 5.0
    """Wait after the first failed attempt; doubled after each further one."""
    retry_max_s: Annotated[float, Field(gt=0)] = 600.0
    """Longest wait between attempts."""

    @model_validator(mode="before")
    @classmethod
    def _complete_for_type(cls, data: Any) -> Any:
        if isinstance(data, dict):
            missing = [k for k in cls.required_fields if data.get(k) is None]
            if missing:
                raise ValueError(
                    f"destination {data.get('name')!r} of type {data.get('type')!r} "
                    f"needs {', '.join(missing)}"
                )
        return data


def _destination(value: Any) -> DestinationSettings:
    """Validate a ``[[destinations]]`` table with the settings model of its ``type``."""
    if isinstance(value, DestinationSettings):
        return value
    if not isinstance(value, dict):
        raise ValueError("a destination is a table")
    from dicom_node.deliver.destinations.registry import destination_type

    model = destination_type(value.get("type")).settings_model
    return model.model_validate(value)


def _dump_destination(value: DestinationSettings, info: SerializationInfo) -> Any:
    """Dump a destination with the fields of its own type (not only the base's)."""
    return value.model_dump(mode=info.mode)


Destination = Annotated[
    DestinationSettings,
    PlainValidator(_destination),
    PlainSerializer(_dump_destination),
]
"""A destination's settings: a union discriminated by ``type`` over the registered types."""


QueueName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")]
"""A Celery queue's name."""


class RuleSettings(_Section):
    """``[[rules]]``: which pipelines run on which series, and where results go.

    The match language is data (see ``dicom_node.collect.routing``), never code.
    """

    name: Annotated[str, Field(min_length=1)]
    match: dict[str, Any] = Field(default_factory=dict)
    pipelines: list[str] = Field(default_factory=list)
    destinations: list[str] = Field(default_factory=list)
    trigger: Literal["series", "study"] = "series"
    quiet_period_s: Annotated[float, Field(ge=0)] = 30.0
    """Seconds with no new instance before the series (study) counts as complete
    (at least 1 s is waited)."""
    outputs: list[ResultKind] = Field(default_factory=lambda: ["seg", "sr"])
    priority: int = 0
    fallback: bool = False
    negative_report: bool = True
    """When a pipeline finds nothing on a series (no finding, no segment), send an
    SR that says so (TID 1500, Finding = "Clinical finding absent"; needs "sr" in
    ``outputs``); ``false`` sends nothing then."""
    queue: QueueName | None = None
    """With ``[worker] executor = "celery"``: the Celery queue of this rule's jobs
    (e.g. ``"gpu"``); unset, ``[celery] default_queue``."""


Code = tuple[str, str, str]
"""A coded concept in config: ``[code value, coding scheme designator, code meaning]``."""


class ModelLabelSettings(_Section):
    """One output label of a site model and its codes (PS3.3 C.8.20.2 Segment Description)."""

    value: Annotated[int, Field(ge=1)]
    label: Annotated[str, Field(min_length=1, max_length=64)]
    category: Code
    type: Code
    anatomic_region: Code | None = None
    measure_volume: bool = True


def _label_spec(lab: ModelLabelSettings) -> Any:
    """The :class:`ai_models.pipelines.configured.LabelSpec` of a ``[[models.labels]]`` table."""
    from ai_models.pipelines.configured import LabelSpec
    from ai_models.types import CodedConcept

    return LabelSpec(
        value=lab.value,
        label=lab.label,
        category=CodedConcept(*lab.category),
        type=CodedConcept(*lab.type),
        anatomic_region=None if lab.anatomic_region is None else CodedConcept(*lab.anatomic_region),
        measure_volume=lab.measure_volume,
    )


class ModelSettings(_Section):
    """``[[models]]``: a site's own model, plugged in with no code.

    ``kind`` says how ``path`` is loaded: a TorchScript file, a MONAI bundle
    folder (``configs/`` + ``models/``; only trusted bundles: MONAI evaluates
    expressions in them) or a state dict for a built-in ``architecture``.
    The model becomes a pipeline named ``name`` that rules can use.

    Two kinds run a public model's folder unchanged, with its own pre- and
    post-processing and its own label names (codes from the shipped anatomy
    table, :mod:`ai_models.label_codes`; ``labels`` only to override or add):

    * ``kind = "nnunetv2"``: an nnU-Net v2 trained-model folder (TotalSegmentator's
      format) with ``configuration``, ``folds``, ``checkpoint``,
      ``tile_step_size``, ``use_mirroring`` and ``orientation`` (``"auto"``);
    * ``kind = "monai-bundle"``: a MONAI Model Zoo bundle run through its own
      ``configs/inference.json`` (``config_file``, ``overrides``).

    Otherwise two forms:

    * a **segmentation model** described here (``labels``, spacing,
      normalization, ...), run by the generic segmentation pipeline;
    * a **shipped pipeline with the site's weights** (``pipeline =
      "cxr-findings"`` etc.): the pipeline's own pre- and post-processing,
      with the labels, codes and thresholds of the weights' sidecar JSON (or
      the bundle's ``configs/metadata.json``); ``labels`` is then not used.
    """

    name: Annotated[str, Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")]
    kind: Literal["torchscript", "bundle", "state_dict", "nnunetv2", "monai-bundle"]
    path: Path
    pipeline: str | None = None
    """A shipped pipeline (``ai_models.pipelines.SHIPPED_PIPELINES``) run with these weights."""
    labels: list[ModelLabelSettings] = Field(default_factory=list)
    description: str = ""
    modalities: list[str] = Field(default_factory=list)
    version: str = "1"
    gpu_memory_mb: Annotated[int, Field(ge=0)] = 4096
    """The most GPU memory one run of the model needs (MiB): a worker on a GPU
    starts its jobs only while this fits (measure it on the site's GPU)."""
    spacing_mm: tuple[float, float, float] | None = None
    orientation: Literal["auto", "source", "LPS", "RAS"] = "source"
    """Array layout the model expects; ``"auto"`` (nnU-Net only, its default):
    from the folder's image reader (``RAS`` for ``NibabelIOWithReorient``)."""
    normalization: Literal["window", "zscore", "none"] = "window"
    window: tuple[float, float] | None = (-1000.0, 1000.0)
    patch_size: tuple[int, int, int] = (96, 96, 96)
    sw_batch_size: Annotated[int, Field(ge=1)] = 2
    overlap: Annotated[float, Field(ge=0, lt=1)] = 0.25
    output: Literal["argmax", "sigmoid"] = "argmax"
    architecture: str | None = None
    architecture_kwargs: dict[str, Any] = Field(default_factory=dict)
    min_slices: Annotated[int, Field(ge=1)] = 1
    # -- nnunetv2 ------------------------------------------------------------------
    configuration: str = "3d_fullres"
    """nnU-Net configuration (``3d_fullres``, ``2d``, ...; a ``*_trainer__plans__config``
    folder of ``path``)."""
    folds: list[int | Literal["all"]] = Field(default_factory=lambda: [0])  # type: ignore[arg-type]
    """nnU-Net folds to ensemble (``fold_N`` folders), or ``["all"]``."""
    checkpoint: str = "checkpoint_final.pth"
    tile_step_size: Annotated[float, Field(gt=0, le=1)] = 0.5
    """nnU-Net sliding-window step as a fraction of the patch (0.5: half overlap)."""
    use_mirroring: bool = True
    """nnU-Net test-time mirroring (8x the compute in 3D; ``false`` for speed)."""
    # -- monai-bundle --------------------------------------------------------------
    config_file: str = "configs/inference.json"
    """The bundle's inference config, relative to ``path``."""
    overrides: dict[str, Any] = Field(default_factory=dict)
    """Bundle config ids to override, e.g. ``{"inferer#sw_batch_size" = 2}``."""

    #: Fields that only one kind reads (a field set for another kind is an error).
    _KIND_ONLY: ClassVar[dict[str, tuple[str, ...]]] = {
        "nnunetv2": ("configuration", "folds", "checkpoint", "tile_step_size", "use_mirroring"),
        "monai-bundle": ("config_file", "overrides"),
    }
    #: Fields of the generic segmentation pipeline, not read by the folder kinds.
    _GENERIC_ONLY: ClassVar[tuple[str, ...]] = (
        "pipeline", "spacing_mm", "normalization", "window", "patch_size", "sw_batch_size",
        "overlap", "output", "architecture", "architecture_kwargs",
    )

    @field_validator("pipeline")
    @classmethod
    def _shipped_pipeline(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from ai_models.pipelines import SHIPPED_PIPELINES

        if value not in SHIPPED_PIPELINES:
            raise ValueError(
                f"pipeline {value!r} is not a shipped pipeline; "
                f"choose from {', '.join(sorted(SHIPPED_PIPELINES))}"
            )
        return value

    @model_validator(mode="after")
    def _fields_of_the_kind(self) -> ModelSettings:
        set_fields = self.model_fields_set
        for kind, names in self._KIND_ONLY.items():
            stray = [n for n in names if n in set_fields and self.kind != kind]
            if stray:
                raise ValueError(
                    f"model {self.name!r}: {', '.join(stray)} apply to kind = {kind!r} only, "
                    f"not {self.kind!r}"
                )
        if self.kind in self._KIND_ONLY:
            stray = [n for n in self._GENERIC_ONLY if n in set_fields]
            if stray:
                raise ValueError(
                    f"model {self.name!r}: kind = {self.kind!r} runs the model folder's own "
                    f"pre- and post-processing; remove {', '.join(stray)}"
                )
        elif self.orientation == "auto":
            raise ValueError(
                f'model {self.name!r}: orientation = "auto" applies to kind = "nnunetv2" only'
            )
        return self

    @model_validator(mode="after")
    def _architecture_for_state_dict(self) -> ModelSettings:
        if self.kind in self._KIND_ONLY:
            values = [lab.value for lab in self.labels]
            if len(set(values)) != len(values):
                raise ValueError(f"model {self.name!r}: label values must be unique")
            return self
        if self.pipeline is None and not self.labels:
            raise ValueError(
                f"model {self.name!r}: a segmentation model needs at least one [[models.labels]] "
                "(or set pipeline = a shipped pipeline to use its sidecar's labels)"
            )
        if self.pipeline is not None and self.labels:
            raise ValueError(
                f"model {self.name!r}: labels come from the weights' metadata when "
                f"pipeline = {self.pipeline!r}; remove [[models.labels]]"
            )
        values = [lab.value for lab in self.labels]
        if len(set(values)) != len(values):
            raise ValueError(f"model {self.name!r}: label values must be unique")
        return self

    def to_spec(self, device: str | None = None) -> Any:
        """The :class:`ai_models.pipelines.SegmentationSpec` (or, with ``pipeline``,
        :class:`ai_models.pipelines.SiteWeightsSpec`) this describes."""
        from ai_models.pipelines.configured import LabelSpec, SegmentationSpec
        from ai_models.types import CodedConcept

        if self.kind in self._KIND_ONLY:
            from ai_models.pipelines import build_model_spec

            options: dict[str, Any] = {
                "name": self.name,
                "path": self.path,
                "labels": [_label_spec(lab) for lab in self.labels],
                "device": None if device in (None, "auto") else device,
            }
            for key in (
                "description", "modalities", "version", "gpu_memory_mb", "min_slices",
                "orientation", *self._KIND_ONLY[self.kind],
            ):
                if key in self.model_fields_set or key in self._KIND_ONLY[self.kind]:
                    value = getattr(self, key)
                    options[key] = tuple(value) if isinstance(value, list) else value
            if self.kind == "nnunetv2" and "orientation" not in self.model_fields_set:
                options["orientation"] = "auto"
            elif self.kind != "nnunetv2":
                options.pop("orientation", None)
            return build_model_spec(self.kind, **options)

        if self.pipeline is not None:
            from ai_models.pipelines import SiteWeightsSpec

            return SiteWeightsSpec(
                name=self.name,
                pipeline=self.pipeline,
                kind=self.kind,
                path=self.path,
                description=self.description,
                version="" if "version" not in self.model_fields_set else self.version,
                device=None if device in (None, "auto") else device,
            )

        def code(c: Code | None) -> CodedConcept | None:
            return None if c is None else CodedConcept(*c)

        return SegmentationSpec(
            name=self.name,
            kind=self.kind,
            path=self.path,
            labels=[
                LabelSpec(
                    value=lab.value,
                    label=lab.label,
                    category=CodedConcept(*lab.category),
                    type=CodedConcept(*lab.type),
                    anatomic_region=code(lab.anatomic_region),
                    measure_volume=lab.measure_volume,
                )
                for lab in self.labels
            ],
            description=self.description,
            modalities=tuple(self.modalities),
            version=self.version,
            gpu_memory_mb=self.gpu_memory_mb,
            spacing_mm=self.spacing_mm,
            orientation=self.orientation,
            normalization=self.normalization,
            window=self.window,
            patch_size=self.patch_size,
            sw_batch_size=self.sw_batch_size,
            overlap=self.overlap,
            output=self.output,
            architecture=self.architecture,
            architecture_kwargs=dict(self.architecture_kwargs),
            min_slices=self.min_slices,
            device=None if device in (None, "auto") else device,
        )


class WorkerSettings(_Section):
    """``[worker]``: the local worker pool, the job queue and the collector."""

    concurrency: Annotated[int, Field(ge=0)] = 1
    """Local worker threads; 0 leaves jobs to workers elsewhere."""
    device: str = "auto"
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``."""
    max_attempts: Annotated[int, Field(ge=1)] = 3
    """Attempts per job (a worker that dies counts) before it is marked failed."""
    lease_s: Annotated[float, Field(ge=2)] = 60.0
    """How long a job stays with a worker that stopped heart-beating."""
    retry_base_s: Annotated[float, Field(gt=0)] = 10.0
    """Wait before a failed job's next attempt; doubled each time."""
    retry_max_s: Annotated[float, Field(gt=0)] = 600.0
    poll_interval_s: Annotated[float, Field(gt=0, le=60)] = 0.5
    """How often the collector, the workers and the sender look for work."""
    sc_slices: Literal["mask", "all"] = "mask"
    """Slices of the opt-in secondary-capture overlay: only those with a finding, or all."""
    gpu_headroom_mb: Annotated[int, Field(ge=0)] = 1024
    """GPU memory a worker keeps free besides what its jobs' pipelines declare
    (``gpu_memory_mb``): the CUDA context, allocator caches, other users."""
    executor: str = "local"
    """Where jobs run: ``local``, the ``concurrency`` threads of ``serve``; ``celery``,
    ``dicom-node worker`` processes on any host, fed through ``[celery]``'s broker
    (one of :data:`dicom_node.work.executor.EXECUTORS`)."""

    @field_validator("executor")
    @classmethod
    def _known_executor(cls, value: str) -> str:
        from dicom_node.work.executor import EXECUTORS

        if value not in EXECUTORS:
            raise ValueError(f"unknown executor {value!r}; known: {', '.join(sorted(EXECUTORS))}")
        return value


class CelerySettings(_Section):
    """``[celery]``: the broker of ``[worker] executor = "celery"``.

    The database stays the source of truth: a message only says "job N may be
    due"; the worker claims the job's lease in the database before running it,
    so a message delivered twice runs the job once, and ``serve`` publishes
    again the due jobs whose message may have been lost (a broker restart).
    """

    broker_url: SecretStr = SecretStr("redis://127.0.0.1:6379/0")
    """``redis://host:6379/N`` or ``amqp://user:password@host:5672/vhost``; better
    from the environment (``DICOM_NODE_CELERY__BROKER_URL``) when it holds a password."""
    default_queue: QueueName = "cpu"
    """The queue of jobs whose rule names none."""
    deliver_queue: QueueName | None = None
    """Set (e.g. ``"deliver"``): deliveries too are handed to ``dicom-node worker``
    processes consuming this queue (``--queues deliver``), so that sending runs on
    other hosts; unset, a ``sender`` role of ``serve`` sends them."""
    republish_after_s: Annotated[float, Field(ge=1)] = 60.0
    """A job still due this long after its message was published is published again."""
    visibility_timeout_s: Annotated[float, Field(ge=60)] = 3600.0
    """Redis only: how long an unacknowledged message waits before it is delivered
    again (longer than the longest job; late acknowledgement)."""


WebRole = Literal["viewer", "operator"]
"""The roles of web users (:mod:`storage.users`)."""


class WebSettings(_Section):
    """``[web]``: dashboard, REST API and /metrics, and who may use them.

    Who (:mod:`dicom_node.web.auth`):

    * local users (``dicom-node users add``), each a ``viewer`` (reads) or an
      ``operator`` (also retries jobs and forces completions), log in on the
      console's login page; the browser then holds a session cookie that
      expires after ``session_idle_minutes`` without a request and at the
      latest ``session_max_hours`` after the login;
    * ``token``: for machines (Prometheus, scripts) as ``Authorization:
      Bearer <token>``, with an operator's rights and no cookie (better from
      the environment, ``DICOM_NODE_WEB__TOKEN``, than in the file); a
      placeholder (``change-me``) or fewer than 16 characters are refused;
    * single sign-on: a reverse proxy that authenticates users names them in
      ``trusted_proxy_header`` (e.g. ``X-Remote-User``); the header is believed
      only on connections from ``trusted_proxies`` (addresses or networks).
      The user's role is its local user's, or ``proxy_default_role`` for
      names without a local user (``None``: those are refused).

    With none of these (no token, no proxy header, no user) the web surface
    is open, and only on a loopback ``host``: ``serve`` refuses any other
    bind address until one of them is set up.

    ``phi_roles``: the roles shown patient names, IDs and accession numbers;
    the others see them masked.  ``cookie_secure`` marks the session cookie
    ``Secure`` even on requests that came over plain HTTP (it is marked on
    HTTPS ones, and on those a trusted proxy says came over HTTPS, anyway).
    ``login_max_failures`` failed logins of one name or from one address
    within ``login_lockout_s`` refuse further tries (429) for that long.

    ``allowed_hosts``: the names (``name`` for any port, ``name:port`` for
    one) that requests may carry in ``Host`` and browsers in ``Origin``
    (:mod:`dicom_node.web.hosts`), besides the loopback names, always
    allowed, and ``host`` when it is not a wildcard address.  ``"*"``
    allows any ``Host`` (only when something in front checks it).  From
    the environment: ``DICOM_NODE_WEB__ALLOWED_HOSTS="node.example.org,10.0.0.5"``.
    """

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 8080
    token: SecretStr | None = None
    allowed_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    phi_roles: Annotated[list[WebRole], NoDecode] = Field(
        default_factory=lambda: list[WebRole](["operator"])
    )
    session_idle_minutes: Annotated[float, Field(gt=0, le=7 * 24 * 60)] = 30.0
    session_max_hours: Annotated[float, Field(gt=0, le=30 * 24)] = 12.0
    cookie_secure: bool = False
    trusted_proxy_header: str | None = None
    trusted_proxies: Annotated[list[str], NoDecode] = Field(default_factory=list)
    proxy_default_role: WebRole | None = None
    login_max_failures: Annotated[int, Field(ge=1)] = 5
    login_lockout_s: Annotated[float, Field(ge=1)] = 300.0
    login_failure_delay_s: Annotated[float, Field(ge=0, le=10)] = 0.5
    """Every failed login is answered after this long (slows guessing)."""
    viewer_url: str | None = None
    """A web viewer's address for a study, with ``{study}`` where its
    StudyInstanceUID goes, e.g. ``"https://ohif.example.org/viewer?StudyInstanceUIDs={study}"``;
    the console links each study and job to it (``None``: no link)."""

    @field_validator("viewer_url")
    @classmethod
    def _viewer_url(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        if "{study}" not in value:
            raise ValueError("viewer_url needs {study} where the StudyInstanceUID goes")
        if not value.startswith(("http://", "https://", "/")):
            raise ValueError("viewer_url must be an http(s) address or a path on this host")
        return value.strip()

    #: A token never changed from the deployment files' placeholder.
    PLACEHOLDER: ClassVar[re.Pattern[str]] = re.compile(r"^\W*change[-_ ]?me", re.IGNORECASE)
    #: ``*``, ``name[:port]``, ``[v6][:port]`` or a bare IPv6 address.
    ALLOWED_HOST: ClassVar[re.Pattern[str]] = re.compile(
        r"\*"
        r"|[a-z0-9_]([a-z0-9_.-]*[a-z0-9_])?\.?(:\d{1,5})?"
        r"|\[[0-9a-f:.]+\](:\d{1,5})?"
        r"|[0-9a-f.]*:[0-9a-f:.]*"
    )
    #: An HTTP field name (RFC 9110 section 5.1: a token).
    HEADER_NAME: ClassVar[re.Pattern[str]] = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+")

    @field_validator("token")
    @classmethod
    def _token_long_enough(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None:
            return value
        secret = value.get_secret_value()
        if cls.PLACEHOLDER.search(secret):
            raise ValueError(
                "the web token is still the placeholder ('change-me'): set a secret of "
                "at least 16 characters (DICOM_NODE_WEB__TOKEN)"
            )
        if len(secret) < 16:
            raise ValueError("the web token must have at least 16 characters")
        return value

    @field_validator("allowed_hosts", "phi_roles", "trusted_proxies", mode="before")
    @classmethod
    def _split_list(cls, value: Any) -> Any:
        """Accept ``"a, b"`` or a JSON list (an environment variable) as well as a list."""
        if not isinstance(value, str):
            return value
        try:
            decoded = json.loads(value)
        except ValueError:
            decoded = None
        if isinstance(decoded, list):
            return decoded
        return [part for part in re.split(r"[,\s]+", value) if part]

    @field_validator("allowed_hosts")
    @classmethod
    def _host_names(cls, value: list[str]) -> list[str]:
        names = [name.strip().lower() for name in value]
        for name in names:
            if not cls.ALLOWED_HOST.fullmatch(name):
                raise ValueError(
                    f"{name!r} is not a host name or address with an optional port "
                    "(e.g. 'node.example.org', '10.0.0.5:8080', '[fd00::5]', '*')"
                )
        return names

    @field_validator("trusted_proxies")
    @classmethod
    def _proxy_networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network (e.g. '127.0.0.1', "
                    "'10.0.0.0/24', '::1')"
                ) from None
        return [entry.strip() for entry in value]

    @field_validator("trusted_proxy_header")
    @classmethod
    def _header_name(cls, value: str | None) -> str | None:
        if value is None:
            return None
        name = value.strip()
        if not cls.HEADER_NAME.fullmatch(name):
            raise ValueError(f"{value!r} is not an HTTP header name (e.g. 'X-Remote-User')")
        if name.lower() in ("authorization", "cookie", "host", "x-forwarded-for"):
            raise ValueError(f"{name!r} cannot carry the proxy's user name")
        return name

    @model_validator(mode="after")
    def _proxy_settings_fit_together(self) -> WebSettings:
        if self.trusted_proxy_header is not None and not self.trusted_proxies:
            raise ValueError(
                "trusted_proxy_header needs trusted_proxies (the addresses of the proxies "
                "whose header is believed)"
            )
        if self.session_idle_minutes > self.session_max_hours * 60:
            raise ValueError("session_idle_minutes must not exceed session_max_hours")
        return self

    @property
    def session_idle(self) -> timedelta:
        """How long a session lives without a request."""
        return timedelta(minutes=self.session_idle_minutes)

    @property
    def session_lifetime(self) -> timedelta:
        """How long a session lives at most after its login."""
        return timedelta(hours=self.session_max_hours)


class LogSettings(_Section):
    """``[log]``: logging of the ``serve`` process.

    Log lines at INFO and above never carry patient data (PatientName,
    PatientID, PatientBirthDate, AccessionNumber); UIDs identify what a line
    is about.  ``phi = true`` lets DEBUG lines name them too (for a site
    chasing a problem with one study); INFO and above stay free of them.
    The log handler's filter enforces it (:class:`dicom_node.logs.PatientDataFilter`).
    """

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    json_format: bool = False
    phi: bool = False
    """Allow patient attributes in DEBUG lines (never at INFO or above)."""


class Settings(BaseSettings):
    """The whole configuration of a node (``config.toml``)."""

    model_config = SettingsConfigDict(
        env_prefix="DICOM_NODE_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_assignment=True,
    )

    node: NodeSettings = Field(default_factory=NodeSettings)
    storage: StorageSettings = Field(default_factory=StorageSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    peers: list[PeerSettings] = Field(default_factory=list)
    destinations: list[Destination] = Field(default_factory=list)
    rules: list[RuleSettings] = Field(default_factory=list)
    models: list[ModelSettings] = Field(default_factory=list)
    worker: WorkerSettings = Field(default_factory=WorkerSettings)
    celery: CelerySettings = Field(default_factory=CelerySettings)
    web: WebSettings = Field(default_factory=WebSettings)
    log: LogSettings = Field(default_factory=LogSettings)

    # Set by load_settings: the file the settings came from (not a TOML key).
    _source_path: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = _TOML_PATH.get("path")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=toml_file))
        return tuple(sources)

    @model_validator(mode="after")
    def _cross_references(self) -> Settings:
        names = [d.name for d in self.destinations]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"destination names must be unique; repeated: {', '.join(dupes)}")
        model_names = [m.name for m in self.models]
        dupes = sorted({n for n in model_names if model_names.count(n) > 1})
        if dupes:
            raise ValueError(f"model names must be unique; repeated: {', '.join(dupes)}")
        rule_names = [r.name for r in self.rules]
        dupes = sorted({n for n in rule_names if rule_names.count(n) > 1})
        if dupes:
            raise ValueError(f"rule names must be unique; repeated: {', '.join(dupes)}")
        from dicom_node.collect.routing import RuleError, compile_match

        for rule in self.rules:
            try:
                compile_match(rule.match)
            except RuleError as exc:
                raise ValueError(f"rule {rule.name!r}: {exc}") from exc
            for dest in rule.destinations:
                if dest not in names:
                    raise ValueError(
                        f"rule {rule.name!r}: unknown destination {dest!r} "
                        f"(known: {', '.join(names) or 'none'})"
                    )
        return self

    @property
    def source_path(self) -> Path | None:
        """The TOML file these settings were read from, if any."""
        return self._source_path

    def resolve_paths(self, base: Path) -> Settings:
        """Make relative paths (spool, SQLite file, folder destinations) relative to *base*."""
        if not self.storage.spool_dir.is_absolute():
            self.storage.spool_dir = (base / self.storage.spool_dir).resolve()
        if not self.storage.results_dir.is_absolute():
            self.storage.results_dir = (base / self.storage.results_dir).resolve()
        url = self.storage.database_url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url[len("sqlite:///") :]
            if rel and rel != ":memory:":
                self.storage.database_url = "sqlite:///" + str((base / rel).resolve())
        for dest in self.destinations:
            for key in type(dest).path_fields:
                value = getattr(dest, key)
                if value is not None and not value.is_absolute():
                    setattr(dest, key, (base / value).resolve())
        for model in self.models:
            if not model.path.is_absolute():
                model.path = (base / model.path).resolve()
        return self

    def pipeline_specs(self) -> list[Any]:
        """The ``[[models]]`` as pipeline specs for :mod:`ai_models.pipelines`."""
        return [m.to_spec(self.worker.device) for m in self.models]


# The TOML file for the settings source; set only for the duration of load_settings.
_TOML_PATH: dict[str, Path | None] = {"path": None}


def _format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key (not a setting; check the spelling)"
        lines.append(f"  {loc}: {msg}")
    return "\n".join(lines)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Read and validate the configuration.

    Parameters
    ----------
    path:
        The TOML file.  ``None`` uses ``config.toml`` in the current directory
        when it exists, else the embedded defaults.  Relative paths inside the
        file are taken relative to the file's folder.

    Raises
    ------
    ConfigError
        With one line per problem, each naming the offending key.
    """
    toml_path: Path | None
    if path is None:
        toml_path = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.is_file() else None
    else:
        toml_path = Path(path)
        if not toml_path.is_file():
            raise ConfigError(f"configuration file not found: {toml_path}")
    source = str(toml_path) if toml_path else "the embedded defaults / environment"
    _TOML_PATH["path"] = toml_path
    try:
        settings = Settings()
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, source)) from exc
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read {source}: {exc}") from exc
    finally:
        _TOML_PATH["path"] = None
    base = toml_path.resolve().parent if toml_path else Path.cwd()
    settings.resolve_paths(base)
    settings._source_path = toml_path.resolve() if toml_path else None
    return settings
