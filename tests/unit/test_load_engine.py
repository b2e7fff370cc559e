"""esc-bench's native load engine (csrc/load_engine.h): its request bytes against the Python
encoders, its answer checks against damaged answers, and whole runs against a fake node on
loopback that answers well, badly, not at all, or with a NotLeader hint."""

from __future__ import annotations

import queue
import socket
import struct
import threading
import time
from array import array
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, cast

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from esc_bench._load_engine import (
    OUTCOME_NAMES,
    RUN_DONE,
    RUN_LOOKUP,
    RUN_UNTIL,
    LoadEngine,
    encode_append_request,
    monotonic_ns,
    read_answer,
)
from esc_bench.cli import main
from esc_bench.native_worker import LOOKUP_INTERVAL_S, _NativeWorker, resolve
from esc_bench.params import LoadParams
from esc_bench.worker import WorkerSpec
from eventstream.storage import crc32c
from eventstream.storage.codec import decode_batch, encode_batch
from eventstream.transport.client_protocol import (
    Op,
    Status,
    decode_request,
    encode_append_ok,
    encode_error,
    encode_request,
    encode_response,
)
from eventstream.transport.frames import FrameDecoder, frame_header
from eventstream.transport.hello import ROLE_CLIENT, Hello

pytestmark = pytest.mark.timeout(60)

RUN_BOUND_S = 10.0


def framed(body: bytes) -> bytes:
    return frame_header(len(body), crc32c(body)) + body


def python_request(request_id: int, ids: bytes | None, key_first: int, keys: int, payload: bytes,
                   timestamp_us: int, batch_size: int) -> bytes:
    # The engine's random ids stand for the client library's, so they are marked generated.
    rows = [
        (None if ids is None else ids[16 * i:16 * (i + 1)], b"key-%d" % ((key_first + i) % keys), None,
         timestamp_us, payload, ids is not None)
        for i in range(batch_size)
    ]
    return framed(encode_request(Op.APPEND, request_id, encode_batch(rows)))


def ok_answer(request_id: int, n: int, duplicates: bytes | None = None) -> bytes:
    body = encode_append_ok(42, array("I", [0] * n), array("Q", range(n)), duplicates or bytes(n))
    return framed(encode_response(Status.OK, request_id, body))


# -- the encoder, byte for byte ---------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(
    request_id=st.integers(min_value=0, max_value=2**64 - 1),
    batch_size=st.integers(min_value=1, max_value=20),
    with_ids=st.booleans(),
    key_first=st.integers(min_value=0, max_value=2**40),
    keys=st.integers(min_value=1, max_value=10_000_000),
    payload=st.binary(max_size=300),
    timestamp_us=st.integers(min_value=-(2**63), max_value=2**63 - 1),
    data=st.data(),
)
def test_native_request_equals_the_python_encoders(request_id: int, batch_size: int, with_ids: bool,
                                                   key_first: int, keys: int, payload: bytes,
                                                   timestamp_us: int, data: st.DataObject) -> None:
    ids = data.draw(st.binary(min_size=16 * batch_size, max_size=16 * batch_size)) if with_ids else None
    native = encode_append_request(request_id, batch_size, ids, key_first, keys, payload, timestamp_us)
    assert native == python_request(request_id, ids, key_first, keys, payload, timestamp_us, batch_size)


def test_encoder_refuses_ids_of_the_wrong_length() -> None:
    with pytest.raises(ValueError, match="16 bytes per event"):
        encode_append_request(1, 2, b"x" * 31, 0, 10, b"p", 0)


# -- answers: good, refused and damaged -------------------------------------------------------
def test_ok_answer_counts_duplicates() -> None:
    assert read_answer(ok_answer(9, 3, b"\x00\x01\x01"), 9, 3) == ("ok", 2, "")
    assert read_answer(ok_answer(9, 1), 9, 1) == ("ok", 0, "")


