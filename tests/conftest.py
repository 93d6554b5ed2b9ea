from __future__ import annotations

import sys
from collections import Counter
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test has an id of its own. pytest 9.2 builds a test's id from its ``originalname`` and its
    parametrization's id; schemathesis 4.32 makes one test per API operation with the operation only in the name
    (``test_x[GET /alerts]``) and the function's name as ``originalname``, so all of them had one id. Serially they
    still ran, but pytest-xdist, which hands tests to its workers by id, ran one of the fourteen and reported it for
    all. The operation goes back into the id; a duplicate left after that stops the run."""
    for item in items:
        original = getattr(item, "originalname", None)
        if (original and item.parent is not None and item.id.params is None
                and item.name.startswith(f"{original}[") and item.name.endswith("]")):
            item._id = item.parent.id.child(original).with_params(item.name[len(original) + 1:-1])
    dupes = sorted(i for i, n in Counter(item.nodeid for item in items).items() if n > 1)
    if dupes:
        raise pytest.UsageError(f"tests share an id (pytest-xdist would run only one of them): {dupes[:5]}")
