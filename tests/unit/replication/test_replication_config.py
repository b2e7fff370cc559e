"""The replication key: auto by default (pool where there is a second core), validated like
every key; a local cluster of more nodes than cores starts them in-process."""

from pathlib import Path

import pytest

from eventstream.config import ConfigError, load_config, replication_in_effect, usable_cores
from eventstream.local_cluster import LocalCluster


def test_auto_is_the_default_and_becomes_pool_only_with_more_than_one_core() -> None:
    assert load_config().replication == "auto"
    assert replication_in_effect("auto", 1) == "inprocess"
    assert replication_in_effect("auto", 2) == "pool"
    # An explicit mode stands whatever the cores.
    assert replication_in_effect("pool", 1) == "pool"
    assert replication_in_effect("inprocess", 8) == "inprocess"


def test_any_mode_can_be_chosen_and_anything_else_is_refused_with_the_key_named() -> None:
    for mode in ("auto", "inprocess", "pool"):
        assert load_config(overrides={"replication": mode}).replication == mode
    with pytest.raises(ConfigError, match="replication: must be one of auto, inprocess, pool, got 'threads'"):
        load_config(overrides={"replication": "threads"})


def test_a_local_cluster_of_more_nodes_than_cores_replicates_in_process(tmp_path: Path) -> None:
    cores = usable_cores()
    crowded = LocalCluster(tmp_path / "a", cores + 1)
    assert crowded.options["replication"] == "inprocess"
    # Asked for explicitly, the pool stays; with a core per node, the nodes decide (auto).
    assert LocalCluster(tmp_path / "b", cores + 1, replication="pool").options["replication"] == "pool"
    assert LocalCluster(tmp_path / "c", 1).options.get("replication", "auto") == "auto"
