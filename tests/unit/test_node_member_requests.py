"""The MEMBER_CHANGE body as the leader checks it before the core sees it
(eventstream/node/member_requests.py)."""

from __future__ import annotations

from typing import Any

import pytest

from eventstream.node.member_requests import MemberChangeRequest
from eventstream.raft.membership import ChangeKind


def test_a_well_formed_change_is_taken() -> None:
    add = MemberChangeRequest({"change": "add-learner", "id": 4, "address": "10.0.0.4:7101"})
    assert (add.kind, add.node, add.address, add.force) == (ChangeKind.ADD_LEARNER, 4, "10.0.0.4:7101", False)
    remove = MemberChangeRequest({"change": "remove", "id": 2, "force": True})
    assert (remove.kind, remove.node, remove.address, remove.force) == (ChangeKind.REMOVE, 2, None, True)


@pytest.mark.parametrize(("body", "message"), [
    ({"change": "grow", "id": 4}, "change must be one of add-learner, add-voter, promote, remove"),
    ({"change": "remove", "id": 0}, "id must be a positive integer"),
    ({"change": "remove", "id": True}, "id must be a positive integer"),
    ({"change": "remove", "id": "4"}, "id must be a positive integer"),
    ({"change": "add-voter", "id": 4}, "needs its address"),
    ({"change": "add-voter", "id": 4, "address": "10.0.0.4"}, "host:port"),
    ({"change": "promote", "id": 4, "address": "10.0.0.4:7101"}, "promote takes no address"),
    ({"change": "remove", "id": 4, "force": "yes"}, "force must be true or false"),
    ({"change": "remove", "id": 4, "why": "old"}, "unknown key 'why'"),
])
def test_a_malformed_change_names_its_fault(body: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemberChangeRequest(body)
