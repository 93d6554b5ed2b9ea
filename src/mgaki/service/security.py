"""Who may call: bearer tokens with roles for the API, signed JWTs for CDS Hooks.

CDS Hooks 2.0 (Trusting CDS Clients): the client signs a JWT with ``iss``, ``aud``
(the service URL it calls), ``exp``, ``iat`` and ``jti``; the service trusts only
allow-listed issuers, verifies the signature with their published keys and refuses
a ``jti`` it has seen before (replay).
"""

from __future__ import annotations

import hmac
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import sqlalchemy as sa
from jwt import PyJWKClient

from mgaki.service.config import IssuerConfig, Role, ServiceConfig
from mgaki.service.persistence.db import cds_jti, utcnow

__all__ = ["AuthError", "CdsCaller", "Principal", "allowed_patients", "check_bearer", "check_cds_jwt", "check_patient",
           "record_jti"]


class AuthError(Exception):
    """Refused credentials: answered 401 (``status`` 403 when the caller lacks the role or the patient).

    ``actor``/``patient_id`` are set for a refused patient: the app audits that as a denied attempt.
    """

    def __init__(self, message: str, status: int = 401, *, actor: str | None = None,
                 patient_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.actor = actor
        self.patient_id = patient_id


@dataclass(frozen=True)
class Principal:
    name: str
    roles: frozenset[str]
    patients: frozenset[str] | None = None  # None: every patient (admin, or a token without a limit)


def check_patient(principal: Principal, patient_id: str) -> None:
    """Raise ``AuthError`` 403 unless ``principal`` may see ``patient_id``; call it in every patient endpoint."""
    if principal.patients is not None and patient_id not in principal.patients:
        raise AuthError(f"token {principal.name!r} is not allowed this patient", 403,
                        actor=principal.name, patient_id=patient_id)


def allowed_patients(principal: Principal) -> frozenset[str] | None:
    """The patients a list endpoint may return to ``principal`` (None: no filter)."""
    return principal.patients


def check_bearer(cfg: ServiceConfig, header: str | None, role: Role) -> Principal:
    """The caller of a bearer-token endpoint, if its token is configured and holds ``role`` (or admin)."""
    if not header or not header.lower().startswith("bearer "):
        raise AuthError("missing bearer token (Authorization: Bearer <token>)")
    given = header[7:].strip().encode()
    for t in cfg.tokens:
        if hmac.compare_digest(given, t.token.encode()):
            if role in t.roles or "admin" in t.roles:
                limit = None if "admin" in t.roles or t.patients is None else frozenset(t.patients)
                return Principal(t.name, frozenset(t.roles), limit)
            raise AuthError(f"token {t.name!r} lacks the {role!r} role", 403)
    raise AuthError("unknown bearer token")


_JWKS: dict[str, PyJWKClient] = {}


def _key(issuer: IssuerConfig, header: dict[str, Any]) -> Any:
    kid = header.get("kid")
    for k in issuer.keys:
        if kid is None or k.get("kid") == kid:
            return jwt.PyJWK.from_json(json.dumps(k)).key
    if issuer.jwks_url:
        client = _JWKS.setdefault(issuer.jwks_url, PyJWKClient(issuer.jwks_url, cache_keys=True))
        try:
            return client.get_signing_key(str(kid)).key if kid else client.get_signing_keys()[0].key
        except jwt.PyJWKClientError as exc:
            raise AuthError(f"no signing key for kid {kid!r} at the issuer's JWKS: {exc}") from exc
    raise AuthError(f"no configured key for kid {kid!r}")


@dataclass(frozen=True)
class CdsCaller:
    """A CDS client whose JWT passed every check but the replay log (``record_jti``)."""

    iss: str
    jti: str
    exp: datetime  # naive UTC


def check_cds_jwt(cfg: ServiceConfig, header: str | None, audience: str) -> CdsCaller:
    """Verify a CDS Hooks JWT (issuer, key, signature, ``aud``, times, lifetime); no database access."""
    if not header or not header.lower().startswith("bearer "):
        raise AuthError("missing CDS Hooks JWT (Authorization: Bearer <jwt>)")
    token = header[7:].strip()
    try:
        unverified = jwt.decode(token, options={"verify_signature": False})
        head = jwt.get_unverified_header(token)
    except jwt.PyJWTError as exc:
        raise AuthError(f"malformed JWT: {exc}") from exc
    iss = unverified.get("iss")
    issuer = next((i for i in cfg.cds_issuers if i.iss == iss), None)
    if issuer is None:
        raise AuthError(f"issuer {iss!r} is not allowed")
    alg = head.get("alg")
    if alg not in issuer.algorithms:
        raise AuthError(f"JWT algorithm {alg!r} not accepted for this issuer")
    key = _key(issuer, head)
    try:
        claims = jwt.decode(token, key, algorithms=issuer.algorithms, audience=audience, issuer=issuer.iss,
                            leeway=cfg.jwt_leeway_s, options={"require": ["iss", "aud", "exp", "iat", "jti"]})
    except jwt.PyJWTError as exc:
        raise AuthError(f"JWT rejected: {exc}") from exc
    if int(claims["exp"]) - int(claims["iat"]) > cfg.jwt_max_lifetime_s:
        raise AuthError(f"JWT lifetime exceeds {cfg.jwt_max_lifetime_s} s")
    exp = datetime.fromtimestamp(int(claims["exp"]), UTC).replace(tzinfo=None)
    return CdsCaller(issuer.iss, str(claims["jti"]), exp)


_PURGE_EVERY_S = 60.0  # expired jti rows are deleted at most this often per process (a full-table delete)
_last_purge = [-_PURGE_EVERY_S]


def record_jti(con: sa.Connection, cfg: ServiceConfig, caller: CdsCaller) -> None:
    """Log the ``jti`` in the caller's transaction; ``AuthError`` if it was seen (replay).

    Race-free across processes: the (iss, jti) primary key lets exactly one insert succeed.
    Rows are purged only after expiry plus leeway, when the token is refused anyway.
    """
    now = time.monotonic()
    if now - _last_purge[0] >= _PURGE_EVERY_S:
        _last_purge[0] = now
        con.execute(sa.delete(cds_jti).where(cds_jti.c.exp < utcnow() - timedelta(seconds=cfg.jwt_leeway_s)))
    try:  # a replay fails the insert, and the caller's transaction rolls back with the AuthError
        con.execute(sa.insert(cds_jti).values(iss=caller.iss, jti=caller.jti, exp=caller.exp))
    except sa.exc.IntegrityError as exc:
        raise AuthError("JWT jti already used (replay)") from exc
