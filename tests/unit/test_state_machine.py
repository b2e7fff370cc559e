"""StateMachine behaviour: commands, errors naming the index, reads, retention, determinism,
snapshots that restore exactly and refuse damage without touching the current state."""

from __future__ import annotations

import json
import os
import random
import shutil
import struct
import threading
from typing import Any

import pytest

from eventstream.state import (
    STATUS_BAD_QUEUE,
    STATUS_DEDUP_FULL,
    STATUS_DUPLICATE,
    STATUS_STORED,
    ApplyStoppedError,
    CommandType,
    ConfigError,
    OffsetRangeError,
    SnapshotError,
    StateError,
    StateMachine,
    dedup_cutoffs_us,
    encode_config_update,
    encode_dedup_add,
    encode_dedup_expire,
    encode_set_event,
    encode_set_event_at,
    validate_config,
)
from eventstream.state import queues as queues_module
from eventstream.storage.codec import Event


def listed(view: memoryview | None) -> list[int]:
    """A per-event array of an ApplyResult, which the command under test always sets."""
    assert view is not None
    return list(view)


def open_machine(tmp_path: Any, name: str = "sm") -> StateMachine:
    return StateMachine.open(str(tmp_path / name))


def events(count: int, start: int = 0, with_ids: bool = True, size: int = 100) -> list[Event]:
    return [
        Event(b"id-%d" % i if with_ids else None, b"key-%d" % (i % 7), None, 1_000 + i, b"x" * size)
        for i in range(start, start + count)
    ]


def test_noop_entry_advances_the_applied_index(tmp_path: Any) -> None:
    """Raft section 8: the leader's empty entry of its term has nothing to apply."""
    machine = open_machine(tmp_path)
    before = machine.digest()
    result = machine.apply(1, 3, b"")
    assert result.command is None and machine.applied_index == 1 and machine.applied_term == 3
    assert machine.digest() != before  # the applied index is part of the state


