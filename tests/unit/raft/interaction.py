"""Script-driven interaction tests (docs/conventions.md §17): a small command language drives a
deterministic cluster and prints what happened in a canonical text form, compared with a golden
file. Set ESC_REWRITE_GOLDEN=1 to rewrite the golden output from the current behaviour.

File format: a command line, a line `----`, then the expected output up to a blank line.
Lines starting with # between blocks are comments.

Commands:
  add-nodes N [pre-vote=B] [check-quorum=B] [chunk=BYTES] [max-inflight=N]
  set-log ID TERM,TERM,...      give node ID a durable log with these terms (before it runs)
  campaign ID | tick-election ID | tick-heartbeat ID
  tick-all N                    every node ticks N times, with a silent stabilize after each
  propose ID DATA | read-index ID CONTEXT | transfer-leadership FROM TO
  snapshot ID                   the node snapshots its applied state and compacts its log
  isolate ID | recover          cut or restore all links of a node
  process-ready ID              carry out one Ready of one node
  deliver-msgs [type=TYPE]      deliver queued messages (only those of TYPE when given)
  stabilize                     process Readies and deliver until nothing moves
  raft-state | raft-log ID | status ID
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from eventstream.raft import (
    Entry,
    HardState,
    Message,
    MessageType,
    ProposalError,
    RaftConfig,
    Ready,
)
from eventstream.raft.storage import MemoryStorage
from tests.sim.host import MemoryHost

REWRITE_ENV = "ESC_REWRITE_GOLDEN"


@dataclass
class Block:
    comments: list[str]
    command: str
    expected: str
    line: int


def parse(text: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    comments: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("#"):
            comments.append(line)
            i += 1
            continue
        if not line.strip():
            i += 1
            continue
        start = i
        command = line
        if i + 1 >= len(lines) or lines[i + 1] != "----":
            raise ValueError(f"line {i + 1}: expected ---- after command {command!r}")
        i += 2
        output: list[str] = []
        while i < len(lines) and lines[i].strip():
            output.append(lines[i])
            i += 1
        blocks.append(Block(comments, command, "\n".join(output), start + 1))
        comments = []
    return blocks


def render(blocks: list[Block], outputs: list[str]) -> str:
    parts = [
        "".join(c + "\n" for c in b.comments) + f"{b.command}\n----\n{out}\n"
        for b, out in zip(blocks, outputs)
    ]
    return "\n".join(parts)


def describe_entries(entries: list[Entry]) -> str:
    return " ".join(f"{e.index}/{e.term}{':' + e.data.decode() if e.data else ''}" for e in entries)


def describe_message(m: Message) -> str:
    t = m.type
    head = f"{m.sender}->{m.to} {t.name} term={m.term}"
    if t == MessageType.APPEND:
        return f"{head} prev={m.index}/{m.log_term} commit={m.commit}" + (
            f" entries=[{describe_entries(m.entries)}]" if m.entries else ""
        )
    if t == MessageType.APPEND_RESPONSE:
        if m.reject:
            return f"{head} REJECT index={m.index} hint={m.hint_index}/{m.log_term}"
        return f"{head} index={m.index}"
    if t in (MessageType.VOTE, MessageType.PRE_VOTE):
        extra = " transfer" if m.context else ""
        return f"{head} last={m.index}/{m.log_term}{extra}"
    if t in (MessageType.VOTE_RESPONSE, MessageType.PRE_VOTE_RESPONSE):
        return f"{head} {'REJECT' if m.reject else 'GRANT'}"
    if t == MessageType.HEARTBEAT:
        return f"{head} commit={m.commit}" + (f" read={m.read_seq}" if m.read_seq else "")
    if t == MessageType.HEARTBEAT_RESPONSE:
        return head + (f" read={m.read_seq}" if m.read_seq else "")
    if t == MessageType.SNAPSHOT:
        return f"{head} snap={m.index}/{m.log_term} offset={m.offset} bytes={len(m.data)}" + (
            " done" if m.done else ""
        )
    if t == MessageType.SNAPSHOT_RESPONSE:
        return f"{head} snap={m.index} offset={m.offset}" + (" REJECT" if m.reject else "")
    if t in (MessageType.READ_INDEX, MessageType.READ_INDEX_RESPONSE):
        return f"{head} index={m.index} ctx={m.context.decode()}"
    return head


def describe_ready(node_id: int, rd: Ready) -> list[str]:
    lines = [f"> {node_id} handling Ready"]
    if rd.hard_state is not None:
        hs = rd.hard_state
        lines.append(f"  HardState term={hs.term} vote={hs.vote} commit={hs.commit}")
    if rd.snapshot_chunks:
        lines.append(
            "  SnapshotChunks: "
            + " ".join(
                f"{c.offset}+{len(c.data)}{'(done)' if c.done else ''}" for c in rd.snapshot_chunks
            )
        )
    if rd.snapshot is not None:
        lines.append(f"  InstallSnapshot index={rd.snapshot.index} term={rd.snapshot.term}")
    if rd.entries:
        lines.append(f"  Entries: {describe_entries(rd.entries)}")
    if rd.committed_entries:
        lines.append(f"  CommittedEntries: {describe_entries(rd.committed_entries)}")
    for r in rd.read_states:
        lines.append(f"  ReadState index={r.index} ctx={r.context.decode()}")
    if rd.compact_index:
        lines.append(f"  Compact through {rd.compact_index}")
    for label, messages in (("send", rd.messages), ("after sync", rd.persisted_messages)):
        for m in messages:
            lines.append(f"  {label}: {describe_message(m)}")
    return lines


def parse_bool(text: str) -> bool:
    if text not in ("true", "false"):
        raise ValueError(f"expected true or false, got {text!r}")
    return text == "true"


class Interaction:
    def __init__(self) -> None:
        self.hosts: dict[int, MemoryHost] = {}
        self.queue: list[Message] = []
        self.cut: set[int] = set()
        self.config_args: dict[str, object] = {}

    def run(self, command: str) -> str:
        words = command.split()
        name, args = words[0], words[1:]
        handler: Callable[[list[str]], list[str]] | None = getattr(
            self, "cmd_" + name.replace("-", "_"), None
        )
        if handler is None:
            raise ValueError(f"unknown command {name!r}")
        lines = handler(args)
        return "\n".join(lines) if lines else "ok"

    # --- setup --------------------------------------------------------------------------------

    def cmd_add_nodes(self, args: list[str]) -> list[str]:
        count = int(args[0])
        options = dict(a.split("=", 1) for a in args[1:])
        self.config_args = {
            "pre_vote": parse_bool(options.pop("pre-vote", "true")),
            "check_quorum": parse_bool(options.pop("check-quorum", "true")),
            "snapshot_chunk_bytes": int(options.pop("chunk", "1048576")),
            "max_inflight": int(options.pop("max-inflight", "256")),
        }
        if options:
            raise ValueError(f"unknown options {sorted(options)}")
        ids = tuple(range(1, count + 1))
        for node_id in ids:
            self._make_host(node_id, ids, MemoryStorage())
        return []

    def _make_host(self, node_id: int, ids: tuple[int, ...], storage: MemoryStorage) -> None:
        config = RaftConfig(id=node_id, voters=ids, **self.config_args)  # type: ignore[arg-type]
        self.hosts[node_id] = MemoryHost(config, storage, seed=node_id)

    def cmd_set_log(self, args: list[str]) -> list[str]:
        node_id = int(args[0])
        terms = [int(t) for t in args[1].split(",")]
        storage = MemoryStorage()
        storage.append([Entry(i, t, b"") for i, t in enumerate(terms, start=1)])
        storage.set_hard_state(HardState(terms[-1], 0, 0))
        self._make_host(node_id, tuple(self.hosts), storage)
        return [f"{node_id}: log {describe_entries(list(storage.entries(1, len(terms) + 1)))}"]

    # --- inputs -------------------------------------------------------------------------------

    def cmd_campaign(self, args: list[str]) -> list[str]:
        self.hosts[int(args[0])].node.campaign()
        return []

    def cmd_tick_election(self, args: list[str]) -> list[str]:
        node = self.hosts[int(args[0])].node
        for _ in range(node.randomized_election_timeout):
            node.tick()
        return []

    def cmd_tick_heartbeat(self, args: list[str]) -> list[str]:
        node = self.hosts[int(args[0])].node
        for _ in range(node.config.heartbeat_ticks):
            node.tick()
        return []

    def cmd_tick_all(self, args: list[str]) -> list[str]:
        for _ in range(int(args[0])):
            for host in self.hosts.values():
                host.node.tick()
            self.cmd_stabilize([])
        return []

    def cmd_propose(self, args: list[str]) -> list[str]:
        try:
            index = self.hosts[int(args[0])].node.propose(args[1].encode())
        except ProposalError as error:
            return [f"error: {type(error).__name__}: {error}"]
        return [f"index {index}"]

    def cmd_read_index(self, args: list[str]) -> list[str]:
        try:
            self.hosts[int(args[0])].node.read_index(args[1].encode())
        except ProposalError as error:
            return [f"error: {type(error).__name__}: {error}"]
        return []

    def cmd_transfer_leadership(self, args: list[str]) -> list[str]:
        self.hosts[int(args[0])].node.transfer_leadership(int(args[1]))
        return []

    def cmd_snapshot(self, args: list[str]) -> list[str]:
        host = self.hosts[int(args[0])]
        host.take_snapshot()
        meta = host.storage.snapshot()
        host.node.compact(meta.index)
        return [
            f"snapshot index={meta.index} term={meta.term} bytes={len(host.storage.snapshot_data())}"
        ]

    def cmd_isolate(self, args: list[str]) -> list[str]:
        self.cut.add(int(args[0]))
        return []

    def cmd_recover(self, args: list[str]) -> list[str]:
        self.cut.clear()
        return []

    # --- running ------------------------------------------------------------------------------

    def _process(self, node_id: int) -> list[str]:
        host = self.hosts[node_id]
        if not host.node.has_ready():
            return []
        seen: list[Ready] = []

        def send(m: Message) -> None:
            self.queue.append(m)

        rd = host.handle_ready(send)
        if rd is not None:
            seen.append(rd)
        return [line for r in seen for line in describe_ready(node_id, r)]

    def cmd_process_ready(self, args: list[str]) -> list[str]:
        return self._process(int(args[0]))

    def _deliver(self, only: str | None) -> list[str]:
        lines: list[str] = []
        keep: list[Message] = []
        queue, self.queue = self.queue, []
        for m in queue:
            if only is not None and m.type.name != only:
                keep.append(m)
                continue
            if m.to in self.cut or m.sender in self.cut:
                lines.append(f"dropped: {describe_message(m)}")
                continue
            self.hosts[m.to].node.step(m)
        self.queue = keep + self.queue
        return lines

    def cmd_deliver_msgs(self, args: list[str]) -> list[str]:
        options = dict(a.split("=", 1) for a in args)
        return self._deliver(options.get("type"))

    def cmd_stabilize(self, args: list[str]) -> list[str]:
        lines: list[str] = []
        for _ in range(200):
            moved = False
            for node_id in self.hosts:
                out = self._process(node_id)
                moved |= bool(out)
                lines.extend(out)
            if not self.queue and not moved:
                return lines
            lines.extend(self._deliver(None))
        raise AssertionError("stabilize did not converge in 200 rounds")

    # --- inspection ---------------------------------------------------------------------------

    def cmd_raft_state(self, args: list[str]) -> list[str]:
        lines = []
        for node_id, host in self.hosts.items():
            node = host.node
            lines.append(
                f"{node_id}: {node.role.name} term={node.term} lead={node.leader} "
                f"commit={node.log.committed} applied={host.applied} last={node.log.last_index()}"
                + (" (isolated)" if node_id in self.cut else "")
            )
        return lines

    def cmd_raft_log(self, args: list[str]) -> list[str]:
        storage = self.hosts[int(args[0])].storage
        entries = list(storage.entries(storage.first_index(), storage.last_index() + 1))
        head = f"first={storage.first_index()} last={storage.last_index()}"
        return [head + (f" {describe_entries(entries)}" if entries else "")]

    def cmd_status(self, args: list[str]) -> list[str]:
        status = self.hosts[int(args[0])].node.status()
        lines = [
            f"{status.id}: {status.role.name} term={status.term} vote={status.vote} "
            f"lead={status.leader} commit={status.commit} applied={status.applied}"
        ]
        for peer, (state, match, next_index) in sorted(status.progress.items()):
            lines.append(f"  {peer}: {state} match={match} next={next_index}")
        return lines


def run_file(path: Path) -> tuple[str, str]:
    """Returns (expected file text, actual text)."""
    text = path.read_text()
    blocks = parse(text)
    interaction = Interaction()
    outputs = []
    for block in blocks:
        try:
            outputs.append(interaction.run(block.command))
        except Exception as error:
            raise AssertionError(
                f"{path.name}:{block.line}: {block.command!r} failed: {error}"
            ) from error
    actual = render(blocks, outputs)
    if os.environ.get(REWRITE_ENV) == "1":
        path.write_text(actual)
        return actual, actual
    return render(blocks, [b.expected for b in blocks]), actual
