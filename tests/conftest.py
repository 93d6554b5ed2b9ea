from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from mgaki.knowledge import KnowledgeBase, load


@pytest.fixture(scope="session")
def kb() -> KnowledgeBase:
    return load()

# The first unit conversion builds pint's registry (~0.6 s); a per-example
# deadline would turn that one-off cost into a flaky failure on a loaded machine.
from hypothesis import settings  # noqa: E402

settings.register_profile("mgaki", deadline=None)
settings.load_profile("mgaki")
