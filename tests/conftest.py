from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mgaki.knowledge import KnowledgeBase, load


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return load()

# A per-example deadline would turn a one-off cost (first knowledge load, first
# fhir.resources model import) into a flaky failure on a loaded machine.
from hypothesis import settings  # noqa: E402

settings.register_profile("mgaki", deadline=None)
settings.load_profile("mgaki")
