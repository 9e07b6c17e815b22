"""What a principal may do: the role and CSRF checks of the routes, and their audit events.

Every state-changing route depends on :func:`operator_change`:

1. the browser's origin (:func:`dicom_node.web.deps.same_origin`);
2. a principal holding a cookie (a session, or a trusted proxy's user) must
   show its synchronizer token, in the ``X-CSRF-Token`` header or the
   ``csrf_token`` field of a form, compared in constant time (OWASP CSRF
   Prevention Cheat Sheet); else ``403``;
3. the role must be ``operator``; a viewer gets ``403`` and an
   ``access-denied`` audit event.

The route then records what it did with :func:`record_action`
(``admin-action``: who, what, which job or study, from which address).
"""

from __future__ import annotations

import hmac
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, HTTPException, Request

from dicom_node import audit
from dicom_node.web.access import Principal, client_address, principal_of
from dicom_node.web.deps import Context, same_origin

__all__ = [
    "CSRF_FIELD",
    "CSRF_HEADER",
    "Operator",
    "Who",
    "current_principal",
    "operator_change",
    "record_action",
    "require_operator",
    "sees_phi",
    "verify_csrf",
]

CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
_FORM = "application/x-www-form-urlencoded"
_MAX_FORM = 64 * 1024


def current_principal(request: Request) -> Principal:
    """The principal of the request (:class:`~dicom_node.web.access.AccessControl`)."""
    found = principal_of(request.scope)
    if found is None:  # only open paths run without one, and they do not ask
        raise HTTPException(status_code=401, detail="authentication required")
    return found


Who = Annotated[Principal, Depends(current_principal)]


async def form_fields(request: Request) -> dict[str, str]:
    """The fields of a ``application/x-www-form-urlencoded`` body (first of each), else none."""
    if request.headers.get("content-type", "").split(";")[0].strip().lower() != _FORM:
        return {}
    body = await request.body()
    if len(body) > _MAX_FORM:
        raise HTTPException(status_code=413, detail="form too large")
    parsed = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in parsed.items() if values}


def _address(request: Request, ctx: Context) -> str | None:
    return client_address(request.scope, ctx.settings.web)


async def check_csrf(request: Request, ctx: Context, who: Who) -> None:
    """``403`` unless a principal with a cookie shows its CSRF token (module docstring)."""
    if not who.needs_csrf:
        return
    given = request.headers.get(CSRF_HEADER)
    if given is None:
        given = (await form_fields(request)).get(CSRF_FIELD)
    verify_csrf(request, ctx, who, given)


def verify_csrf(request: Request, ctx: Context, who: Principal, given: str | None) -> None:
    """``403`` (and an ``access-denied`` event) unless *given* is the principal's CSRF
    token; for a form :func:`check_csrf` cannot read (``multipart/form-data``)."""
    if not who.needs_csrf:
        return
    expected = who.csrf_token
    if (
        not given
        or not expected
        or not hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
    ):
        audit.auditor().record(
            audit.AuditEvent.ACCESS_DENIED,
            outcome=audit.Outcome.MINOR_FAILURE,
            actor=who.name,
            actor_kind=who.actor_kind,
            address=_address(request, ctx),
            reason="missing or wrong CSRF token",
            method=request.method,
            path=request.url.path,
        )
        raise HTTPException(status_code=403, detail="missing or wrong CSRF token")


def require_operator(request: Request, ctx: Context, who: Who) -> Principal:
    """The principal, if it is an operator; else ``403`` and an ``access-denied`` event."""
    if who.is_operator:
        return who
    audit.auditor().record(
        audit.AuditEvent.ACCESS_DENIED,
        outcome=audit.Outcome.MINOR_FAILURE,
        actor=who.name,
        actor_kind=who.actor_kind,
        address=_address(request, ctx),
        reason=f"role {who.role} may not do this",
        method=request.method,
        path=request.url.path,
    )
    raise HTTPException(status_code=403, detail="this needs the operator role")


Operator = Annotated[Principal, Depends(require_operator)]


def operator_change(
    _origin: Annotated[None, Depends(same_origin)],
    _csrf: Annotated[None, Depends(check_csrf)],
    who: Operator,
) -> Principal:
    """All checks of a state-changing request (module docstring), in that order."""
    return who


def record_action(
    request: Request,
    ctx: Context,
    who: Principal,
    action: str,
    *,
    ok: bool = True,
    study_instance_uid: str | None = None,
    **detail: Any,
) -> None:
    """Record an ``admin-action`` event for what a route did (or failed to do)."""
    audit.auditor().record(
        audit.AuditEvent.ADMIN_ACTION,
        outcome=audit.Outcome.SUCCESS if ok else audit.Outcome.MINOR_FAILURE,
        actor=who.name,
        actor_kind=who.actor_kind,
        address=_address(request, ctx),
        study_instance_uid=study_instance_uid,
        action=action,
        via=who.via,
        **detail,
    )


def sees_phi(who: Principal, ctx: Context) -> bool:
    """Whether the principal's role is one of ``[web] phi_roles``."""
    return who.role in ctx.settings.web.phi_roles