@pytest.mark.parametrize(("status", "name"), [
    (Status.NOT_LEADER, "NotLeader"),
    (Status.UNAVAILABLE, "Unavailable"),
    (Status.OVERLOADED, "Overloaded"),
    (Status.TIMEOUT, "Timeout"),
    (Status.INVALID_ARGUMENT, "Refused"),
    (Status.INTERNAL, "Refused"),
    (Status.OUT_OF_RANGE, "Refused"),
    (Status.REFUSED, "Refused"),
    (Status.UNAUTHENTICATED, "Refused"),
    (Status.PERMISSION_DENIED, "Refused"),
])
def test_error_statuses_are_named_with_their_message(status: Status, name: str) -> None:
    answer = framed(encode_error(status, 5, "127.0.0.1:7102", leader_id=2))
    assert read_answer(answer, 5, 1) == (name, 0, "127.0.0.1:7102")


def _with_crc_damage(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0x40])


@pytest.mark.parametrize(("frame", "request_id", "batch_size", "name"), [
    (ok_answer(7, 1), 8, 1, "BadAnswer"),  # someone else's request id
    (ok_answer(7, 2), 7, 1, "BadAnswer"),  # two results for one event
    (ok_answer(7, 1), 7, 2, "BadAnswer"),  # one result for two events
    (framed(encode_response(Status.OK, 7, b"\x00" * 11)), 7, 1, "BadAnswer"),  # short OK body
    (framed(ok_answer(7, 1)[8:] + b"\x00"), 7, 1, "BadAnswer"),  # a byte too many
    (framed(bytes([99]) + struct.pack("<QQ", 7, 0)), 7, 1, "BadAnswer"),  # unknown status
    (framed(bytes([Status.UNAVAILABLE]) + struct.pack("<Q", 7) + b"\x00" * 7), 7, 1, "BadAnswer"),  # no hint
    (framed(b"\x00" * 5), 7, 1, "BadAnswer"),  # shorter than an answer header
    (_with_crc_damage(ok_answer(7, 1)), 7, 1, "BadFrame"),
    (struct.pack("<II", 0xFFFFFFF0, 0) + b"\x00" * 16, 7, 1, "BadFrame"),  # huge length prefix
    (ok_answer(7, 1) + ok_answer(7, 1), 7, 1, "BadAnswer"),  # a second, unasked-for frame
    (ok_answer(7, 1)[:-3], 7, 1, "incomplete"),
    (b"", 7, 1, "incomplete"),
])
def test_damaged_answers_are_named(frame: bytes, request_id: int, batch_size: int, name: str) -> None:
    assert read_answer(frame, request_id, batch_size)[0] == name


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200), st.integers(min_value=1, max_value=10))
def test_random_bytes_never_pass_as_an_answer(data: bytes, batch_size: int) -> None:
    name, duplicates, _ = read_answer(data, 1, batch_size)
    assert name in OUTCOME_NAMES + ("incomplete",)
    assert name != "ok" or len(data) == 8 + 9 + 12 + 13 * batch_size
    assert duplicates <= batch_size


# -- whole runs against a fake node -----------------------------------------------------------
# (request number, request id, events) -> the answer's bytes, or pieces of them sent a few
# milliseconds apart, or None to close the connection instead.
Answer = Callable[[int, int, int], bytes | list[bytes] | None]


