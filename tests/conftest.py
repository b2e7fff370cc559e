from collections.abc import Iterator

import pytest

from eventstream.config import REPLICATION_MODES
from eventstream.local_cluster import LocalCluster


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False, help="run long soaks and big simulations"
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow"):
        return
    skip_slow = pytest.mark.skip(reason="slow test: opt in with --run-slow (make test-slow)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture(scope="module", params=REPLICATION_MODES)
def replication_mode(request: pytest.FixtureRequest) -> Iterator[str]:
    """Runs a test module once per replication mode: LocalCluster.default_options
    carries the mode to every cluster the module starts."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(LocalCluster.default_options, "replication", request.param)
        yield request.param
