"""Ingest into the event store: FHIR Bundles and NDJSON (``ingestor``), HL7 v2 ORU^R01 (``hl7``) over
MLLP (``mllp``); each item acknowledged only once it is durable, surveillance after."""
