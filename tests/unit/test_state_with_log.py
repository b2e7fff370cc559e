"""The state machine with the storage layer's Raft log: the node's restart path.

Raft paper section 7: after a snapshot at index i the log through i may be discarded; a restarted
server loads the snapshot and replays the log after it. This checks that contract end to end
with SegmentLog: snapshot, compact_through, "crash", reopen, replay, same digest as a replica
that never stopped.
"""

from __future__ import annotations

import random
from typing import Any

from eventstream.state import StateMachine, encode_config_update, encode_set_event
from eventstream.storage import SegmentLog
from eventstream.storage.codec import Event


def entries(count: int) -> list[bytes]:
    rng = random.Random(5)
    out = [encode_config_update({"queue_segment_bytes": 4096, "queue_count": 3})]
    for i in range(count - 1):
        batch = [
            Event(b"id-%d" % rng.randrange(100), b"k%d" % rng.randrange(8), None, i, b"p" * 50)
            for _ in range(rng.randrange(1, 30))
        ]
        out.append(encode_set_event(batch) if i % 5 else b"")
    return out


def apply_from_log(machine: StateMachine, log: SegmentLog, through: int) -> None:
    index = machine.applied_index + 1
    while index <= through:
        for at, term, data in log.entries(index, through + 1, max_bytes=1 << 16):
            machine.apply(at, term, data)
            index = at + 1


def test_restart_from_snapshot_and_compacted_log(tmp_path: Any) -> None:
    log = SegmentLog.open(str(tmp_path / "log"), segment_bytes=8192, wal_sync=False)
    stream = entries(120)
    log.append([(i, 1 + i // 50, data) for i, data in enumerate(stream, start=1)])
    survivor = StateMachine.open(str(tmp_path / "survivor"))
    apply_from_log(survivor, log, 120)

    node = StateMachine.open(str(tmp_path / "node"))
    apply_from_log(node, log, 70)
    folder = node.snapshot()
    last_index, last_term, _ = StateMachine.snapshot_info(folder)
    assert (last_index, last_term) == (70, log.term(70))
    log.compact_through(last_index)
    assert log.first_index == 71
    apply_from_log(node, log, 90)
    node.close()  # a crash: what was applied after the snapshot lives only in the log

    restarted = StateMachine.open(str(tmp_path / "node"))
    assert restarted.applied_index == 70
    apply_from_log(restarted, log, 120)
    assert restarted.digest() == survivor.digest()
    log.close()
