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

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from mgaki.errors import InputError

__all__ = ["ROLES", "IssuerConfig", "Role", "ServiceConfig", "TokenConfig", "load_config"]

Role = Literal["reader", "writer", "admin"]
ROLES: tuple[Role, ...] = ("reader", "writer", "admin")


class TokenConfig(BaseModel):
    """A bearer token for the non-CDS endpoints and what its holder may do."""

    model_config = ConfigDict(extra="forbid")
    name: str
    token: str = Field(min_length=16)
    roles: list[Role]
    # Patients this token may read (ids as in the alerts/subject_id); None = all. Admin tokens ignore it.
    patients: list[str] | None = None


class IssuerConfig(BaseModel):
    """A CDS client allowed to call the hooks: its ``iss`` and how to get its keys."""

    model_config = ConfigDict(extra="forbid")
    iss: str
    jwks_url: str | None = None  # fetched (and cached) by PyJWKClient when a kid is not among `keys`
    keys: list[dict[str, Any]] = []  # JWKs (public)
    algorithms: list[str] = ["RS384", "ES384", "RS256", "ES256"]


class ServiceConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    data_dir: Path = Path("mgaki-data")
    database_url: str | None = None  # default: sqlite file in data_dir
    host: str = "127.0.0.1"
    port: int = 8000
    tokens: list[TokenConfig] = []
    cds_issuers: list[IssuerConfig] = []
    cds_require_jwt: bool = True  # False only for local development
    public_base_url: str | None = None  # the URL the EHR calls us by (JWT `aud`); default: the request's
    jwt_max_lifetime_s: int = 3600  # exp - iat ceiling: refuses long-lived tokens
    jwt_leeway_s: int = 30
    fhir_servers: list[str] = []  # FHIR base URLs the CDS services may fetch missing prefetch from
    fhir_timeout_s: float = Field(default=5.0, gt=0)
    fhir_max_pages: int = Field(default=10, ge=1)  # Bundle.link next pages followed per prefetch query
    surveil_on_ingest: bool = True
    # HL7 messages are acknowledged once stored; surveillance follows within this many seconds, one run for
    # every message received meanwhile (a FHIR POST surveils before it answers). docs/service.md#hl7-v2
    hl7_surveillance_delay_s: float = Field(default=1.0, ge=0, le=3600)
    mllp_port: int | None = Field(default=None, ge=0, le=65535)  # HL7 v2 MLLP listener; None: off, 0: any free port
    mllp_host: str | None = None  # default: host
    # MLLP over TLS (results carry PHI): the listener's certificate chain and key (PEM); with a client CA,
    # only senders presenting a certificate it signed are accepted (mutual TLS). docs/service.md#hl7-v2
    mllp_tls_cert: Path | None = None
    mllp_tls_key: Path | None = None
    mllp_tls_client_ca: Path | None = None
    warm_up: bool = True
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

    @model_validator(mode="after")
    def _mllp_port_fixed_with_workers(self) -> ServiceConfig:
        if self.workers > 1 and self.mllp_port == 0:
            raise ValueError("mllp_port 0 (any free port) cannot be shared by several workers: give a port number")
        return self

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
        "MGAKI_MLLP_TLS_CLIENT_CA": "mllp_tls_client_ca",
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
            if key in ("tokens", "cds_issuers", "fhir_servers"):
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
