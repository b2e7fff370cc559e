"""Node status answers (eventstream/node/status.py): what a plain one costs, and the digest's cut."""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from eventstream.state import snapshot as snapshots
from eventstream.transport.client_protocol import Status, decode_error, decode_response
from eventstream.transport.client_server import ClientSession
from tests.unit.node_on_disk import close_node, open_node


def test_only_a_status_that_asks_for_the_digest_reads_the_state(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    # The digest reads every retained event: a monitor polling /status must not pay that.
    node = open_node(tmp_path)
    assert node.state is not None
    cuts: list[int] = []
    real = node.state.begin_digest

    def counted() -> snapshots.DigestCut:
        cuts.append(1)
        return real()

    monkeypatch.setattr(node.state, "begin_digest", counted)
    try:
        plain = node.status()
        assert "digest" not in plain and cuts == []
        assert "digest" not in asyncio.run(node.answer_status(digest=False)) and cuts == []
        asked = asyncio.run(node.answer_status(digest=True))
        assert cuts == [1] and asked["digest"] == node.state.digest() and asked["digest_index"] == asked["applied"]
        assert asked.keys() - plain.keys() == {"digest", "digest_index"}
        # Nothing applied since: the digest at this index is not computed again.
        assert asyncio.run(node.answer_status(digest=True))["digest"] == asked["digest"] and cuts == [1]
    finally:
        close_node(node)


def test_the_digest_is_computed_off_the_node_thread_and_leaves_no_links(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    # The node's thread must go on (heartbeats, clients) while the digest reads every event.
    node = open_node(tmp_path)
    assert node.state is not None
    threads: list[str] = []
    real = snapshots.DigestCut.compute

    def compute(cut: snapshots.DigestCut) -> str:
        threads.append(threading.current_thread().name)
        assert os.path.isdir(cut.work_path)
        return real(cut)

    monkeypatch.setattr(snapshots.DigestCut, "compute", compute)

    async def ask_twice() -> list[dict[str, Any]]:
        return list(await asyncio.gather(node.answer_status(digest=True), node.answer_status(digest=True)))

    try:
        first, second = asyncio.run(ask_twice())
        # Two requests at once share one computation, on a thread other than the caller's.
        assert len(threads) == 1 and threads[0] != threading.current_thread().name
        assert first["digest"] == second["digest"] == node.state.digest()
        assert [n for n in os.listdir(node.state.snapshots_root) if not n.startswith("snap-")] == []
    finally:
        close_node(node)


def test_a_digest_that_cannot_be_taken_is_reported_not_raised(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    node = open_node(tmp_path)
    assert node.state is not None

    def full_disk() -> snapshots.DigestCut:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(node.state, "begin_digest", full_disk)
    try:
        out = asyncio.run(node.answer_status(digest=True))
        assert "No space left" in out["digest_error"] and "digest" not in out and out["id"] == 1
    finally:
        close_node(node)


class _Session(ClientSession):
    """A client connection that keeps what the node answers."""

    __slots__ = ("answers",)

    def __init__(self) -> None:  # no server behind it
        self.answers: list[bytes] = []

    def reply(self, body: bytes) -> None:
        self.answers.append(body)


def test_a_status_request_whose_digest_fails_unexpectedly_still_gets_an_answer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    node = open_node(tmp_path)
    assert node.state is not None

    def broken() -> snapshots.DigestCut:
        raise ValueError("a bug")

    monkeypatch.setattr(node.state, "begin_digest", broken)
    session = _Session()
    try:
        asyncio.run(node.status_reporter.reply_status(session, 7))
        response = decode_response(session.answers[0])
        assert response.status is Status.INTERNAL and response.request_id == 7
        assert "a bug" in decode_error(response.body).message
    finally:
        close_node(node)
