"""Database engine and sessions: SQLite (WAL) by default, PostgreSQL at scale.

The schema is created and upgraded only by Alembic migrations
(``storage/migrations``), never by ``create_all``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

__all__ = [
    "Database",
    "DatabaseError",
    "DatabaseUnavailable",
    "DuplicateRow",
    "MIGRATIONS_DIR",
]

DatabaseError = SQLAlchemyError
"""Any error of the database layer (callers outside ``storage`` catch this name)."""

DatabaseUnavailable = OperationalError
"""The database cannot be reached or used right now (locked, down, disk full)."""

DuplicateRow = IntegrityError
"""A row collides with one that exists (e.g. written by another process at the same moment)."""

LOGGER = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"

#: The PostgreSQL advisory lock key of schema upgrades ("dicomnod" in ASCII).
_UPGRADE_LOCK = 0x6469636F6D6E6F64


def _sqlite_pragmas(synchronous: str) -> Any:
    def connect(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    return connect


class Database:
    """An engine plus a session factory for one database URL.

    Parameters
    ----------
    url:
        ``sqlite:///path/to/file.db`` or ``postgresql+psycopg://...``
        (``postgresql://`` is taken to mean psycopg 3).
    sqlite_synchronous:
        SQLite's ``synchronous`` pragma.  ``FULL`` (default) makes each commit
        durable by itself; ``NORMAL`` is for callers that flush the file
        system themselves (see :mod:`storage.durability`).
    """

    def __init__(self, url: str, *, echo: bool = False, sqlite_synchronous: str = "FULL") -> None:
        if sqlite_synchronous not in ("FULL", "NORMAL", "OFF"):
            raise ValueError(f"invalid sqlite_synchronous {sqlite_synchronous!r}")
        if url.startswith("postgresql://"):
            url = "postgresql+psycopg://" + url[len("postgresql://") :]
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo, "future": True}
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            kwargs["connect_args"] = {"check_same_thread": False, "timeout": 30}
        else:
            kwargs.update(pool_size=10, max_overflow=20, pool_pre_ping=True)
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas(sqlite_synchronous))
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)

    @property
    def sqlite_folder(self) -> Path | None:
        """The folder of the SQLite database file (``None`` for other databases)."""
        if not self.url.startswith("sqlite"):
            return None
        path = self.url.split("///", 1)[-1]
        return Path(path).resolve().parent if path and path != ":memory:" else None

    @property
    def is_sqlite(self) -> bool:
        """True for the embedded SQLite database."""
        return self.engine.dialect.name == "sqlite"

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session that commits on success and rolls back on error."""
        session = self.sessions()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    # -- migrations --------------------------------------------------------
    def _alembic_config(self) -> Config:
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return cfg

    def upgrade(self, revision: str = "head") -> None:
        """Bring the schema to *revision* with Alembic (idempotent).

        On PostgreSQL the upgrade holds a transaction-level advisory lock, so
        processes starting together (receivers, workers, a migration job)
        upgrade one after the other: the later ones find the schema current.
        """
        cfg = self._alembic_config()
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _UPGRADE_LOCK})
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)

    def current_revision(self) -> str | None:
        """The schema revision the database is at (``None`` when empty)."""
        with self.engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def head_revision(self) -> str | None:
        """The newest revision the code knows."""
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def dispose(self) -> None:
        """Close all pooled connections."""
        self.engine.dispose()
