"""Local users of the web console and API, and their browser sessions.

Passwords are kept only as argon2id hashes (RFC 9106) in the PHC string
format, made and checked by ``argon2-cffi``; a session is kept only as the
SHA-256 of its random token (the browser's cookie holds the token), with
the synchronizer token against cross-site request forgery that goes with it
(OWASP CSRF Prevention Cheat Sheet).  The tables are ``web_user`` and
``web_session`` (:class:`storage.models.WebUser`, :class:`storage.models.WebSession`).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from storage.db import Database, DuplicateRow
from storage.jobs import as_utc
from storage.models import WebSession, WebUser, utcnow

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "ROLES",
    "DuplicateUser",
    "PasswordTooShort",
    "SessionInfo",
    "UnknownUser",
    "UserError",
    "UserInfo",
    "UserStore",
    "hash_password",
    "token_sha256",
    "verify_password",
]

ROLES: Final = ("viewer", "operator")
"""The roles a user may have: ``viewer`` reads, ``operator`` also changes."""

MIN_PASSWORD_LENGTH: Final = 12
"""Shorter passwords are refused (NIST SP 800-63B section 5.1.1.2 asks at least 8)."""

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_HASHER = PasswordHasher()  # argon2id with the library's RFC 9106 "low memory" profile
#: Verified against for unknown users, so that a wrong name costs what a wrong password does.
_DUMMY_HASH = _HASHER.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A change to the users that cannot be made (the message says why)."""


class DuplicateUser(UserError):
    """A user of that name exists."""


class UnknownUser(UserError, LookupError):
    """No user of that name."""


class PasswordTooShort(UserError):
    """The password has fewer than :data:`MIN_PASSWORD_LENGTH` characters."""