def test_exactly_once_across_batches_and_expiry(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    first = machine.apply(1, 1, encode_set_event(events(10)))
    assert listed(first.statuses) == [STATUS_STORED] * 10
    retry = machine.apply(2, 1, encode_set_event(events(10)))
    assert listed(retry.statuses) == [STATUS_DUPLICATE] * 10
    assert listed(retry.queues) == listed(first.queues) and listed(retry.offsets) == listed(first.offsets)
    # Ids first seen at 1000..1004 expire; the rest stay remembered.
    expired = machine.apply(3, 1, encode_dedup_expire(1_005))
    assert expired.expired_count == 5
    again = machine.apply(4, 1, encode_set_event(events(10)))
    assert listed(again.statuses) == [STATUS_STORED] * 5 + [STATUS_DUPLICATE] * 5
    assert dedup_cutoffs_us(10_000_000, machine.config) == (10_000_000 - 3_600_000_000, 10_000_000 - 60_000_000)


def test_set_event_at_remembers_ids_from_the_leaders_time_not_the_events(tmp_path: Any) -> None:
    """A backfill (or a client whose clock is behind) stamps events long before the leader
    sees them; the dedup window must run from when the cluster first saw each id, or the next
    DEDUP_EXPIRE forgets the ids and a retry is stored twice."""
    machine = open_machine(tmp_path)
    seen = 50_000_000  # the leader's clock at proposal; the events say 1000..1009
    first = machine.apply(1, 1, encode_set_event_at(seen, events(10)))
    assert listed(first.statuses) == [STATUS_STORED] * 10 and first.command == CommandType.SET_EVENT_AT
    assert machine.apply(2, 1, encode_dedup_expire(seen)).expired_count == 0  # all after their timestamps
    retry = machine.apply(3, 1, encode_set_event_at(seen + 1, events(10)))
    assert listed(retry.statuses) == [STATUS_DUPLICATE] * 10
    assert listed(retry.offsets) == listed(first.offsets)
    # Past the window from first sight they go, whatever the events' own timestamps.
    assert machine.apply(4, 1, encode_dedup_expire(seen + 1)).expired_count == 10
    # SET_EVENT (logs written before SET_EVENT_AT) still takes each event's timestamp.
    legacy = machine.apply(5, 1, encode_set_event(events(10, start=100)))
    assert listed(legacy.statuses) == [STATUS_STORED] * 10
    assert machine.apply(6, 1, encode_dedup_expire(1_200)).expired_count == 10


def test_dedup_add_then_set_event_is_a_duplicate(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_dedup_add([(b"id-0", 5)]))
    result = machine.apply(2, 1, encode_set_event(events(1)))
    assert listed(result.statuses) == [STATUS_DUPLICATE]
    assert (listed(result.queues)[0], listed(result.offsets)[0]) == (-1, -1)


def mixed(count: int, start: int = 0) -> list[Event]:
    """Events alternating a caller's id and an id the client library generated, both named
    "id-<i>" so the two classes' independence shows."""
    return [Event(b"id-%d" % i, b"key", None, 1_000 + i, b"x", i % 2 == 1) for i in range(start, start + count)]


def test_generated_ids_expire_by_their_own_window(tmp_path: Any) -> None:
    """Ids the client library made up only have to outlive its retries: DEDUP_EXPIRE's second
    cut-off forgets them while the callers' ids stay for the longer window."""
    machine = open_machine(tmp_path)
    seen = 50_000_000
    first = machine.apply(1, 1, encode_set_event_at(seen, mixed(10)))
    assert listed(first.statuses) == [STATUS_STORED] * 10
    assert len(machine.dedup) == 10 and machine.dedup.generated_count == 5
    assert listed(machine.apply(2, 1, encode_set_event_at(seen + 1, mixed(10))).statuses) == [STATUS_DUPLICATE] * 10
    # Generated ids first seen at `seen` go; callers' ids stay.
    assert machine.apply(3, 1, encode_dedup_expire(seen, seen + 1)).expired_count == 5
    assert len(machine.dedup) == 5 and machine.dedup.generated_count == 0
    retry = machine.apply(4, 1, encode_set_event_at(seen + 2, mixed(10)))
    assert listed(retry.statuses) == [STATUS_DUPLICATE, STATUS_STORED] * 5
    assert [listed(retry.offsets)[i] for i in range(0, 10, 2)] == [listed(first.offsets)[i] for i in range(0, 10, 2)]
    # The same id bytes in the other class are another id: each class answers only for itself.
    assert machine.dedup.lookup(b"id-1") is None and machine.dedup.lookup(b"id-1", generated=True) is not None
    assert machine.dedup.lookup(b"id-0") is not None and machine.dedup.lookup(b"id-0", generated=True) is None
    other = machine.apply(5, 1, encode_set_event_at(seen + 3, [Event(b"id-0", b"key", None, 1, b"x", True)]))
    assert listed(other.statuses) == [STATUS_STORED]
    # A one-cut-off body (logs written before the second window) applies to both classes.
    assert machine.apply(6, 1, encode_dedup_expire(seen + 3)).expired_count == 5 + 5
    assert machine.apply(7, 1, encode_dedup_expire(seen + 4)).expired_count == 1
    assert len(machine.dedup) == 0


def test_dedup_expire_of_another_length_stops_apply(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    with pytest.raises(ApplyStoppedError, match="entry 1 .*DEDUP_EXPIRE body is 12 bytes"):
        machine.apply(1, 1, bytes([CommandType.DEDUP_EXPIRE]) + bytes(12))


def test_both_classes_share_dedup_ids_max(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_config_update({"dedup_ids_max": 1000}))
    callers = [Event(b"c-%d" % i, None, None, 0, b"") for i in range(600)]
    generated = [Event(b"g-%d" % i, None, None, 0, b"", True) for i in range(400)]
    assert listed(machine.apply(2, 1, encode_set_event_at(10, callers + generated)).statuses) == [STATUS_STORED] * 1000
    more = machine.apply(3, 1, encode_set_event_at(11, [Event(b"c-new", None, None, 0, b""),
                                                         Event(b"g-new", None, None, 0, b"", True),
                                                         callers[0], generated[0]]))
    assert listed(more.statuses) == [STATUS_DEDUP_FULL, STATUS_DEDUP_FULL, STATUS_DUPLICATE, STATUS_DUPLICATE]
    # Room made in one class is room for either.
    assert machine.apply(4, 1, encode_dedup_expire(0, 11)).expired_count == 400
    again = machine.apply(5, 1, encode_set_event_at(12, [Event(b"c-new", None, None, 0, b"")]))
    assert listed(again.statuses) == [STATUS_STORED]


def test_snapshot_keeps_each_ids_class(tmp_path: Any) -> None:
    source = open_machine(tmp_path, "source")
    source.apply(1, 1, encode_set_event_at(100, mixed(20)))
    folder = source.snapshot()
    with open(os.path.join(folder, "MANIFEST.json")) as f:
        manifest = json.load(f)
    assert manifest["format"] == 2
    assert manifest["dedup"]["count"] == 10 and manifest["dedup_generated"]["count"] == 10
    target = open_machine(tmp_path, "target")
    receiver = target.snapshot_receiver()
    for chunk in source.snapshot_chunks(chunk_bytes=1000):
        receiver.feed(chunk)
    target.restore(receiver)
    assert target.digest() == source.digest() and target.dedup.generated_count == 10
    expire = encode_dedup_expire(0, 101)
    assert source.apply(2, 1, expire).expired_count == target.apply(2, 1, expire).expired_count == 10
    assert target.digest() == source.digest()


def test_a_format_1_snapshot_restores_like_the_log_it_came_from(tmp_path: Any) -> None:
    """A snapshot cut before generated ids had their own class: no dedup_generated image and a
    configuration without dedup_generated_window_ms, under a digest taken then. It restores,
    and the restored replica then matches one that applied the same log."""
    from eventstream.state.digest import state_digest
    from eventstream.state.snapshot import load_dedup

    source = open_machine(tmp_path, "source")
    for index, data in enumerate(command_stream(7, 30), start=1):
        source.apply(index, 1, data)
    assert source.dedup.generated_count == 0
    folder = source.snapshot()
    path = os.path.join(folder, "MANIFEST.json")
    with open(path) as f:
        manifest = json.load(f)
    os.unlink(os.path.join(folder, manifest.pop("dedup_generated")["file"]))
    del manifest["config"]["dedup_generated_window_ms"]
    manifest["format"] = 1
    dedup = load_dedup(folder, manifest, manifest["config"]["dedup_ids_max"])
    manifest["digest"] = state_digest(manifest["last_index"], manifest["config"], manifest["queues"], folder,
                                      dedup.freeze())
    with open(path, "w") as f:
        json.dump(manifest, f)
    target = open_machine(tmp_path, "target")
    target.restore(folder)
    assert target.applied_index == 30 and target.digest() == source.digest()
    assert target.config["dedup_generated_window_ms"] == 60_000


def test_explicit_queue_and_queue_count_change(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_config_update({"queue_count": 4}))
    result = machine.apply(
        2, 1, encode_set_event([Event(None, None, 3, 1, b"a"), Event(None, None, 4, 2, b"b")])
    )
    assert listed(result.statuses) == [STATUS_STORED, STATUS_BAD_QUEUE]
    machine.apply(3, 1, encode_config_update({"queue_count": 2}))
    # Queue 3 stays readable after the count shrank; new events can no longer name it.
    assert [e.payload for e in machine.read(3, 0)] == [b"a"]
    late = machine.apply(4, 1, encode_set_event([Event(None, None, 3, 3, b"c")]))
    assert listed(late.statuses) == [STATUS_BAD_QUEUE]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"\x09abc", "unknown command type 9"),
        (bytes([CommandType.SET_EVENT]) + b"\x01\x00", "SET_EVENT batch"),
        (bytes([CommandType.SET_EVENT_AT]) + b"\x00" * 7, "SET_EVENT_AT body is 7 bytes"),
        (bytes([CommandType.SET_EVENT_AT]) + b"\x00" * 8 + b"\x01\x00", "SET_EVENT batch"),
        (bytes([CommandType.DEDUP_EXPIRE]) + b"\x00" * 7, "DEDUP_EXPIRE body is 7 bytes"),
        (bytes([CommandType.CONFIG_UPDATE]) + b"{not json", "not JSON"),
        (bytes([CommandType.CONFIG_UPDATE]) + b'{"queue_count": 0}', "queue_count=0"),
        (bytes([CommandType.DEDUP_ADD]) + b"\x01", "DEDUP_ADD"),
    ],
)
def test_corrupt_entry_stops_apply_naming_the_index(
    tmp_path: Any, data: bytes, message: str
) -> None:
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_set_event(events(3)))
    before = machine.digest()
    with pytest.raises(ApplyStoppedError, match=f"entry 2 \\(term 4\\).*{message}"):
        machine.apply(2, 4, data)
    assert machine.applied_index == 1 and machine.digest() == before
    with pytest.raises(ApplyStoppedError, match="entry 2"):
        machine.apply(2, 4, b"")


