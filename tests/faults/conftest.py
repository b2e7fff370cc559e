import os
from collections.abc import Iterator

import pytest

from tests.cluster.harness import NetNamespace, netns_unavailable_reason


@pytest.fixture
def netns() -> Iterator[NetNamespace]:
    """A private network namespace the test's thread (and all it starts) runs in; skips with
    the reason when this machine cannot make one."""
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with NetNamespace(f"esc-test-{os.getpid()}") as ns:
        yield ns
