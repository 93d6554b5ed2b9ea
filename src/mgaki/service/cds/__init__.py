"""CDS Hooks 2.0: discovery, the hooks' cards (``hooks``), the request/response models (``models``) and the
prefetch fetched from the EHR's FHIR server when the EHR did not send it (``fhir_fetch``)."""
