"""SQLAlchemy ORM models: what the node has received, and what it does with it.

The database is the source of truth (DESIGN.md): a row exists for every
instance that was acknowledged, and its file is in the spool; every step
after that (completion, job, result, delivery) is a row written before the
next step starts.

Tables: ``study`` 1-n ``series`` 1-n ``instance`` (received; attributes kept
are the ones routing and the admin need: PS3.3 C.7.2.1 General Study,
C.7.3.1 General Series, C.7.5.1 General Equipment, C.12.1 SOP Common);
``completion`` 1-n ``job`` 1-n ``result`` 1-n ``delivery`` (routed);
``web_user`` 1-n ``web_session`` (console logins); ``audit_event`` (the audit
trail, after DICOM PS3.15 A.5 / IHE ATNA); ``pause`` (rules and destinations an
operator paused).  ``purged_at`` marks rows whose
files retention deleted: the rows stay, so history keeps working.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

UID = String(64)


def utcnow() -> datetime:
    """Timezone-aware now in UTC."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    """Declarative base of all dicom-node tables."""

    type_annotation_map = {dict[str, Any]: JSON}


class Study(Base):
    """A study (StudyInstanceUID) the node has received instances of."""

    __tablename__ = "study"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    study_instance_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    patient_id: Mapped[str | None] = mapped_column(String(64))
    patient_name: Mapped[str | None] = mapped_column(String(324))
    study_date: Mapped[str | None] = mapped_column(String(8))
    accession_number: Mapped[str | None] = mapped_column(String(16))
    study_description: Mapped[str | None] = mapped_column(String(64))
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    collected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """The ``last_received_at`` the collector last settled study-level rules for."""

    series: Mapped[list[Series]] = relationship(back_populates="study")


class Series(Base):
    """A series (SeriesInstanceUID) and the routing attributes of its first instance."""

    __tablename__ = "series"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_instance_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    modality: Mapped[str | None] = mapped_column(String(16))
    body_part_examined: Mapped[str | None] = mapped_column(String(64))
    series_description: Mapped[str | None] = mapped_column(String(64))
    series_number: Mapped[int | None] = mapped_column(Integer)
    manufacturer: Mapped[str | None] = mapped_column(String(64))
    manufacturer_model_name: Mapped[str | None] = mapped_column(String(64))
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    called_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Further non-pixel attributes of the first instance, by DICOM keyword, for rules."""
    first_received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_received_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), default=utcnow, index=True
    )
    collected_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """The ``last_received_at`` the collector last settled series-level rules for."""
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When retention deleted its file(s) (:mod:`storage.retention`); the row stays."""
    routing: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    """How the rules judged the series when the collector last settled it:
    ``{"rules": [{"rule", "trigger", "matched", "fallback", "paused",
    "conditions": [{"path", "ok", "reason"}]}]}``
    (:meth:`storage.completions.CompletionTransaction.mark_series_collected`)."""
    routed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    study: Mapped[Study] = relationship(back_populates="series")
    instances: Mapped[list[Instance]] = relationship(back_populates="series")


class Instance(Base):
    """One stored SOP instance: its file in the spool and how it arrived."""

    __tablename__ = "instance"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True, index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    transfer_syntax_uid: Mapped[str] = mapped_column(UID)
    instance_number: Mapped[int | None] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    """File path relative to the spool folder."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    """SHA-256 of the data set as received (the file meta the node adds is not included)."""
    calling_ae: Mapped[str | None] = mapped_column(String(16))
    peer_address: Mapped[str | None] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    receive_count: Mapped[int] = mapped_column(Integer, default=1)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When retention deleted its file(s) (:mod:`storage.retention`); the row stays."""
    """How many times this instance arrived (re-sends are recorded once)."""

    series: Mapped[Series] = relationship(back_populates="instances")