@dataclass
class FakeNode:
    """A loopback listener that speaks just enough of the node's client protocol: it checks the
    hello and each request with the Python decoders, and answers request k with answer(k, ...)
    (None: close the connection without answering)."""

    answer: Answer
    listener: socket.socket = field(default_factory=socket.socket)
    requests: int = 0
    event_ids: list[bytes] = field(default_factory=list)
    keys: list[bytes] = field(default_factory=list)
    connections: int = 0
    problems: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    closing: bool = False

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.listener.getsockname()
        return str(host), int(port)

    def start(self) -> None:
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self) -> None:
        self.closing = True
        self.listener.close()

    def _accept(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self.lock:
                self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        decoder = FrameDecoder(crc32c, 1 << 24)
        hello_seen = False
        with conn:
            while True:
                try:
                    data = conn.recv(65536)
                except OSError:
                    return
                if not data:
                    return
                for body in decoder.feed(data):
                    if not hello_seen:
                        if Hello.decode(body).role != ROLE_CLIENT:
                            self.problems.append("first frame is not a client hello")
                        hello_seen = True
                        continue
                    request = decode_request(body)
                    events = list(decode_batch(bytes(request.body)))
                    with self.lock:
                        number = self.requests
                        self.requests += 1
                        self.event_ids += [bytes(e.event_id) for e in events if e.event_id is not None]
                        self.keys += [bytes(e.key) for e in events if e.key is not None]
                    reply = self.answer(number, request.request_id, len(events))
                    if reply is None:
                        return
                    try:
                        for k, piece in enumerate([reply] if isinstance(reply, bytes) else reply):
                            if k:
                                time.sleep(0.005)
                            conn.sendall(piece)
                    except OSError:
                        return


@contextmanager
def fake_node(answer: Answer) -> Iterator[FakeNode]:
    node = FakeNode(answer)
    node.start()
    try:
        yield node
    finally:
        node.stop()


def engine(slots: int = 2, batch_size: int = 3, timeout_s: float = 5.0, keys: int = 5,
           ids: bool = True, payload: bytes = b"payload") -> LoadEngine:
    return LoadEngine(slots, batch_size, payload, keys, 0, ids, timeout_s,
                      backoff_initial_s=0.001, backoff_max_s=0.004)


def drive(load: LoadEngine, on_lookup: Callable[[str], None] | None = None) -> list[int]:
    """Run to the end of the schedule; the run results seen, bounded in time."""
    outcomes = []
    bound = time.monotonic() + RUN_BOUND_S
    while time.monotonic() < bound:
        outcome = load.run(min(bound, time.monotonic() + 0.5))
        outcomes.append(outcome)
        if outcome == RUN_DONE:
            return outcomes
        if outcome == RUN_LOOKUP:
            hint = load.take_hint()
            if on_lookup is not None:
                on_lookup(hint)
    raise AssertionError(f"the engine did not finish within {RUN_BOUND_S} s: {outcomes}")


def run_to_end(load: LoadEngine, node: FakeNode, appends: int | None, warmup_s: float = 0.0,
               run_s: float = RUN_BOUND_S) -> tuple[dict[str, Any], list[int]]:
    """Point the engine at the fake node, schedule from now, and drive it to the end: the
    figures and the run results seen."""
    load.set_target(*node.address)
    now = time.monotonic()
    load.set_schedule(now + warmup_s, now + run_s, appends)
    outcomes = drive(load)
    return load.figures(), outcomes


def test_engine_clock_is_time_monotonic() -> None:
    before = time.monotonic_ns()
    native = monotonic_ns()
    after = time.monotonic_ns()
    assert before <= native <= after


def test_every_request_is_answered_and_counted() -> None:
    with fake_node(lambda k, rid, n: ok_answer(rid, n, b"\x01" + bytes(n - 1) if k == 7 else None)) as node:
        load = engine(slots=2, batch_size=3)
        figures, _ = run_to_end(load, node, 40)
    assert figures["errors"] == {} and node.problems == []
    assert (figures["requests"], figures["events"], figures["events_acked"]) == (40, 120, 120)
    assert figures["duplicates"] == 1  # the fake answered request 7's first event as a duplicate
    assert node.requests == 40 and node.connections == figures["connects"] == 2
    assert len(set(node.event_ids)) == 120 and all(len(i) == 16 for i in node.event_ids)
    # Keys cycle over the cardinality, one after another across requests.
    assert set(node.keys) == {b"key-%d" % k for k in range(5)}
    warmup, counted = load.take_latencies()
    assert warmup == [] and sum(count for _, count in counted) == 40
    assert all(us >= 1 for us, _ in counted)
    assert load.take_interval() == (120, 0) and load.take_interval() == (0, 0)


def test_answers_arriving_in_pieces_are_put_together() -> None:
    def answer(k: int, rid: int, n: int) -> list[bytes]:
        whole = ok_answer(rid, n)
        return [whole[:3], whole[3:11], whole[11:-1], whole[-1:]]  # the header split, then the body

    with fake_node(answer) as node:
        figures, _ = run_to_end(engine(slots=2, batch_size=2), node, 6)
    assert figures["errors"] == {} and figures["requests"] == 6 == node.requests


def test_requests_larger_than_the_socket_buffer_and_their_long_answers() -> None:
    """5,000 events of 1 KiB: a 5 MB request goes out in several sends (EPOLLOUT), and its
    65 KB answer comes back in several reads."""
    with fake_node(lambda k, rid, n: ok_answer(rid, n)) as node:
        load = engine(slots=1, batch_size=5000, payload=b"p" * 1024)
        figures, _ = run_to_end(load, node, 3)
    assert figures["errors"] == {} and figures["events"] == 15_000 == len(set(node.event_ids))


def test_without_ids_events_carry_none() -> None:
    with fake_node(lambda k, rid, n: ok_answer(rid, n)) as node:
        load = engine(slots=1, batch_size=4, ids=False)
        run_to_end(load, node, 5)
    assert node.requests == 5 and node.event_ids == [] and len(node.keys) == 20


def test_requests_before_the_warmup_end_are_not_counted() -> None:
    with fake_node(lambda k, rid, n: ok_answer(rid, n)) as node:
        load = engine(slots=1, batch_size=1)
        now = time.monotonic()
        figures, _ = run_to_end(load, node, None, warmup_s=0.2, run_s=0.4)
    warmup, counted = load.take_latencies()
    assert figures["errors"] == {}
    assert sum(c for _, c in warmup) + sum(c for _, c in counted) == node.requests
    assert sum(c for _, c in counted) == figures["requests"] == figures["events"] > 0
    assert figures["events_acked"] == node.requests > figures["events"]
    assert now + 0.2 <= figures["last_answer_s"] < now + 0.4 + 5.0


def test_damaged_and_refused_answers_count_by_kind_and_the_slot_reconnects() -> None:
    def answer(k: int, rid: int, n: int) -> bytes | None:
        kind = k % 6
        if kind == 1:
            return _with_crc_damage(ok_answer(rid, n))
        if kind == 2:
            return ok_answer(rid + 1, n)
        if kind == 3:
            return None
        if kind == 4:
            return framed(encode_error(Status.OVERLOADED, rid, "busy"))
        if kind == 5:
            return b"\xff" * 64  # a length prefix far above any answer
        return ok_answer(rid, n)

    with fake_node(answer) as node:
        load = engine(slots=1, batch_size=2)
        figures, _ = run_to_end(load, node, 24)
    assert node.requests == 24
    assert figures["requests"] == 4 and figures["events"] == 8
    assert figures["errors"] == {"BadFrame": 8, "BadAnswer": 4, "ConnectionClosed": 4, "Overloaded": 4}
    # A new connection after each error but the last, after which no request was left to send.
    assert node.connections == figures["connects"] == 20
    assert load.take_interval() == (8, 20)


def test_not_leader_hint_moves_the_engine_to_the_leader() -> None:
    with fake_node(lambda k, rid, n: ok_answer(rid, n)) as leader:
        hint = f"{leader.address[0]}:{leader.address[1]}"
        with fake_node(lambda k, rid, n: framed(encode_error(Status.NOT_LEADER, rid, hint, 2))) as follower:
            load = engine(slots=3, batch_size=1)
            load.set_target(*follower.address)
            now = time.monotonic()
            load.set_schedule(now, now + RUN_BOUND_S, 30)
            hints: list[str] = []

            def follow(text: str) -> None:
                hints.append(text)
                load.set_target(*resolve(text))

            outcomes = drive(load, follow)
            figures = load.figures()
    assert RUN_LOOKUP in outcomes and hints and set(hints) == {hint}
    not_leader = figures["errors"]["NotLeader"]
    assert 1 <= not_leader <= 3 and follower.requests == not_leader
    assert figures["requests"] == 30 - not_leader and leader.requests == figures["requests"]


def test_a_silent_node_times_requests_out_and_the_run_ends() -> None:
    with fake_node(lambda k, rid, n: b"") as node:
        load = engine(slots=2, batch_size=1, timeout_s=0.1)
        now = time.monotonic()
        figures, outcomes = run_to_end(load, node, None, run_s=0.35)
    assert figures["requests"] == 0 and figures["events"] == 0
    assert RUN_LOOKUP in outcomes  # a silent leader may be cut off: ask the cluster who leads
    assert 2 <= figures["errors"]["NoAnswer"] <= 2 * 4
    assert time.monotonic() - now < 0.35 + 0.1 + 1.0


def test_a_refused_connection_asks_for_a_lookup_and_ends_with_the_schedule() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # free once closed: nothing listens there
    load = engine(slots=2, batch_size=1)
    load.set_target("127.0.0.1", port)
    now = time.monotonic()
    load.set_schedule(now, now + 0.2, None)
    outcomes = drive(load)
    assert RUN_LOOKUP in outcomes and outcomes[-1] == RUN_DONE
    assert load.figures()["errors"]["ConnectFailed"] >= 2
    assert load.figures()["requests"] == 0


def test_run_returns_at_its_until_time() -> None:
    with fake_node(lambda k, rid, n: ok_answer(rid, n)) as node:
        load = engine(slots=1, batch_size=1)
        load.set_target(*node.address)
        now = time.monotonic()
        load.set_schedule(now, now + RUN_BOUND_S, None)
        assert load.run(now + 0.1) == RUN_UNTIL
        assert time.monotonic() >= now + 0.1
        assert load.figures()["requests"] > 0
        load.set_schedule(now, now, None)  # end the run: the next run drains and finishes
        drive(load)


def test_engine_refuses_bad_arguments() -> None:
    with pytest.raises(ValueError, match="slots"):
        LoadEngine(0, 1, b"", 1, 0, True, 1.0)
    with pytest.raises(ValueError):
        LoadEngine(1, 0, b"", 1, 0, True, 1.0)
    load = engine()
    with pytest.raises(ValueError, match="numeric IP"):
        load.set_target("localhost", 7101)
    with pytest.raises(ValueError, match="numeric IP"):
        load.set_target("127.0.0.1", 0)


def test_random_ids_do_not_repeat_across_blocks() -> None:
    """Ids come from 64 KiB blocks of getrandom(): 5,000 events cross a block boundary."""
    with fake_node(lambda k, rid, n: ok_answer(rid, n)) as node:
        load = engine(slots=4, batch_size=10)
        run_to_end(load, node, 500)
    assert len(node.event_ids) == 5000 == len(set(node.event_ids))


@pytest.mark.parametrize("extra", [["--read-ratio", "0.1"], ["--rate", "1000"]])
def test_native_engine_refuses_reads_and_open_loop_in_one_line(extra: list[str]) -> None:
    result = CliRunner().invoke(main, ["--local", "3", "--engine", "native", *extra])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--engine native" in lines[0] and extra[0] in lines[0]


def test_follow_takes_the_hint_and_asks_the_cluster_only_without_one(monkeypatch: pytest.MonkeyPatch) -> None:
    params = LoadParams(clients=1, concurrency=2, batch_size=1, payload_bytes=10, keys=3, ids=True,
                        read_ratio=0.0, duration_s=1.0, events=None, warmup_s=0.0,
                        rate_events_per_s=None, time_limit_s=10.0, request_timeout_s=1.0,
                        report_interval_s=1.0, seed=1, engine="native")
    spec = WorkerSpec(index=0, addresses=("127.0.0.1:7101", "127.0.0.1:7102"), params=params, run_s=1.0,
                      append_requests=None, rate_requests_per_s=None, seed=1)
    worker = _NativeWorker(spec, cast(Any, queue.Queue()))  # the parent's queue is not used here
    asked: list[float] = []

    def leader_from_status() -> str:
        asked.append(time.monotonic())
        return "127.0.0.1:7102"

    monkeypatch.setattr(worker, "_leader_from_status", leader_from_status)
    worker._follow("")  # no hint at all: the nodes' status names the leader
    assert (worker.target, worker.leader_redirects, len(asked)) == ("127.0.0.1:7102", 0, 1)
    worker._follow("127.0.0.1:7101")  # a NotLeader hint naming another node is followed as is
    assert (worker.target, worker.leader_redirects, len(asked)) == ("127.0.0.1:7101", 1, 1)
    worker._follow("leadership changed; retry")  # no address: ask, but not twice within the interval
    assert (worker.target, len(asked)) == ("127.0.0.1:7101", 1)
    worker.last_lookup -= LOOKUP_INTERVAL_S
    worker._follow("127.0.0.1:7101")  # a hint naming the current target: ask the cluster
    assert (worker.target, worker.leader_redirects, len(asked)) == ("127.0.0.1:7102", 2, 2)


def test_resolve_gives_a_numeric_address() -> None:
    assert resolve("localhost:7101")[1] == 7101
    assert resolve("127.0.0.1:7101") == ("127.0.0.1", 7101)


def test_ids_are_as_long_as_the_client_engine_makes_them() -> None:
    from esc_bench._load_engine import EVENT_ID_BYTES as NATIVE_EVENT_ID_BYTES
    from esc_bench.worker import EVENT_ID_BYTES

    assert NATIVE_EVENT_ID_BYTES == EVENT_ID_BYTES
