"""The mgaki service: CDS Hooks 2.0, FHIR R4 ingest, surveillance alerts (FastAPI; SQLite or PostgreSQL).

Needs the ``service`` extra (``pip install 'mgaki[service]'``).
"""

from mgaki.service.app import create_app
from mgaki.service.config import ServiceConfig, load_config

__all__ = ["ServiceConfig", "create_app", "load_config"]
