"""Canonical cohort event model (MEDS-aligned Arrow tables, Parquet store, DuckDB)."""

from mgaki.events.normalize import connect, normalize
from mgaki.events.schema import RAW, TABLES
from mgaki.events.store import EventStore, IngestSummary

__all__ = ["RAW", "TABLES", "EventStore", "IngestSummary", "connect", "normalize"]
