"""Service configuration: a YAML file, then ``MGAKI_*`` environment variables on top.

Why both: the file carries structured settings (tokens, CDS issuers), the environment
lets a deployment override the database URL or data folder without editing it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mgaki.errors import InputError
from mgaki.research.alert_trial import AlertPolicy

__all__ = ["ROLES", "BodyLimits", "IssuerConfig", "Role", "ServiceConfig", "TokenConfig", "load_config"]

Role = Literal["reader", "writer", "admin"]
ROLES: tuple[Role, ...] = ("reader", "writer", "admin")


class TokenConfig(BaseModel):
    """A bearer token for the non-CDS endpoints and what its holder may do.

    The secret is given as is (``token``) or as its SHA-256 (``token_sha256``, hex; what ``mgaki token create``
    writes): tokens it makes are 256 random bits, so a plain hash cannot be searched back to the token.
    """

    model_config = ConfigDict(extra="forbid")
    name: str
    token: str | None = Field(default=None, min_length=16)
    token_sha256: str | None = Field(default=None, pattern="^[0-9a-f]{64}$")
    roles: list[Role]
    # Patients this token may read, and write (ingest: a request naming any other patient is refused whole);
    # ids as in the alerts/subject_id. None = all. Admin tokens ignore it.
    patients: list[str] | None = None
    # An HL7 sender over MLLP writes as this token when its verified TLS client certificate (mllp_tls_client_ca)
    # has this subject common name: the token's patient list then limits its messages. docs/service.md#hl7-v2
    mllp_client_cn: str | None = None

    @model_validator(mode="after")
    def _one_secret(self) -> TokenConfig:
        if (self.token is None) == (self.token_sha256 is None):
            raise ValueError(f"token {self.name!r}: give exactly one of token and token_sha256")
        if self.mllp_client_cn is not None and not {"writer", "admin"} & set(self.roles):
            raise ValueError(f"token {self.name!r}: mllp_client_cn names an HL7 sender, which writes: "
                             "give the token the writer role")
        return self


class IssuerConfig(BaseModel):
    """A CDS client allowed to call the hooks: its ``iss`` and how to get its keys."""

    model_config = ConfigDict(extra="forbid")
    iss: str
    jwks_url: str | None = None  # fetched (and cached) by PyJWKClient when a kid is not among `keys`
    keys: list[dict[str, Any]] = []  # JWKs (public)
    algorithms: list[str] = ["RS384", "ES384", "RS256", "ES256"]


_MIB = 1 << 20


class BodyLimits(BaseModel):
    """Largest request body per endpoint group, in bytes: a larger one is answered 413 before it is buffered.

    Chosen from measurements (docs/service.md#request-limits, ``benchmarks/ingest_body_size.py``): a FHIR
    Bundle is read by DuckDB as one JSON object, about 31-35 bytes of memory per byte of Bundle at the peak of
    the request (29 MiB: +0.9 GiB); NDJSON about 16-19 (28 MiB: +0.43 GiB): both limits cost about 1 GiB.
    A CDS call's realistic prefetch is 49-75 KB; 8 MiB leaves room for a long ICU stay.

    """

    model_config = ConfigDict(extra="forbid")
    cds: int = Field(default=8 * _MIB, ge=1024)  # POST /cds-services/{id} (prefetch included)
    fhir: int = Field(default=32 * _MIB, ge=1024)  # POST /fhir (one Bundle)
    ndjson: int = Field(default=64 * _MIB, ge=1024)  # POST /fhir/$import-ndjson
    other: int = Field(default=1 * _MIB, ge=1024)  # every other body (CDS feedback, dose plan)


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: Path = Path("mgaki-data")
    database_url: str | None = None  # default: sqlite file in data_dir
    host: str = "127.0.0.1"
    port: int = 8000
    tokens: list[TokenConfig] = []
    cds_issuers: list[IssuerConfig] = []
    cds_require_jwt: bool = True  # False only for local development
    # The URL(s) the EHR calls us by: a CDS JWT's `aud` must be one of them + the service's path. Required when
    # CDS JWTs are (never taken from the request's Host header, which the caller controls).
    public_base_url: str | list[str] | None = None
    jwt_max_lifetime_s: int = 3600  # exp - iat ceiling: refuses long-lived tokens
    jwt_leeway_s: int = 30
    fhir_servers: list[str] = []  # FHIR base URLs the CDS services may fetch missing prefetch from
    fhir_timeout_s: float = Field(default=5.0, gt=0)
    fhir_max_pages: int = Field(default=10, ge=1)  # Bundle.link next pages followed per prefetch query
    surveil_on_ingest: bool = True
    # HL7 messages are acknowledged once stored; surveillance follows within this many seconds, one run for
    # every message received meanwhile (a FHIR POST surveils before it answers). docs/service.md#hl7-v2
    hl7_surveillance_delay_s: float = Field(default=1.0, ge=0, le=3600)
    # Those deferred runs in a process of their own, started at the first (its Python shares no GIL with the
    # feed's threads: a run beside a busy feed took about twice as long in the server's own process).
    # False: in a thread of the server. docs/service.md#hl7-v2
    surveillance_process: bool = True
    # When an HL7 message is acknowledged (AA): "journal" once it is in the fsync'd journal (messages arriving
    # together share one fsync; stored in batches right after: hundreds of messages a second), "store" once its
    # own event-store append returned (tens a second; the ACK also warns of results normalize set aside).
    # docs/service.md#hl7-v2
    mllp_ack_after: Literal["journal", "store"] = "journal"
    # Record identity = type + id (FHIR), order number + code (HL7); True: the source system is part of it
    # (FHIR meta.source, HL7 MSH-3/MSH-4), for feeds whose ids are unique per system only. docs/service.md#identity
    identity_per_source: bool = False
    mllp_port: int | None = Field(default=None, ge=0, le=65535)  # HL7 v2 MLLP listener; None: off, 0: any free port
    mllp_host: str | None = None  # default: host
    # MLLP over TLS (results carry PHI): the listener's certificate chain and key (PEM); with a client CA,
    # only senders presenting a certificate it signed are accepted (mutual TLS). docs/service.md#hl7-v2
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    # an MLLP connection that completes no message for this long is closed (senders reconnect); it frees the
    # task and socket a silent or half-open peer would hold for ever. docs/service.md#hl7-v2
    mllp_idle_timeout_s: float = Field(default=300.0, gt=0)
    warm_up: bool = True
    # What the service's own loggers ("mgaki.*") write to standard error: "info" adds each deferred surveillance
    # run (new alerts, seconds) and other progress lines; lines name counts and exception types, never patients.
    # None (default): logging is left as the process configured it (Python's default: warnings and errors)
    log_level: Literal["debug", "info", "warning", "error"] | None = None
    # Throughput and overload (docs/service.md#performance)
    workers: int = Field(default=1, ge=1)  # uvicorn worker processes (one GIL each): about one per core
    # CDS calls in progress per worker; one more -> 503 at once. At most the thread pool (40): none waits for a thread.
    cds_max_in_flight: int = Field(default=8, ge=1, le=40)
    # CDS calls computed at once per worker, the others waiting in arrival order. 1: no two calls share the GIL
    # (p99 at 100 req/s 18-26 ms against 30-40 ms with the 40-thread pool, docs/service.md#performance); raise it
    # when many calls fetch their prefetch from the FHIR server (they wait on the network, not the CPU).
    cds_threads: int = Field(default=1, ge=1, le=40)
    retry_after_s: int = Field(default=1, ge=0)  # Retry-After of an overload 503
    sqlite_busy_timeout_s: float = Field(default=30.0, gt=0)  # wait for SQLite's write lock, then 503
    # SQLite durability of each commit (audit rows included): NORMAL (WAL) survives a crash of the process
    # or the service, not a power loss of the machine; FULL survives both at one fsync per commit.
    sqlite_synchronous: Literal["FULL", "NORMAL"] = "NORMAL"
    # Request edges (docs/service.md#request-limits): body sizes, how long a client may take to send its
    # request line and headers, then its body, and how many connections one client address may hold open
    # (0: no limit; behind a reverse proxy every client is the proxy's address: limit at the proxy instead).
    body_limits: BodyLimits = BodyLimits()
    header_timeout_s: float = Field(default=10.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    max_connections_per_client: int = Field(default=64, ge=0)
    # Deployment mode of each alert kind (off | silent | live | randomised) and the randomised rollout's
    # allocation (docs/evaluation.md): what clinicians are shown, and what a pragmatic trial compares.
    alerts: AlertPolicy = AlertPolicy()
    # The site's time zone (IANA name): the dashboard shows times in it; times are stored in UTC.
    timezone: str = "UTC"

    @model_validator(mode="after")
    def _known_timezone_and_kinds(self) -> ServiceConfig:
        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"timezone {self.timezone!r} is not an IANA time zone name (e.g. Europe/London)") from None
        from mgaki.knowledge import load

        known = {a.id for a in load().surveillance.alerts}
        if unknown := sorted(set(self.alerts.modes) - known):
            raise ValueError(f"alerts.modes names unknown alert kind(s) {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(known))}")
        return self

    @model_validator(mode="after")
    def _audience_when_jwt_required(self) -> ServiceConfig:
        for url in self.base_urls():
            if not url.startswith(("https://", "http://")) or "?" in url or "#" in url:
                raise ValueError(f"public_base_url {url!r} is not an http(s) URL without query or fragment")
        if self.cds_require_jwt and self.cds_issuers and not self.base_urls():
            raise ValueError("public_base_url is required when CDS Hooks JWTs are (cds_issuers set, cds_require_jwt "
                             "true): the URL, or list of URLs, the EHR calls this service by; a JWT's aud must be "
                             "one of them followed by the service's path")
        return self

    def base_urls(self) -> list[str]:
        """The configured public base URL(s), without a trailing slash."""
        urls = [self.public_base_url] if isinstance(self.public_base_url, str) else self.public_base_url or []
        return [u.rstrip("/") for u in urls]

    def audiences(self, path: str) -> list[str]:
        """Every ``aud`` a CDS JWT for the endpoint at ``path`` may carry (empty: none is accepted)."""
        return [u + path for u in self.base_urls()]

    @model_validator(mode="after")
    def _mllp_port_fixed_with_workers(self) -> ServiceConfig:
        if self.workers > 1 and self.mllp_port == 0:
            raise ValueError("mllp_port 0 (any free port) cannot be shared by several workers: give a port number")
        return self

    @model_validator(mode="after")
    def _mllp_senders_are_verified(self) -> ServiceConfig:
        named = [t.name for t in self.tokens if t.mllp_client_cn is not None]
        if named and self.mllp_tls_client_ca is None:
            raise ValueError(f"token(s) {', '.join(named)}: mllp_client_cn needs mllp_tls_client_ca (a certificate's "
                             "name is trusted only when the CA that signed it is)")
        cns = [t.mllp_client_cn for t in self.tokens if t.mllp_client_cn is not None]
        if len(cns) != len(set(cns)):
            raise ValueError("two tokens name the same mllp_client_cn")
        return self

    def mllp_senders(self) -> dict[str, frozenset[str] | None]:
        """Verified MLLP client certificate common name -> the patients its messages may name (None: any)."""
        return {t.mllp_client_cn: None if "admin" in t.roles or t.patients is None else frozenset(t.patients)
                for t in self.tokens if t.mllp_client_cn is not None}

    @model_validator(mode="after")
    def _mllp_tls_files(self) -> ServiceConfig:

        if (self.mllp_tls_cert is None) != (self.mllp_tls_key is None):
            raise ValueError("mllp_tls_cert and mllp_tls_key go together (the certificate and its private key)")
        if self.mllp_tls_client_ca is not None and self.mllp_tls_cert is None:
            raise ValueError("mllp_tls_client_ca needs mllp_tls_cert and mllp_tls_key (client certificates are "
                             "checked on a TLS listener)")
        for name in ("mllp_tls_cert", "mllp_tls_key", "mllp_tls_client_ca"):
            path = getattr(self, name)
            if path is not None and not Path(path).is_file():
                raise ValueError(f"{name}: {path} is not a readable file")
        return self

    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'mgaki.db').as_posix()}"


_ENV = {"MGAKI_DATA_DIR": "data_dir", "MGAKI_DATABASE_URL": "database_url", "MGAKI_HOST": "host",
        "MGAKI_PORT": "port", "MGAKI_PUBLIC_BASE_URL": "public_base_url",
        "MGAKI_CDS_REQUIRE_JWT": "cds_require_jwt", "MGAKI_TOKENS": "tokens", "MGAKI_CDS_ISSUERS": "cds_issuers",
        "MGAKI_FHIR_SERVERS": "fhir_servers", "MGAKI_MLLP_PORT": "mllp_port", "MGAKI_MLLP_HOST": "mllp_host",
        "MGAKI_MLLP_TLS_CERT": "mllp_tls_cert", "MGAKI_MLLP_TLS_KEY": "mllp_tls_key",
        "MGAKI_MLLP_TLS_CLIENT_CA": "mllp_tls_client_ca", "MGAKI_MLLP_IDLE_TIMEOUT_S": "mllp_idle_timeout_s",
        "MGAKI_WORKERS": "workers", "MGAKI_CDS_MAX_IN_FLIGHT": "cds_max_in_flight",
        "MGAKI_CDS_THREADS": "cds_threads"}


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> ServiceConfig:
    """File (``path`` or ``$MGAKI_CONFIG``), then environment, then explicit overrides."""
    env = os.environ if env is None else env
    data: dict[str, Any] = {}
    path = path or env.get("MGAKI_CONFIG")
    if path:
        p = Path(path)
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise InputError(str(p), f"cannot read service config: {exc}") from exc
        if not isinstance(loaded, dict):
            raise InputError(str(p), "service config must be a mapping")
        data.update(loaded)
    for var, key in _ENV.items():
        if var in env:
            val: Any = env[var]
            if key in ("tokens", "cds_issuers", "fhir_servers") or (key == "public_base_url"
                                                                     and val.lstrip().startswith("[")):
                try:
                    val = json.loads(val)
                except json.JSONDecodeError as exc:
                    raise InputError(var, f"not JSON: {exc.msg}") from exc
            data[key] = val
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ServiceConfig.model_validate(data)
    except ValidationError as exc:
        raise InputError(str(path or "environment"), f"invalid service config: {exc}") from exc