def test_out_of_order_apply_is_refused(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    with pytest.raises(StateError, match="entry 2 applied out of order: last applied is 0"):
        machine.apply(2, 1, b"")


@pytest.mark.parametrize(
    ("update", "message"),
    [
        ({"queue_count": 0}, r"queue_count=0 is out of range: number of queues must be in \[1,"),
        ({"queue_count": True}, "queue_count must be an integer"),
        ({"batch_size": "100"}, "batch_size must be an integer"),
        ({"no_such_key": 1}, "unknown config key 'no_such_key'"),
        ({}, "non-empty mapping"),
        ({"queue_retention": {"x": {"bytes_max": 1}}}, "must be a queue number"),
        ({"queue_retention": {"1": {"size": 1}}}, "unknown field 'size'"),
        ({"queue_segment_bytes": 10}, "queue_segment_bytes=10 is out of range"),
        # Below twice the client library's retry horizon a retry could outlive its ids.
        ({"dedup_generated_window_ms": 59_999}, r"dedup_generated_window_ms=59999 is out of range"),
    ],
)
def test_invalid_config_is_refused_before_proposal(update: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_config(update)
    with pytest.raises(ConfigError, match=message):
        encode_config_update(update)


def test_reads_limits_and_clear_range_errors(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    assert machine.read(15, 0) == []  # a configured queue that has no event yet
    machine.apply(1, 1, encode_set_event([Event(None, None, 0, i, b"p%d" % i) for i in range(50)]))
    page = machine.read(0, 10, limit=5)
    assert [e.offset for e in page] == [10, 11, 12, 13, 14]
    assert [e.payload for e in page][:2] == [b"p10", b"p11"]
    one_record = 28 + 24 + 3
    assert len(machine.read(0, 10, limit=100, max_bytes=2 * one_record)) == 2
    assert len(machine.read(0, 10, limit=100, max_bytes=1)) == 1  # always progresses
    assert machine.read(0, 50) == []  # the end is a valid place to wait for more
    with pytest.raises(
        OffsetRangeError, match=r"offset 51 is outside the readable range \[0, 50\]"
    ):
        machine.read(0, 51)
    with pytest.raises(OffsetRangeError, match="queue 99 does not exist"):
        machine.read(99, 0)
    with pytest.raises(ValueError, match="limit must be in"):
        machine.read(0, 0, limit=0)


def test_retention_trims_whole_segments_by_bytes_and_age(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_config_update({"queue_segment_bytes": 4096}))
    index = 2
    for batch in range(20):  # 20 batches of 10 records of 140 bytes: a segment per 3 batches
        machine.apply(index, 1, encode_set_event([Event(None, None, 0, batch, b"x" * 100)] * 10))
        index += 1
    floor, end = machine.queue_range(0)
    assert (floor, end) == (0, 200)
    machine.apply(index, 1, encode_config_update({"queue_retention": {"0": {"bytes_max": 9000}}}))
    index += 1
    floor, end = machine.queue_range(0)
    log = machine.queues.logs[0]
    assert floor > 0 and end == 200 and floor == log.segments[0].base_offset
    assert log.bytes_total <= 9000 + 4096 + 1400
    with pytest.raises(OffsetRangeError, match=f"range \\[{floor}, 200\\]"):
        machine.read(0, floor - 1)
    # Age, judged by event timestamps (us), never a clock: with a 1 ms cap and the newest event
    # at 19 us nothing is old enough; an event at 5,000 us makes every older segment too old,
    # and only the newest segment (always kept) remains.
    machine.apply(
        index,
        1,
        encode_config_update({"queue_retention": {"0": {"bytes_max": 0, "age_ms_max": 1}}}),
    )
    assert machine.queue_range(0)[0] == floor
    machine.apply(index + 1, 1, encode_set_event([Event(None, None, 0, 5_000, b"late")]))
    newest_segment = log.segments[-1]
    assert len(log.segments) == 1 and machine.queue_range(0) == (newest_segment.base_offset, 201)
    assert machine.read(0, 200)[0].payload == b"late"


def test_an_event_stamped_in_the_future_does_not_age_out_the_queue(tmp_path: Any) -> None:
    """Age retention judges segments by their newest event; under SET_EVENT_AT an event
    stamped past the leader's clock counts as stamped then, so one client clock far ahead
    cannot make every older segment look old. Snapshots keep that view."""
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_config_update({"queue_segment_bytes": 4096,
                                              "queue_retention": {"0": {"age_ms_max": 60_000}}}))
    now = 1_790_000_000_000_000
    index = 2
    for batch in range(20):  # a segment per 3 batches, all within the last second
        machine.apply(index, 1, encode_set_event_at(now + batch, [Event(None, None, 0, now + batch, b"x" * 100)] * 10))
        index += 1
    a_year_ahead = now + 365 * 86_400_000_000
    for _ in range(3):  # enough to seal a segment behind the bad stamps
        machine.apply(index, 1, encode_set_event_at(now + 20, [Event(None, None, 0, a_year_ahead, b"bad clock")] * 10))
        index += 1
    assert machine.queue_range(0) == (0, 230)
    assert machine.read(0, 200)[0].timestamp_us == a_year_ahead  # stored as sent
    machine.snapshot()
    digest = machine.digest()
    machine.close()
    reopened = StateMachine.open(machine.directory)
    assert reopened.digest() == digest and reopened.queue_range(0) == (0, 230)
    # An hour of proposals later, by the leader's clock, the old segments do age out.
    reopened.apply(index, 1, encode_set_event_at(now + 3_600_000_000, [Event(None, None, 0, now + 3_600_000_000, b"later")]))
    assert reopened.queue_range(0)[0] > 0
    reopened.close()


def command_stream(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    out = [encode_config_update({"queue_segment_bytes": 4096, "queue_count": 4})]
    for i in range(count - 1):
        roll = rng.random()
        if roll < 0.7:
            out.append(
                encode_set_event(
                    [
                        Event(
                            b"id-%d" % rng.randrange(300) if rng.random() < 0.5 else None,
                            b"k%d" % rng.randrange(9),
                            None,
                            i * 1000 + j,
                            rng.randbytes(rng.randrange(200)),
                        )
                        for j in range(rng.randrange(1, 40))
                    ]
                )
            )
        elif roll < 0.8:
            out.append(encode_dedup_expire(i * 1000 - 20_000))
        elif roll < 0.9:
            out.append(encode_config_update({"retention_bytes_max": rng.choice([0, 10_000])}))
        else:
            out.append(b"")
    return out


def test_three_replicas_have_equal_digests_at_every_index(tmp_path: Any) -> None:
    replicas = [open_machine(tmp_path, f"r{i}") for i in range(3)]
    for index, data in enumerate(command_stream(7, 60), start=1):
        digests = {r.apply(index, 2, data) and r.digest() for r in replicas}
        assert len(digests) == 1, index
        if index == 30:  # one replica restarts from a snapshot mid-way and catches up
            replicas[1].snapshot()
            replicas[1].close()
            replicas[1] = open_machine(tmp_path, "r1")
            assert replicas[1].applied_index == 30
            assert replicas[1].digest() == replicas[0].digest()


def test_snapshot_links_segments_instead_of_copying(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    for index, data in enumerate(command_stream(3, 40), start=1):
        machine.apply(index, 1, data)
    with pytest.raises(StateError, match="asked at index 39, but the applied index is 40"):
        machine.snapshot(at_index=39)
    folder = machine.snapshot({"voters": [1, 2, 3]}, at_index=40)
    assert StateMachine.snapshot_info(folder) == (40, 1, {"voters": [1, 2, 3]})
    manifest = json.loads((tmp_path / "sm" / "snapshots" / folder / "MANIFEST.json").read_text())
    segment = manifest["queues"][0]["segments"][0]
    assert os.stat(os.path.join(folder, segment["file"])).st_nlink == 2  # snapshot + live
    assert manifest["last_index"] == machine.applied_index
    assert manifest["digest"] == machine.digest()


def test_a_digest_cut_gives_the_digest_at_its_index_while_apply_goes_on(tmp_path: Any) -> None:
    # Node status digests run from such a cut on a worker thread while the node applies.
    machine = open_machine(tmp_path)
    stream = list(command_stream(5, 80))
    for index, data in enumerate(stream[:50], start=1):
        machine.apply(index, 1, data)
    expected = machine.digest()
    cut = machine.begin_digest()
    assert cut.index == 50 and os.path.isdir(cut.work_path)
    for index, data in enumerate(stream[50:], start=51):  # segments grow, ids are added
        machine.apply(index, 1, data)
    assert machine.digest() != expected
    assert cut.compute() == expected
    assert not os.path.exists(cut.work_path)


def snapshot_stream(tmp_path: Any) -> tuple[StateMachine, list[bytes]]:
    machine = open_machine(tmp_path, "source")
    for index, data in enumerate(command_stream(11, 40), start=1):
        machine.apply(index, 1, data)
    machine.snapshot()
    # The source keeps applying after the cut; the snapshot must not see it.
    machine.apply(41, 1, encode_set_event(events(50)))
    return machine, list(machine.snapshot_chunks(chunk_bytes=4096))


def test_streamed_snapshot_restores_exact_state(tmp_path: Any) -> None:
    source, chunks = snapshot_stream(tmp_path)
    assert max(len(c) for c in chunks) <= 4096
    target = open_machine(tmp_path, "target")
    target.apply(1, 1, encode_set_event(events(5)))
    receiver = target.snapshot_receiver()
    for chunk in chunks:
        receiver.feed(chunk)
    target.restore(receiver)
    assert target.applied_index == 40
    reference = open_machine(tmp_path, "reference")
    for index, data in enumerate(command_stream(11, 40), start=1):
        reference.apply(index, 1, data)
    digest_at_40 = reference.digest()
    assert target.digest() == digest_at_40
    # The restored machine keeps applying like any other replica.
    data = encode_set_event(events(50))
    target.apply(41, 1, data)
    reference.apply(41, 1, data)
    assert target.digest() == reference.digest() == source.digest()
    # Its received snapshot shares the active segments with its live state by hard link; the
    # appends above must not have changed what that snapshot holds.
    third = open_machine(tmp_path, "third")
    receiver = third.snapshot_receiver()
    for chunk in target.snapshot_chunks(chunk_bytes=1 << 16):
        receiver.feed(chunk)
    third.restore(receiver)
    assert third.applied_index == 40 and third.digest() == digest_at_40


def corrupt(chunks: list[bytes], at: int) -> list[bytes]:
    joined = bytearray(b"".join(chunks))
    joined[at] ^= 0x40
    return [bytes(joined)]


@pytest.mark.parametrize("damage", ["truncate", "flip-early", "flip-middle", "flip-late", "junk"])
def test_damaged_snapshot_is_refused_and_state_kept(tmp_path: Any, damage: str) -> None:
    _, chunks = snapshot_stream(tmp_path)
    stream = b"".join(chunks)
    if damage == "truncate":
        bad = [stream[: len(stream) // 2]]
    elif damage == "junk":
        bad = [stream + b"more"]
    else:
        where = {"flip-early": 20, "flip-middle": len(stream) // 2, "flip-late": len(stream) - 7}
        bad = corrupt(chunks, where[damage])
    target = open_machine(tmp_path, "target")
    target.apply(1, 1, encode_set_event(events(5)))
    before = target.digest()
    with pytest.raises(SnapshotError):
        receiver = target.snapshot_receiver()
        for chunk in bad:
            receiver.feed(chunk)
        target.restore(receiver)
    assert target.digest() == before and target.applied_index == 1
    assert sum(len(target.read(q, 0)) for q in range(16)) == 5
    target.apply(2, 1, b"")  # and it keeps applying
    assert sorted(os.listdir(target.snapshots_root)) == []


def test_snapshot_with_damaged_segment_on_disk_is_refused(tmp_path: Any) -> None:
    source = open_machine(tmp_path, "source")
    for index, data in enumerate(command_stream(5, 30), start=1):
        source.apply(index, 1, data)
    folder = source.snapshot()
    with open(os.path.join(folder, "MANIFEST.json")) as f:
        manifest = json.load(f)
    segment = manifest["queues"][0]["segments"][0]
    path = os.path.join(folder, segment["file"])
    with open(path, "rb") as f:
        damaged = bytearray(f.read())
    os.unlink(path)  # break the hard link so the live file stays intact
    damaged[30] ^= 1
    with open(path, "wb") as f:
        f.write(damaged)
    target = open_machine(tmp_path, "target")
    with pytest.raises(SnapshotError, match="CRC"):
        target.restore(folder)
    assert target.applied_index == 0


def test_dedup_add_body_limits() -> None:
    with pytest.raises(ValueError, match="1..256 bytes"):
        encode_dedup_add([(b"", 1)])
    with pytest.raises(ValueError, match="carries 1..65536 ids"):
        encode_dedup_add([])
    assert encode_dedup_add([(b"a", 2)]) == b"\x02" + struct.pack("<IHq", 1, 1, 2) + b"a"


def test_snapshot_write_runs_while_apply_goes_on(tmp_path: Any) -> None:
    """Only the cut pauses apply: the slow part may run on another thread meanwhile, and the
    snapshot still holds exactly the state at the cut."""
    machine = open_machine(tmp_path)
    stream = command_stream(13, 80)
    for index, data in enumerate(stream[:40], start=1):
        machine.apply(index, 1, data)
    digest_at_cut = machine.digest()
    cut = machine.begin_snapshot()
    done: list[str] = []
    writer = threading.Thread(target=lambda: done.append(cut.write()))
    writer.start()
    for index, data in enumerate(stream[40:], start=41):
        machine.apply(index, 1, data)
    writer.join()
    target = open_machine(tmp_path, "target")
    target.restore(done[0])
    assert target.applied_index == 40 and target.digest() == digest_at_cut


def test_open_segment_files_are_bounded(tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setattr(queues_module, "OPEN_SEGMENTS_MAX", 3)
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_config_update({"queue_count": 20}))
    for index in range(2, 6):
        batch = [Event(None, None, q, index, b"q%d-%d" % (q, index)) for q in range(20)]
        machine.apply(index, 1, encode_set_event(batch))
    # A queue holds a descriptor or records not yet written only while it is among the
    # OPEN_SEGMENTS_MAX most recently appended; closing the others wrote their records.
    holding = [log for log in machine.queues.logs.values() if log._active_fd is not None or log.unwritten]
    assert 1 <= len(holding) <= 3
    assert all(not log.unwritten for log in machine.queues.logs.values() if log not in holding)
    assert [e.payload for e in machine.read(0, 0)] == [b"q0-%d" % i for i in range(2, 6)]


def test_disk_error_stops_apply_until_reopened(tmp_path: Any, monkeypatch: Any) -> None:
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_set_event(events(5)))

    def disk_full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    # An entry large enough to be written to its queue file inside apply.
    big = [Event(None, None, 0, 1, b"x" * 4096) for _ in range(queues_module.WRITE_BEHIND_BYTES // 4096 + 1)]
    with monkeypatch.context() as patch:
        patch.setattr(queues_module.os, "write", disk_full)
        with pytest.raises(ApplyStoppedError, match="entry 2 .*half-applied.*No space"):
            machine.apply(2, 1, encode_set_event(big))
    with pytest.raises(ApplyStoppedError):
        machine.apply(2, 1, b"")
    machine.close()
    reopened = open_machine(tmp_path)
    assert reopened.applied_index == 0  # no snapshot yet: the node replays the log from 1


def test_disk_error_writing_gathered_events_stops_apply(tmp_path: Any, monkeypatch: Any) -> None:
    """Small applies are written later (queues.py WRITE_BEHIND_BYTES); a failure then stops
    apply just the same, and no snapshot is cut from files that miss events."""
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_set_event(events(5)))

    def disk_full(fd: int, data: Any) -> int:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(queues_module.os, "write", disk_full)
        machine.apply(2, 1, encode_set_event(events(5, start=5)))  # gathered, not yet written
        with pytest.raises(ApplyStoppedError, match="queue files failed.*No space"):
            machine.read(0, 0)
    with pytest.raises(ApplyStoppedError):
        machine.apply(3, 1, encode_set_event(events(1, start=10)))
    with pytest.raises(StateError, match="stopped"):
        machine.begin_snapshot()
    reopened_dir = machine.directory
    machine.close()
    reopened = StateMachine.open(reopened_dir)
    assert reopened.applied_index == 0
    reopened.close()


def test_gathered_events_are_read_digested_and_snapshotted(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    machine.apply(1, 1, encode_set_event(events(7)))
    assert any(log.unwritten for log in machine.queues.logs.values())
    stored = sum(len(machine.read(q, 0)) for q in machine.queues.logs)
    assert stored == 7
    digest = machine.digest()
    target = open_machine(tmp_path, "target")
    target.restore(machine.snapshot())
    assert target.digest() == digest


def test_snapshot_of_many_ids_restores_piece_by_piece(tmp_path: Any) -> None:
    """More ids than one decompression piece (65,536 entries), across two DEDUP_ADD entries."""
    machine = open_machine(tmp_path)
    ids = [(b"%08d" % i, i) for i in range(100_000)]
    machine.apply(1, 1, encode_dedup_add(ids[:60_000]))
    machine.apply(2, 1, encode_dedup_add(ids[60_000:]))
    target = open_machine(tmp_path, "target")
    target.restore(machine.snapshot())
    assert len(target.dedup) == 100_000 and target.digest() == machine.digest()
    assert target.dedup.lookup(b"00099999") == (-1, -1)


def test_one_machine_per_directory(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    with pytest.raises(StateError, match="open in another StateMachine"):
        open_machine(tmp_path)
    machine.close()
    open_machine(tmp_path).close()


def test_open_refuses_a_damaged_newest_snapshot_by_name(tmp_path: Any) -> None:
    machine = open_machine(tmp_path)
    for index, data in enumerate(command_stream(17, 20), start=1):
        machine.apply(index, 1, data)
    folder = machine.snapshot()
    machine.close()
    with open(os.path.join(folder, "dedup.lz4"), "r+b") as f:
        f.write(b"\x00\x00\x00\x00")
    with pytest.raises(SnapshotError, match="dedup.lz4"):
        open_machine(tmp_path)
    shutil.rmtree(folder)  # what an operator or the node does before asking for a snapshot
    assert open_machine(tmp_path).applied_index == 0


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m["queues"][0]["segments"][1].update(base_offset=10**6), "does not follow"),
        (lambda m: m["queues"][0].update(queue=99_999), "out of range"),
        (lambda m: m.update(queue_slots=10**9), "queue_slots"),
        (lambda m: m["queues"][0].update(next_offset=1), "do not cover"),
        (lambda m: m.update(last_index=1), "digest"),
    ],
)
def test_inconsistent_manifest_is_refused(tmp_path: Any, edit: Any, message: str) -> None:
    source = open_machine(tmp_path, "source")
    for index, data in enumerate(command_stream(19, 40), start=1):
        source.apply(index, 1, data)
    folder = source.snapshot()
    path = os.path.join(folder, "MANIFEST.json")
    with open(path) as f:
        manifest = json.load(f)
    assert len(manifest["queues"][0]["segments"]) >= 2
    edit(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)
    target = open_machine(tmp_path, "target")
    with pytest.raises(SnapshotError, match=message):
        target.restore(folder)
    assert target.applied_index == 0


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_replicas_converge_through_snapshots_restarts_and_installs(
    tmp_path: Any, seed: int
) -> None:
    """Three replicas apply 600 random entries; at random points one snapshots, one restarts
    from its snapshot, one installs another's snapshot over a stream and catches up. Digests
    must agree at every index (bounded: 600 entries of up to 40 events per seed)."""
    rng = random.Random(seed)
    stream = command_stream(seed, 600)
    replicas = [open_machine(tmp_path, f"r{i}") for i in range(3)]
    for index, data in enumerate(stream, start=1):
        for replica in replicas:
            if replica.applied_index == index - 1:
                replica.apply(index, 1 + index // 100, data)
        roll = rng.random()
        who = rng.randrange(3)
        if roll < 0.03:
            replicas[who].snapshot()
        elif roll < 0.05 and replicas[who].latest_snapshot():
            replicas[who].close()
            replicas[who] = open_machine(tmp_path, f"r{who}")
        elif roll < 0.06:
            source = replicas[(who + 1) % 3]
            if source.latest_snapshot():
                receiver = replicas[who].snapshot_receiver()
                for chunk in source.snapshot_chunks(chunk_bytes=rng.randrange(100, 70_000)):
                    receiver.feed(chunk)
                replicas[who].restore(receiver)
        for replica in replicas:  # a replica behind catches up from the "log"
            while replica.applied_index < index:
                at = replica.applied_index + 1
                replica.apply(at, 1 + at // 100, stream[at - 1])
        assert len({r.digest() for r in replicas}) == 1, (seed, index)
    for replica in replicas:
        replica.close()