class Completion(Base):
    """A series or study found complete for one rule (quiet period or forced).

    ``instance_count`` and ``last_instance_at`` are the snapshot the jobs were
    made from; an instance that arrives later changes them, and the next
    completion raises ``revision`` (the new results supersede the old).
    """

    __tablename__ = "completion"
    __table_args__ = (
        UniqueConstraint("level", "uid", "rule", name="uq_completion_level_uid_rule"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    level: Mapped[str] = mapped_column(String(8))
    """``series`` or ``study``."""
    uid: Mapped[str] = mapped_column(UID)
    """The Series or Study Instance UID."""
    rule: Mapped[str] = mapped_column(String(64))
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    instance_count: Mapped[int] = mapped_column(Integer)
    last_instance_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    revision: Mapped[int] = mapped_column(Integer, default=0)
    forced: Mapped[bool] = mapped_column(Boolean, default=False)
    completed_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Job(Base):
    """One pipeline run on one completed series (or study), and its lifecycle.

    ``queued`` -> ``running`` (leased by ``lease_owner`` until
    ``lease_expires_at``, renewed by heartbeats) -> ``succeeded`` | ``failed``
    | ``skipped`` (the pipeline does not apply) | ``superseded`` (a later
    revision replaced it before it ran).  ``uid_seed`` fixes the UIDs of
    every result object before anything is sent.
    """

    __tablename__ = "job"
    __table_args__ = (
        UniqueConstraint("completion_id", "revision", "pipeline", name="uq_job_completion_rev"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    completion_id: Mapped[int] = mapped_column(
        ForeignKey("completion.id", ondelete="CASCADE"), index=True
    )
    revision: Mapped[int] = mapped_column(Integer, default=0)
    rule: Mapped[str] = mapped_column(String(64))
    pipeline: Mapped[str] = mapped_column(String(64))
    level: Mapped[str] = mapped_column(String(8))
    study_id: Mapped[int] = mapped_column(ForeignKey("study.id", ondelete="CASCADE"), index=True)
    series_ids: Mapped[list[int]] = mapped_column(JSON)
    """The series the pipeline runs on (one for a series-level rule)."""
    outputs: Mapped[list[str]] = mapped_column(JSON)
    """Result kinds to write (``seg``, ``sr``, ``sc``)."""
    destinations: Mapped[dict[str, Any]] = mapped_column(JSON)
    """Destination name -> the result kinds it receives."""
    priority: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True, default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    not_before: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    uid_seed: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    error: Mapped[str | None] = mapped_column(Text)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    """Seconds per stage of the last attempt (wait, read, load, infer, write, ...)."""
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When retention deleted its file(s) (:mod:`storage.retention`); the row stays."""

    results: Mapped[list[Result]] = relationship(back_populates="job")


class Result(Base):
    """One DICOM object a job produced, stored as a file until delivered."""

    __tablename__ = "result"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("job.id", ondelete="CASCADE"), index=True)
    kind: Mapped[str] = mapped_column(String(8))
    """``seg``, ``sr`` or ``sc``."""
    source_series_uid: Mapped[str] = mapped_column(UID)
    study_instance_uid: Mapped[str] = mapped_column(UID)
    series_instance_uid: Mapped[str] = mapped_column(UID)
    sop_instance_uid: Mapped[str] = mapped_column(UID, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(UID)
    path: Mapped[str] = mapped_column(Text)
    """File path relative to the results folder."""
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    purged_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    """When retention deleted its file(s) (:mod:`storage.retention`); the row stays."""

    job: Mapped[Job] = relationship(back_populates="results")
    deliveries: Mapped[list[Delivery]] = relationship(back_populates="result")


class Delivery(Base):
    """One result object to one destination: ``pending`` -> ``sent`` | ``failed``.

    ``cancelled`` when a later revision superseded the result before it was
    sent.  ``last_status`` is the peer's last DIMSE status (PS3.7 Annex C).
    """

    __tablename__ = "delivery"
    __table_args__ = (
        UniqueConstraint("result_id", "destination", name="uq_delivery_result_destination"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    result_id: Mapped[int] = mapped_column(ForeignKey("result.id", ondelete="CASCADE"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), index=True, default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    lease_owner: Mapped[str | None] = mapped_column(String(128))
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    result: Mapped[Result] = relationship(back_populates="deliveries")


class WebUser(Base):
    """A local user of the web console and API (:mod:`storage.users`)."""

    __tablename__ = "web_user"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    """An argon2id hash (PHC string format); never the password."""
    role: Mapped[str] = mapped_column(String(16))
    """``viewer`` or ``operator``."""
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class WebSession(Base):
    """A logged-in browser session; the cookie carries a token whose SHA-256 is kept here."""

    __tablename__ = "web_session"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("web_user.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    address: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class AuditEvent(Base):
    """One audited event (:mod:`storage.audit`), shaped after DICOM PS3.15 A.5 / IHE ATNA.

    ``event`` is the node's event name (e.g. ``association-accepted``,
    ``login``); ``action`` the EventActionCode (C, R, U, D, E); ``outcome`` the
    EventOutcomeIndicator (0 success, 4 minor failure, 8 serious failure,
    12 major failure); ``actor`` who did it (a user name, a calling AE title,
    a node process) and ``actor_kind`` which of those it is.
    """

    __tablename__ = "audit_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)
    event: Mapped[str] = mapped_column(String(48), index=True)
    action: Mapped[str] = mapped_column(String(1))
    outcome: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str | None] = mapped_column(String(128))
    actor_kind: Mapped[str] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(64))
    node: Mapped[str | None] = mapped_column(String(128))
    study_instance_uid: Mapped[str | None] = mapped_column(UID, index=True)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class Pause(Base):
    """A rule or destination an operator paused (:mod:`storage.pauses`).

    A paused rule queues no job: the series it matches wait, unsettled,
    until it is resumed.  A paused destination is sent nothing: its
    deliveries stay pending.  Nothing is dropped either way.
    """

    __tablename__ = "pause"
    __table_args__ = (UniqueConstraint("kind", "name", name="uq_pause_kind_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    """``rule`` or ``destination``."""
    name: Mapped[str] = mapped_column(String(64))
    paused_by: Mapped[str | None] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    paused_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
