"""The state machine against its plain-Python model on random command sequences
(docs/state-machine.md, "Determinism"): same apply results, same queue ranges, same reads; then a snapshot restores the
exact state (same digest and reads)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventstream.state import (
    StateMachine,
    encode_config_update,
    encode_dedup_add,
    encode_dedup_expire,
    encode_set_event,
    encode_set_event_at,
)
from eventstream.storage.codec import Event
from tests.unit.state_reference import ReferenceStateMachine

ids = st.sampled_from([b"id-%d" % i for i in range(20)])
events = st.builds(
    Event,
    event_id=st.none() | ids,
    key=st.none() | st.sampled_from([b"user-%d" % i for i in range(6)]),
    queue=st.none() | st.none() | st.integers(0, 9),
    timestamp_us=st.integers(0, 1_000_000),
    payload=st.binary(max_size=300),
    id_generated=st.booleans(),
).map(lambda e: e if e.event_id is not None else e._replace(id_generated=False))
configs = st.fixed_dictionaries(
    {},
    optional={
        "queue_count": st.integers(1, 8),
        "queue_segment_bytes": st.integers(4096, 8192),
        "retention_bytes_max": st.sampled_from([0, 5000, 9000]),
        "retention_age_ms_max": st.sampled_from([0, 1, 300]),
        "queue_retention": st.dictionaries(
            st.sampled_from(["0", "1", "3"]),
            st.fixed_dictionaries({"bytes_max": st.sampled_from([0, 5000, 9000])}),
            max_size=2,
        ),
    },
).filter(bool)
commands = st.one_of(
    st.lists(events, min_size=1, max_size=25).map(encode_set_event),
    st.builds(encode_set_event_at, st.integers(0, 1_000_000), st.lists(events, min_size=1, max_size=25)),
    st.lists(st.tuples(ids, st.integers(0, 1_000_000)), min_size=1, max_size=4).map(
        encode_dedup_add
    ),
    st.integers(0, 1_000_000).map(encode_dedup_expire),
    st.builds(encode_dedup_expire, st.integers(0, 1_000_000), st.integers(0, 1_000_000)),
    configs.map(encode_config_update),
    st.just(b""),
)


def as_lists(result: Any) -> tuple:
    def listed(view: Any) -> list[int]:
        return list(view) if view is not None else []

    command = int(result.command) if result.command is not None else None
    return (
        command,
        listed(result.statuses),
        listed(result.queues),
        listed(result.offsets),
        result.expired_count,
    )


def read_all(machine: Any, queue: int, limit: int, max_bytes: int) -> list[list[tuple]]:
    """Every retained event of a queue, page by page (page boundaries are compared too)."""
    floor, end = machine.queue_range(queue)
    pages: list[list[tuple]] = []
    offset = floor
    while offset < end:
        page = machine.read(queue, offset, limit, max_bytes)
        assert page, "a read inside the range always returns at least one event"
        out: list[tuple] = []
        for item in page:
            if isinstance(item, tuple) and len(item) == 2:  # the model: (offset, Event)
                at, event = item
            else:
                at = item.offset
                event = Event(item.event_id, item.key, item.queue, item.timestamp_us, item.payload,
                              item.id_generated)
            out.append((at, tuple(event)))
        pages.append(out)
        offset = out[-1][0] + 1
    return pages


def segments_of(machine: Any, queue: int) -> list[tuple]:
    if isinstance(machine, ReferenceStateMachine):
        q = machine.queues.get(queue)
        return [(s.base_offset, len(s.events), s.size_bytes, s.sealed) for s in (q.segments if q else [])]
    log = machine.queues.logs.get(queue)
    segments = log.segments if log else []
    return [(s.base_offset, s.count, s.size_bytes, s.sealed) for s in segments]


SETTINGS = {
    "deadline": None,
    "suppress_health_check": [HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
}
SEQUENCES = (
    st.lists(commands, min_size=1, max_size=30),
    st.integers(1, 7),
    st.integers(1, 2000),
)


@settings(max_examples=60, **SETTINGS)  # type: ignore[arg-type]
@given(*SEQUENCES)
def test_machine_matches_model_and_restores(
    tmp_path_factory: Any, entries: list[bytes], limit: int, max_bytes: int
) -> None:
    machine = StateMachine.open(str(tmp_path_factory.mktemp("sm")))
    model = ReferenceStateMachine()
    setup = encode_config_update({"queue_segment_bytes": 4096})
    for index, data in enumerate([setup, *entries], start=1):
        if index % 3 == 0:  # check each queue's segments as the sequence goes on
            for queue in range(10):
                assert segments_of(machine, queue) == segments_of(model, queue), (index, queue)
        want = model.apply(index, data)
        got = as_lists(machine.apply(index, 1, data))
        assert got == (want[0] if want[0] is None else int(want[0]), *want[1:]), index
    for queue in range(10):
        assert machine.queue_range(queue) == model.queue_range(queue), queue
        assert segments_of(machine, queue) == segments_of(model, queue), queue
        assert read_all(machine, queue, limit, max_bytes) == read_all(
            model, queue, limit, max_bytes
        )
    # Snapshot, stream in small chunks, restore elsewhere: the exact same state.
    machine.snapshot()
    other = StateMachine.open(str(tmp_path_factory.mktemp("restored")))
    receiver = other.snapshot_receiver()
    for chunk in machine.snapshot_chunks(chunk_bytes=777):
        receiver.feed(chunk)
    other.restore(receiver)
    assert other.applied_index == machine.applied_index
    assert other.digest() == machine.digest()
    for queue in range(10):
        assert read_all(other, queue, 1000, 1 << 20) == read_all(machine, queue, 1000, 1 << 20)
    machine.close()
    other.close()


@pytest.mark.slow
@settings(max_examples=1500, **SETTINGS)  # type: ignore[arg-type]
@given(*SEQUENCES)
def test_machine_matches_model_long(
    tmp_path_factory: Any, entries: list[bytes], limit: int, max_bytes: int
) -> None:
    """The same comparison on many more sequences (make test-slow)."""
    test_machine_matches_model_and_restores.hypothesis.inner_test(  # type: ignore[attr-defined]
        tmp_path_factory, entries, limit, max_bytes
    )
