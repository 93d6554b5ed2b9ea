"""Who may call: bearer tokens with roles for the API, signed JWTs for CDS Hooks.

CDS Hooks 2.0 (Trusting CDS Clients): the client signs a JWT with ``iss``, ``aud``
(the service URL it calls), ``exp``, ``iat`` and ``jti``; the service trusts only
allow-listed issuers, verifies the signature with their published keys and refuses
a ``jti`` it has seen before (replay).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import jwt
import sqlalchemy as sa
from jwt import PyJWKClient

from mgaki.service.config import IssuerConfig, Role, ServiceConfig
from mgaki.service.persistence.db import cds_jti, utcnow

__all__ = ["AuthError", "CdsCaller", "Principal", "allowed_patients", "check_bearer", "check_cds_jwt", "check_patient",
           "outside_scope", "purge_due", "purge_jti", "record_jti", "scope_refusal"]


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


def outside_scope(principal: Principal, patients: Iterable[str]) -> list[str]:
    """The patients (sorted) of a write that ``principal`` may not write; empty when it may write them all."""
    if principal.patients is None:
        return []
    return sorted(set(patients) - principal.patients)


def scope_refusal(principal: Principal, refused: list[str]) -> AuthError:
    """The 403 for a write naming patients outside the token's list: the whole request is refused."""
    more = f" (and {len(refused) - 1} other patient(s) outside its list)" if len(refused) > 1 else ""
    return AuthError(f"token {principal.name!r} may not write data of patient {refused[0]!r}{more}; "
                     "nothing was stored", 403)


def allowed_patients(principal: Principal) -> frozenset[str] | None:
    """The patients a list endpoint may return to ``principal`` (None: no filter)."""
    return principal.patients


def check_bearer(cfg: ServiceConfig, header: str | None, role: Role) -> Principal:
    """The caller of a bearer-token endpoint, if its token is configured and holds ``role`` (or admin)."""
    if not header or not header.lower().startswith("bearer "):
        raise AuthError("missing bearer token (Authorization: Bearer <token>)")
    given = header[7:].strip().encode()
    digest = hashlib.sha256(given).hexdigest().encode()
    for t in cfg.tokens:
        if hmac.compare_digest(given, t.token.encode()) if t.token is not None else \
                hmac.compare_digest(digest, (t.token_sha256 or "").encode()):
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


def check_cds_jwt(cfg: ServiceConfig, header: str | None, audience: list[str]) -> CdsCaller:
    """Verify a CDS Hooks JWT (issuer, key, signature, ``aud`` one of ``audience``, times, lifetime); no database.

    ``audience`` comes from the configuration (``ServiceConfig.audiences``), never from the request: empty, every
    JWT is refused (fail closed).
    """
    if not audience:
        raise AuthError("no audience configured (public_base_url): CDS Hooks JWTs cannot be checked")
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
    jti = claims["jti"]
    if not isinstance(jti, str) or not 0 < len(jti) <= _JTI_MAX or "\x00" in jti:
        # the replay log must hold it on any database (VARCHAR length, no NUL on PostgreSQL)
        raise AuthError(f"JWT jti must be a string of 1-{_JTI_MAX} characters without NUL")
    exp = datetime.fromtimestamp(int(claims["exp"]), UTC).replace(tzinfo=None)
    return CdsCaller(issuer.iss, jti, exp)


_JTI_MAX = 255  # under the replay log's column (cds_jti.jti, 500); RFC 7519 sets no length
_PURGE_EVERY_S = 60.0  # expired jti rows are deleted at most this often per process (a full-table delete)
_last_purge = [-_PURGE_EVERY_S]


def purge_due() -> bool:
    """True at most once a minute per process: time to delete the replay log's expired rows (``purge_jti``)."""
    now = time.monotonic()
    if now - _last_purge[0] >= _PURGE_EVERY_S:
        _last_purge[0] = now
        return True
    return False


def purge_jti(con: sa.Connection, cfg: ServiceConfig) -> None:
    """Delete the replay log's expired rows (expiry plus leeway: such a token is refused anyway)."""
    con.execute(sa.delete(cds_jti).where(cds_jti.c.exp < utcnow() - timedelta(seconds=cfg.jwt_leeway_s)))


def record_jti(con: sa.Connection, cfg: ServiceConfig, caller: CdsCaller) -> None:
    """Log the ``jti`` in the caller's transaction; ``AuthError`` if it was seen (replay).

    Race-free across processes: the (iss, jti) primary key lets exactly one insert succeed.
    """
    if purge_due():
        purge_jti(con, cfg)
    try:  # a replay fails the insert, and the caller's transaction rolls back with the AuthError
        con.execute(sa.insert(cds_jti).values(iss=caller.iss, jti=caller.jti, exp=caller.exp))
    except sa.exc.IntegrityError as exc:
        raise AuthError("JWT jti already used (replay)") from exc
