"""Fetch the prefetch a CDS client did not send, from its ``fhirServer`` (CDS Hooks 2.0, FHIR resource access).

Only allow-listed servers are contacted (``ServiceConfig.fhir_servers``: the hook request names the URL, so
an open fetch would let any caller make the service call anywhere). Searches are paged through
``Bundle.link[next]`` on the same server, up to ``fhir_max_pages``; more pages than that is an error rather
than advice computed on part of the record. Every failure becomes a ``CdsInputError`` with a status:
412 when the data cannot be had (the specification's answer), 502 when the server misbehaves.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

__all__ = ["FetchSettings", "FhirFetchError", "fetch_prefetch", "render"]

_TOKEN = re.compile(r"\{\{\s*context\.(\w+)\s*\}\}")


class FhirFetchError(Exception):
    """The FHIR server could not supply the data: ``status`` 412 (unavailable) or 502 (bad server)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


@dataclass(frozen=True)
class FetchSettings:
    allowed: tuple[str, ...]  # base URLs the service may call
    timeout_s: float
    max_pages: int


def render(template: str, context: dict[str, Any]) -> str:
    """A prefetch template with its ``{{context.X}}`` tokens filled (URL-encoded)."""

    def sub(m: re.Match[str]) -> str:
        val = context.get(m.group(1))
        if not isinstance(val, str) or not val:
            raise FhirFetchError(f"prefetch template needs context.{m.group(1)}, which the request lacks", 412)
        return quote(val, safe="")

    return _TOKEN.sub(sub, template)


def _norm(url: str) -> str:
    return url.rstrip("/")


def _allowed(server: str, allowed: tuple[str, ...]) -> bool:
    return _norm(server) in {_norm(a) for a in allowed}


def _same_server(url: str, base: str) -> bool:
    u, b = urlsplit(url), urlsplit(base)
    return (u.scheme, u.netloc) == (b.scheme, b.netloc) and u.path.startswith(b.path.rstrip("/"))


def _get(client: httpx.Client, url: str, key: str) -> dict[str, Any]:
    host = urlsplit(url).netloc
    try:
        r = client.get(url)
    except httpx.TimeoutException as exc:
        raise FhirFetchError(f"FHIR server {host} timed out fetching prefetch {key!r}", 502) from exc
    except httpx.HTTPError as exc:
        raise FhirFetchError(f"FHIR server {host} unreachable fetching prefetch {key!r}: "
                             f"{type(exc).__name__}", 502) from exc
    if r.status_code in (401, 403):
        raise FhirFetchError(f"FHIR server {host} refused the fhirAuthorization token for prefetch {key!r} "
                             f"(HTTP {r.status_code})", 412)
    if 400 <= r.status_code < 500:
        raise FhirFetchError(f"FHIR server {host} answered HTTP {r.status_code} for prefetch {key!r}", 412)
    if r.status_code != 200:
        raise FhirFetchError(f"FHIR server {host} answered HTTP {r.status_code} for prefetch {key!r}", 502)
    try:
        body = r.json()
    except ValueError as exc:
        raise FhirFetchError(f"FHIR server {host} sent non-JSON for prefetch {key!r}", 502) from exc
    if not isinstance(body, dict) or not isinstance(body.get("resourceType"), str):
        raise FhirFetchError(f"FHIR server {host} sent no FHIR resource for prefetch {key!r}", 502)
    return body


def _next(bundle: dict[str, Any]) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def _fetch_one(client: httpx.Client, base: str, key: str, query: str, max_pages: int) -> dict[str, Any]:
    first = _get(client, f"{base}/{query.lstrip('/')}", key)
    if first.get("resourceType") != "Bundle":
        return first  # a read (Patient/123)
    entries = list(first.get("entry") or [])
    url: str | None = _next(first)
    pages = 1
    while url is not None:
        if pages >= max_pages:
            raise FhirFetchError(f"prefetch {key!r} has more than {max_pages} pages on the FHIR server; "
                                 "not advising on part of the record", 412)
        if not _same_server(url, base):
            raise FhirFetchError(f"prefetch {key!r}: the FHIR server's next link leaves {base}", 502)
        page = _get(client, url, key)
        entries += list(page.get("entry") or [])
        url, pages = _next(page), pages + 1
    return {"resourceType": "Bundle", "type": "searchset", "entry": entries}


def fetch_prefetch(server: str, token: str | None, queries: dict[str, str],
                   settings: FetchSettings) -> dict[str, Any]:
    """``{key: resource or searchset Bundle}`` for each rendered query, fetched from ``server``."""
    if not _allowed(server, settings.allowed):
        raise FhirFetchError("fhirServer is not in the service's allow-list (fhir_servers): prefetch is "
                             "needed for this request", 412)
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = _norm(server)
    with httpx.Client(headers=headers, timeout=settings.timeout_s, follow_redirects=False) as client:
        return {key: _fetch_one(client, base, key, q, settings.max_pages) for key, q in queries.items()}
