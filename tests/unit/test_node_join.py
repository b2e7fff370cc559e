"""Joining a running cluster (eventstream/node/join.py): what a node learns, what it refuses,
and what it keeps for its restarts."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from eventstream.config import ConfigError, NodeConfig, load_config
from eventstream.node.join import (
    JoinError,
    join_cluster,
    joined_from_view,
    load_joined,
    save_joined,
)
from eventstream.node.members import decode_addresses


def _view(**extra: Any) -> dict[str, Any]:
    members = {"1": {"role": "voter", "address": "127.0.0.1:7101"},
               "2": {"role": "voter", "address": "127.0.0.1:7102"},
               "3": {"role": "learner", "address": "127.0.0.1:7103"}}
    return {"voters": [1, 2], "learners": [3], "members": {**members, **extra}}


def _config(tmp_path: Path, node: int = 4, listen: str = "127.0.0.1:7104") -> NodeConfig:
    return load_config(overrides={"id": node, "listen": listen, "join": "127.0.0.1:7101",
                                  "data_dir": str(tmp_path / "data")})


def test_a_joining_node_starts_outside_the_membership_it_learned(tmp_path: Path) -> None:
    joined = joined_from_view(_config(tmp_path), _view())
    assert joined.membership.voters == (1, 2) and joined.membership.learners == (3,)
    assert decode_addresses(joined.membership.context) == joined.addresses
    assert joined.addresses[3] == "127.0.0.1:7103" and 4 not in joined.addresses


def test_a_node_added_before_it_started_joins_as_that_member(tmp_path: Path) -> None:
    view = _view(**{"4": {"role": "learner", "address": "127.0.0.1:7104"}})
    view["learners"] = [3, 4]
    assert joined_from_view(_config(tmp_path), view).membership.learners == (3, 4)


def test_an_id_or_address_in_use_is_refused(tmp_path: Path) -> None:
    with pytest.raises(JoinError, match="node id 2 is already a member at 127.0.0.1:7102"):
        joined_from_view(_config(tmp_path, node=2, listen="127.0.0.1:7999"), _view())
    with pytest.raises(JoinError, match="127.0.0.1:7103 is the address of member 3"):
        joined_from_view(_config(tmp_path, listen="127.0.0.1:7103"), _view())
    with pytest.raises(JoinError, match="not a membership"):
        joined_from_view(_config(tmp_path), {"voters": "x"})


def test_what_a_first_join_learned_is_kept_for_restarts(tmp_path: Path) -> None:
    config = _config(tmp_path)
    assert load_joined(config) is None
    save_joined(config, {**_view(), "leader": 1})
    kept = load_joined(config)
    assert kept is not None and kept.membership.voters == (1, 2)
    # A restart asks no one (the address given is not listening).
    assert asyncio.run(join_cluster(config, timeout_s=0.5)) == kept
    (config.data_path / "JOINED").write_text("{broken")
    with pytest.raises(JoinError, match="unreadable"):
        load_joined(config)


def test_a_join_no_member_answers_is_one_clear_error(tmp_path: Path) -> None:
    config = load_config(overrides={"id": 4, "listen": "127.0.0.1:7104", "join": "127.0.0.1:1",
                                    "data_dir": str(tmp_path / "data")})
    with pytest.raises(JoinError, match="no member at 127.0.0.1:1 answered"):
        asyncio.run(join_cluster(config, timeout_s=0.5))
    assert not (config.data_path / "JOINED").exists()


def test_join_and_peers_exclude_each_other() -> None:
    with pytest.raises(ConfigError, match="not both"):
        load_config(overrides={"id": 1, "listen": "127.0.0.1:7101", "join": "127.0.0.1:7102",
                               "peers": "1=127.0.0.1:7101,2=127.0.0.1:7102"})
    with pytest.raises(ConfigError, match="join"):
        load_config(overrides={"id": 1, "listen": "127.0.0.1:7101", "join": "nowhere"})
