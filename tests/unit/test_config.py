from pathlib import Path

import pytest

from eventstream.config import ConfigError, load_config, parse_peers

PEERS = "1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"


def test_defaults_are_the_safe_ones() -> None:
    cfg = load_config()
    assert cfg.wal_sync is True
    assert cfg.peers == {1: "127.0.0.1:7101"}


def test_profile_then_file_then_flags(tmp_path: Path) -> None:
    path = tmp_path / "node.toml"
    path.write_text(f'id = 2\nlisten = "127.0.0.1:7102"\npeers = "{PEERS}"\nbatch_size = 50\n')
    cfg = load_config(path, profile="logging", overrides={"batch_size": None, "tick_ms": "20"})
    assert cfg.wal_sync is False  # from the profile
    assert cfg.batch_size == 50  # file beats profile
    assert cfg.tick_ms == 20  # flag, coerced
    assert cfg.peers[3] == "127.0.0.1:7103"
    assert load_config(path, profile="financial", overrides={"batch_size": 7}).batch_size == 7


def test_profile_rows_follow_the_seed_table() -> None:
    assert (load_config(profile="financial").wal_sync, load_config(profile="financial").batch_size) == (True, 1)
    assert (load_config(profile="iot").wal_sync, load_config(profile="iot").batch_size) == (False, 100)
    assert (load_config(profile="logging").wal_sync, load_config(profile="logging").batch_size) == (False, 1000)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"no_such_key": 1}, "unknown config key 'no_such_key'"),
        ({"batch_size": 0}, "batch_size"),
        ({"batch_size": "many"}, "batch_size: 'many' is not a valid int"),
        ({"election_ticks": 5, "heartbeat_ticks": 5}, "election_ticks"),
        ({"listen": "nowhere"}, "listen"),
        ({"wal_sync": "perhaps"}, "wal_sync"),
        ({"peers": "1=127.0.0.1:7101,1=127.0.0.1:7102"}, "appears twice"),
        ({"peers": "2=127.0.0.1:7102"}, "must include this node's own id 1"),
        ({"peers": "1=127.0.0.1:7109"}, "must match"),
        ({"dedup_window": -1}, "dedup_window"),
        # Found by the decoder fuzz: TOML's inf reached int() and raised OverflowError.
        ({"id": float("inf")}, "id: inf is not a valid int"),
        ({"batch_size": 3.7}, "batch_size: 3.7 is not a valid int"),
        ({"dedup_window": float("nan")}, "dedup_window: nan is not a valid float"),
        # '²'.isdigit() holds, but int('²') fails: ids and ports are ASCII digits only.
        ({"peers": "²=127.0.0.1:7101"}, "node id '²' must be a positive integer"),
        ({"listen": "127.0.0.1:7１01"}, "listen"),
    ],
)
def test_bad_values_are_refused_with_the_key_named(overrides: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=overrides)


def test_bad_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("id = = 3")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="No such file"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="profile"):
        load_config(profile="casino")


def test_peer_table_form() -> None:
    assert parse_peers({"1": "127.0.0.1:1", "2": "127.0.0.1:2"}) == {1: "127.0.0.1:1", 2: "127.0.0.1:2"}
    with pytest.raises(ConfigError):
        parse_peers("x=127.0.0.1:1")


def test_without_encryption_a_node_listens_on_loopback_only() -> None:
    for address in ("127.0.0.1:7101", "127.0.0.12:7101", "[::1]:7101", "localhost:7101"):
        assert load_config(overrides={"listen": address, "peers": f"1={address}"}).listen == address
    for key in ("listen", "http"):
        overrides = {key: "10.0.0.1:7101"}
        if key == "listen":
            overrides["peers"] = "1=10.0.0.1:7101"
        with pytest.raises(ConfigError, match=f"{key}: 10.0.0.1 is not a loopback address.*--insecure"):
            load_config(overrides=overrides)
        assert getattr(load_config(overrides={**overrides, "insecure": True}), key) == "10.0.0.1:7101"
    with pytest.raises(ConfigError, match="0.0.0.0 is not a loopback"):
        load_config(overrides={"listen": "0.0.0.0:7101", "peers": "1=0.0.0.0:7101"})
