"""A small, fully deterministic cluster for unit and interaction tests: messages wait in one
queue until a test delivers them, and links can be cut."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from eventstream.raft import Entry, HardState, Message, MessageType, RaftConfig, RaftNode
from eventstream.raft.storage import MemoryStorage
from tests.sim.host import MemoryHost


def storage_with_terms(
    terms: Iterable[int], term: int = 0, voters: tuple[int, ...] = ()
) -> MemoryStorage:
    """A MemoryStorage whose log holds one entry per given term, at indexes 1, 2, ..."""
    storage = MemoryStorage(voters)
    entries = [Entry(i, t, b"e%d" % i) for i, t in enumerate(terms, start=1)]
    storage.append(entries)
    last_term = entries[-1].term if entries else 0
    storage.set_hard_state(HardState(max(term, last_term), 0, 0))
    return storage


class Cluster:
    def __init__(
        self,
        ids: Iterable[int],
        storages: dict[int, MemoryStorage] | None = None,
        node_class: type[RaftNode] = RaftNode,
        spares: Iterable[int] = (),
        **config: object,
    ) -> None:
        """`ids` are the first voters; `spares` run too but start outside the membership (nodes
        a membership change may add)."""
        self.ids = tuple(ids)
        self.spares = tuple(spares)
        self.config = config
        self.hosts: dict[int, MemoryHost] = {}
        storages = storages or {}
        for node_id in self.ids + self.spares:
            cfg = RaftConfig(id=node_id, voters=self.ids, **config)  # type: ignore[arg-type]
            storage = storages.get(node_id) or MemoryStorage()
            self.hosts[node_id] = MemoryHost(cfg, storage, node_id, node_class)
        self.queue: list[Message] = []
        self.cut: set[int] = set()
        self.delivered: list[Message] = []

    def node(self, node_id: int) -> RaftNode:
        return self.hosts[node_id].node

    def send(self, m: Message) -> None:
        self.queue.append(m)

    def process_ready(self, node_id: int) -> bool:
        return self.hosts[node_id].handle_ready(self.send) is not None

    def process_all(self) -> bool:
        moved = False
        for node_id in self.hosts:
            moved |= self.process_ready(node_id)
        return moved

    def deliver(self, keep: Callable[[Message], bool] | None = None) -> int:
        """Deliver every queued message (cut links and `keep`-rejected ones are dropped)."""
        queue, self.queue = self.queue, []
        count = 0
        for m in queue:
            if m.to in self.cut or m.sender in self.cut:
                continue
            if keep is not None and not keep(m):
                continue
            self.delivered.append(m)
            self.node(m.to).step(m)
            count += 1
        return count

    def stabilize(self, keep: Callable[[Message], bool] | None = None, rounds: int = 1000) -> None:
        for _ in range(rounds):
            moved = self.process_all()
            if not self.queue and not moved:
                return
            self.deliver(keep)
        raise AssertionError("cluster did not stabilize")

    def elect(self, node_id: int) -> None:
        self.node(node_id).campaign()
        self.stabilize()

    def count(
        self, type_: MessageType, sender: int | None = None, reject: bool | None = None
    ) -> int:
        return sum(
            1
            for m in self.delivered
            if m.type == type_
            and (sender is None or m.sender == sender)
            and (reject is None or m.reject == reject)
        )

    def terms(self, node_id: int) -> list[int]:
        storage = self.hosts[node_id].storage
        return [e.term for e in storage.entries(storage.first_index(), storage.last_index() + 1)]