def hash_password(password: str) -> str:
    """The argon2id hash of *password* (PHC string, salted).

    Raises
    ------
    PasswordTooShort
        Fewer than :data:`MIN_PASSWORD_LENGTH` characters.
    """
    if len(password) < MIN_PASSWORD_LENGTH:
        raise PasswordTooShort(
            f"the password must have at least {MIN_PASSWORD_LENGTH} characters"
        )
    return _HASHER.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    """Whether *password* matches *password_hash* (constant time in the library)."""
    try:
        return _HASHER.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def token_sha256(token: str) -> str:
    """Hex SHA-256 of a session token: what the database keeps instead of the token."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class UserInfo:
    """A user as listed (never with the hash)."""

    username: str
    role: str
    disabled: bool
    created_at: datetime | None
    last_login_at: datetime | None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """A live session, as :meth:`UserStore.session` finds it."""

    id: int
    username: str
    role: str
    csrf_token: str
    created_at: datetime
    expires_at: datetime


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"unknown role {role!r}: one of {', '.join(ROLES)}")
    return role


def _check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UserError(
            f"{name!r} is not a user name: letters, digits and _ . @ -, at most 64, "
            "starting with a letter or digit"
        )
    return name


class UserStore:
    """The users and sessions of the web surface, over one :class:`~storage.db.Database`."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- users ----------------------------------------------------------------------------
    def add(self, username: str, password: str, role: str) -> UserInfo:
        """Create an enabled user.

        Raises
        ------
        DuplicateUser, PasswordTooShort, UserError
            The name exists, the password is too short, or the name or role is invalid.
        """
        _check_name(username)
        _check_role(role)
        hashed = hash_password(password)
        try:
            with self.db.session() as session:
                if session.scalar(select(WebUser.id).where(WebUser.username == username)):
                    raise DuplicateUser(f"user {username!r} exists")
                user = WebUser(username=username, password_hash=hashed, role=role, disabled=False)
                session.add(user)
                session.flush()
                return _info(user)
        except DuplicateRow:
            raise DuplicateUser(f"user {username!r} exists") from None

    def remove(self, username: str) -> None:
        """Delete a user and its sessions.

        Raises
        ------
        UnknownUser
            No such user.
        """
        with self.db.session() as session:
            user_id = self._id(session, username)
            session.execute(delete(WebSession).where(WebSession.user_id == user_id))
            session.execute(delete(WebUser).where(WebUser.id == user_id))

    def list(self) -> list[UserInfo]:
        """Every user, by name."""
        with self.db.sessions() as session:
            return [_info(u) for u in session.scalars(select(WebUser).order_by(WebUser.username))]

    def get(self, username: str) -> UserInfo | None:
        """One user, or ``None``."""
        with self.db.sessions() as session:
            user = session.scalar(select(WebUser).where(WebUser.username == username))
            return None if user is None else _info(user)

    def count(self, *, enabled_only: bool = True) -> int:
        """How many users there are (by default only the enabled ones)."""
        stmt = select(func.count()).select_from(WebUser)
        if enabled_only:
            stmt = stmt.where(WebUser.disabled.is_(False))
        with self.db.engine.connect() as conn:
            return int(conn.execute(stmt).scalar_one())

    def set_password(self, username: str, password: str) -> None:
        """Replace a user's password; its sessions end.

        Raises
        ------
        UnknownUser, PasswordTooShort
        """
        hashed = hash_password(password)
        with self.db.session() as session:
            user_id = self._id(session, username)
            session.execute(
                update(WebUser).where(WebUser.id == user_id).values(password_hash=hashed)
            )
            session.execute(delete(WebSession).where(WebSession.user_id == user_id))

    def set_role(self, username: str, role: str) -> str:
        """Change a user's role (effective at its next request); returns the old role.

        Raises
        ------
        UnknownUser, UserError
        """
        _check_role(role)
        with self.db.session() as session:
            user = session.scalar(select(WebUser).where(WebUser.username == username))
            if user is None:
                raise UnknownUser(f"no user {username!r}")
            old, user.role = user.role, role
            return old

    def set_disabled(self, username: str, disabled: bool) -> None:
        """Disable (its sessions end) or enable a user.

        Raises
        ------
        UnknownUser
        """
        with self.db.session() as session:
            user_id = self._id(session, username)
            session.execute(update(WebUser).where(WebUser.id == user_id).values(disabled=disabled))
            if disabled:
                session.execute(delete(WebSession).where(WebSession.user_id == user_id))

    def authenticate(self, username: str, password: str) -> UserInfo | None:
        """The enabled user whose password this is, else ``None`` (:meth:`check_login`)."""
        user, _reason = self.check_login(username, password)
        return user

    def check_login(self, username: str, password: str) -> tuple[UserInfo | None, str]:
        """``(user, "")`` for the enabled user whose password this is, else
        ``(None, why)`` with why in words (``unknown user``, ``user disabled``,
        ``wrong password``), for the audit trail, not for the one logging in.

        An unknown or disabled user costs one hash verification too, so the
        time taken does not tell which names exist.
        """
        with self.db.sessions() as session:
            user = session.scalar(select(WebUser).where(WebUser.username == username))
        if user is None or user.disabled:
            verify_password(_DUMMY_HASH, password)
            return None, "unknown user" if user is None else "user disabled"
        if not verify_password(user.password_hash, password):
            return None, "wrong password"
        if _HASHER.check_needs_rehash(user.password_hash):
            with self.db.session() as session:
                session.execute(
                    update(WebUser)
                    .where(WebUser.id == user.id)
                    .values(password_hash=_HASHER.hash(password))
                )
        return _info(user), ""

    def provision(self, username: str, role: str) -> UserInfo:
        """Create a user known from single sign-on: it gets a random password nobody
        knows, so it can only come in through the proxy (until ``set_password``).

        Raises
        ------
        DuplicateUser, UserError
        """
        return self.add(username, secrets.token_urlsafe(32), role)

    @staticmethod
    def _id(session: Session, username: str) -> int:
        user_id = session.scalar(select(WebUser.id).where(WebUser.username == username))
        if user_id is None:
            raise UnknownUser(f"no user {username!r}")
        return int(user_id)

    # -- sessions -------------------------------------------------------------------------
    def create_session(
        self, username: str, *, lifetime: timedelta, address: str | None = None
    ) -> tuple[str, SessionInfo]:
        """Open a session for an enabled user; returns ``(token, session)``.

        The token (for the cookie) is returned only here; the database keeps
        its SHA-256.  The login time is recorded on the user.

        Raises
        ------
        UnknownUser
            No such user, or it is disabled.
        """
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = utcnow()
        with self.db.session() as session:
            user = session.scalar(select(WebUser).where(WebUser.username == username))
            if user is None or user.disabled:
                raise UnknownUser(f"no enabled user {username!r}")
            row = WebSession(
                token_sha256=token_sha256(token),
                user_id=user.id,
                csrf_token=csrf,
                address=(address or None) and address[:64],
                created_at=now,
                last_seen_at=now,
                expires_at=now + lifetime,
            )
            session.add(row)
            user.last_login_at = now
            session.flush()
            info = SessionInfo(row.id, user.username, user.role, csrf, now, now + lifetime)
        return token, info

    def session(
        self,
        token: str,
        *,
        idle: timedelta,
        touch: bool = True,
        touch_after: timedelta = timedelta(seconds=30),
    ) -> SessionInfo | None:
        """The live session of *token*, or ``None``.

        A session past its absolute expiry, idle longer than *idle*, or of a
        user now disabled or removed is deleted and not returned.  Its last
        use is recorded (at most every *touch_after*) unless *touch* is false
        (a request the user did not make, such as a page's own reload).
        """
        if not token:
            return None
        now = utcnow()
        digest = token_sha256(token)
        with self.db.session() as session:
            row = session.execute(
                select(WebSession, WebUser)
                .join(WebUser, WebUser.id == WebSession.user_id)
                .where(WebSession.token_sha256 == digest)
            ).first()
            if row is None:
                return None
            web_session, user = row
            expires = as_utc(web_session.expires_at) or now
            seen = as_utc(web_session.last_seen_at) or now
            if user.disabled or now >= expires or now - seen > idle:
                session.execute(delete(WebSession).where(WebSession.id == web_session.id))
                return None
            if touch and now - seen > touch_after:
                web_session.last_seen_at = now
            return SessionInfo(
                web_session.id,
                user.username,
                user.role,
                web_session.csrf_token,
                as_utc(web_session.created_at) or now,
                expires,
            )

    def end_session(self, token: str) -> bool:
        """Delete the session of *token* (logout); whether there was one."""
        with self.db.session() as session:
            result = session.execute(
                delete(WebSession).where(WebSession.token_sha256 == token_sha256(token))
            )
            return bool(getattr(result, "rowcount", 0))

    def expire_sessions(self, *, idle: timedelta) -> int:
        """Delete every session past its expiry or idle longer than *idle*; how many."""
        now = utcnow()
        with self.db.session() as session:
            result = session.execute(
                delete(WebSession).where(
                    (WebSession.expires_at <= now) | (WebSession.last_seen_at < now - idle)
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)


def _info(user: WebUser) -> UserInfo:
    return UserInfo(
        username=user.username,
        role=user.role,
        disabled=bool(user.disabled),
        created_at=as_utc(user.created_at),
        last_login_at=as_utc(user.last_login_at),
    )
