"""The replication key: pool by default where there is a second core, validated like every key."""

import pytest

from eventstream.config import ConfigError, default_replication_mode, load_config


def test_pool_is_the_default_only_with_more_than_one_core() -> None:
    assert default_replication_mode(1) == "inprocess"
    assert default_replication_mode(2) == "pool"
    assert load_config().replication == default_replication_mode()


def test_either_mode_can_be_chosen_and_anything_else_is_refused_with_the_key_named() -> None:
    assert load_config(overrides={"replication": "inprocess"}).replication == "inprocess"
    assert load_config(overrides={"replication": "pool"}).replication == "pool"
    with pytest.raises(ConfigError, match="replication: must be one of inprocess, pool, got 'threads'"):
        load_config(overrides={"replication": "threads"})
