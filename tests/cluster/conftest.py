"""Every cluster test runs once per replication mode: the in-process pipelines and the
process pool must give the same guarantees."""

import pytest


@pytest.fixture(scope="module", autouse=True)
def _every_replication_mode(replication_mode: str) -> str:
    return replication_mode
