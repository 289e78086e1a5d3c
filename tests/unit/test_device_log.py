"""The device log core, network-free: every rule and every refusal by its class."""

from __future__ import annotations

import contextlib
import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starmux.device_log import (
    GENESIS_PREV,
    LOG_CODEC,
    DeviceLog,
    LogEntries,
    LogEntry,
    Op,
    decode_entries,
    encode_entries,
    sign_entry,
)
from starmux.device_roles import Action, DeviceRole
from starmux.errors import (
    DeviceLogAuthorityError,
    DeviceLogError,
    DeviceLogForkError,
    DeviceLogFormatError,
    DeviceLogGapError,
    DeviceLogLastOwnerError,
    DeviceLogRuleError,
    DeviceLogSignatureError,
    DeviceLogStaleError,
)
from starmux.identity import IdentityCard, NodeKeys, Role
from tests.unit.deterministic import counter_rng

ACCOUNT = bytes(range(16))
OTHER_ACCOUNT = bytes(range(1, 17))


def device(name: str) -> tuple[NodeKeys, IdentityCard]:
    keys = NodeKeys.generate(counter_rng(name.encode()))
    return keys, keys.card(Role.CONTROLLER, name)


A, B, C, D = (device(n) for n in ("alpha", "bravo", "charlie", "delta"))


def started() -> DeviceLog:
    return DeviceLog.genesis(A[0], A[1], ACCOUNT, at=1000.0)


def add(
    log: DeviceLog, by: NodeKeys, who: tuple[NodeKeys, IdentityCard], role: DeviceRole
) -> DeviceLog:
    return log.append(by, Op.ADD, who[0].sign_public, card=who[1], role=role, at=1001.0)[0]


def raw(
    log: DeviceLog, by: NodeKeys, op: Op, subject: bytes, *, card: bytes = b"", role: str = ""
) -> LogEntry:
    """An entry signed without the checks, placed right after ``log``'s head."""
    return sign_entry(
        by, log.account, len(log.entries), log.head.hash, op, subject, card, role, 1002.0
    )


def team() -> DeviceLog:
    log = add(started(), A[0], B, DeviceRole.VIEWER)
    return add(log, A[0], C, DeviceRole.OPERATOR)


def test_genesis_makes_the_first_device_the_only_owner() -> None:
    log = started()
    assert log.head.seq == 0
    assert log.entries[0].prev == GENESIS_PREV
    assert [(d.name, d.role) for d in log.devices] == [("alpha", DeviceRole.OWNER)]
    assert log.device(A[0].sign_public).added_by == A[0].sign_public  # type: ignore[union-attr]


def test_membership_follows_add_role_and_remove() -> None:
    log = team()
    assert log.role_of(B[0].sign_public) is DeviceRole.VIEWER
    assert log.role_of(C[0].sign_public) is DeviceRole.OPERATOR
    log, _ = log.append(A[0], Op.SET_ROLE, B[0].sign_public, role=DeviceRole.OPERATOR, at=2.0)
    log, _ = log.append(A[0], Op.REMOVE, C[0].sign_public, at=3.0)
    assert log.role_of(B[0].sign_public) is DeviceRole.OPERATOR
    assert log.role_of(C[0].sign_public) is None and log.is_removed(C[0].sign_public)
    assert [d.name for d in log.devices] == ["alpha", "bravo"]


def test_a_whole_log_round_trips_and_verifies_from_its_first_entry() -> None:
    log = team()
    again = DeviceLog.verify(decode_entries(log.encode()), account=ACCOUNT)
    assert again.head == log.head
    assert again.devices == log.devices


def test_the_log_belongs_to_one_account() -> None:
    with pytest.raises(DeviceLogRuleError):
        DeviceLog.verify(team().entries, account=OTHER_ACCOUNT)
    log = started()
    alien = sign_entry(
        A[0],
        OTHER_ACCOUNT,
        1,
        log.head.hash,
        Op.ADD,
        B[0].sign_public,
        B[1].encode(),
        "viewer",
        1.0,
    )
    with pytest.raises(DeviceLogRuleError):
        log.extend([alien])


def test_a_forged_entry_is_refused_by_its_signature() -> None:
    entries = list(team().entries)
    entries[2] = dataclasses.replace(entries[2], role="owner")  # C made owner, same signature
    with pytest.raises(DeviceLogSignatureError):
        DeviceLog.verify(entries)


def test_an_entry_signed_by_a_viewer_or_operator_is_refused() -> None:
    log = team()
    for signer in (B[0], C[0]):
        with pytest.raises(DeviceLogAuthorityError):
            log.extend(
                [raw(log, signer, Op.ADD, D[0].sign_public, card=D[1].encode(), role="owner")]
            )
        with pytest.raises(DeviceLogAuthorityError):
            log.append(signer, Op.REMOVE, A[0].sign_public, at=5.0)


def test_an_owner_that_was_removed_can_no_longer_sign() -> None:
    log = add(started(), A[0], B, DeviceRole.OWNER)
    log, _ = log.append(A[0], Op.REMOVE, B[0].sign_public, at=5.0)
    with pytest.raises(DeviceLogAuthorityError):
        log.append(B[0], Op.REMOVE, A[0].sign_public, at=6.0)


def test_a_stranger_cannot_sign_either() -> None:
    log = started()
    with pytest.raises(DeviceLogAuthorityError):
        log.extend([raw(log, D[0], Op.ADD, D[0].sign_public, card=D[1].encode(), role="owner")])


def test_a_fork_is_refused() -> None:
    base = started()
    mine = add(base, A[0], B, DeviceRole.VIEWER)
    theirs = add(base, A[0], C, DeviceRole.OWNER)  # another entry 1 on the same head
    with pytest.raises(DeviceLogForkError):
        mine.update(theirs.entries)
    with pytest.raises(DeviceLogForkError):
        mine.extend(theirs.entries[1:])  # seq 1 again
    # Right seq, written on another history: its prev names another entry.
    longer = add(theirs, A[0], D, DeviceRole.VIEWER)
    spliced = [*add(mine, A[0], D, DeviceRole.VIEWER).entries[:2], longer.entries[2]]
    with pytest.raises(DeviceLogForkError):
        DeviceLog.verify(spliced)


def test_another_genesis_for_the_same_account_is_a_fork() -> None:
    mine = team()
    other = DeviceLog.genesis(D[0], D[1], ACCOUNT, at=1.0)
    with pytest.raises(DeviceLogForkError):
        mine.update(other.entries)


def test_a_gap_is_refused() -> None:
    full = add(team(), A[0], D, DeviceRole.VIEWER)
    with pytest.raises(DeviceLogGapError):
        DeviceLog.verify([full.entries[0], full.entries[2], full.entries[3]])
    with pytest.raises(DeviceLogGapError):
        started().update(full.entries[2:])
    with pytest.raises(DeviceLogGapError):
        DeviceLog.verify([])


def test_a_replayed_older_head_is_refused_as_stale() -> None:
    log = team()
    old = log.entries[:2]
    with pytest.raises(DeviceLogStaleError):
        log.update(old)
    assert log.update(log.entries).head == log.head  # the same head is no news


def test_removing_or_demoting_the_last_owner_is_refused() -> None:
    log = team()
    with pytest.raises(DeviceLogLastOwnerError):
        log.append(A[0], Op.REMOVE, A[0].sign_public, at=5.0)
    with pytest.raises(DeviceLogLastOwnerError):
        log.append(A[0], Op.SET_ROLE, A[0].sign_public, role=DeviceRole.VIEWER, at=5.0)
    # With a second owner, an owner may step down or leave.
    log, _ = log.append(A[0], Op.SET_ROLE, B[0].sign_public, role=DeviceRole.OWNER, at=5.0)
    log, _ = log.append(A[0], Op.REMOVE, A[0].sign_public, at=6.0)
    assert [d.name for d in log.devices if d.role is DeviceRole.OWNER] == ["bravo"]


def test_illegal_entries_are_rule_errors() -> None:
    log = team()
    with pytest.raises(DeviceLogRuleError):  # already a member
        add(log, A[0], B, DeviceRole.OWNER)
    with pytest.raises(DeviceLogRuleError):  # not a member
        log.append(A[0], Op.REMOVE, D[0].sign_public, at=5.0)
    gone, _ = log.append(A[0], Op.REMOVE, B[0].sign_public, at=5.0)
    with pytest.raises(DeviceLogRuleError):  # removal is for good
        add(gone, A[0], B, DeviceRole.VIEWER)
    with pytest.raises(DeviceLogRuleError):  # the card must be the added device's
        log.extend([raw(log, A[0], Op.ADD, D[0].sign_public, card=B[1].encode(), role="viewer")])
    machine_card = D[0].card(Role.MACHINE, "box").encode()
    with pytest.raises(DeviceLogRuleError):  # only controllers are devices
        log.extend([raw(log, A[0], Op.ADD, D[0].sign_public, card=machine_card, role="viewer")])


def test_the_genesis_adds_its_own_author_as_owner() -> None:
    empty = DeviceLog()
    for subject, role in ((B[0].sign_public, "owner"), (A[0].sign_public, "viewer")):
        card = (B if subject == B[0].sign_public else A)[1].encode()
        entry = sign_entry(A[0], ACCOUNT, 0, GENESIS_PREV, Op.ADD, subject, card, role, 1.0)
        with pytest.raises(DeviceLogRuleError):
            DeviceLog.verify([entry])
    assert empty.head.seq == -1


def test_a_device_behind_catches_up_from_its_head() -> None:
    daemon_copy = DeviceLog.verify(started().entries)
    current = add(team(), A[0], D, DeviceRole.VIEWER)
    caught_up = daemon_copy.update(current.since(daemon_copy.head))
    assert caught_up.head == current.head
    assert caught_up.role_of(D[0].sign_public) is DeviceRole.VIEWER


def test_malformed_bytes_are_format_errors() -> None:
    good = team().entries[1]
    with pytest.raises(DeviceLogFormatError):
        decode_entries(b"\x93\xa0")
    bad_shapes: list[dict[str, object]] = [
        {"role": ""},  # add without role
        {"card": b""},  # add without card
        {"seq": -1},
        {"prev": b"short"},
        {"role": "admin"},
        {"signature": b"\0" * 63},
    ]
    for change in bad_shapes:
        fields: dict[str, object] = {
            f.name: getattr(good, f.name) for f in dataclasses.fields(good)
        }
        fields = fields | {"op": good.op.value} | change
        blob = msgpack.packb(["device-log", 1, {"entries": [fields]}], use_bin_type=True)
        with pytest.raises(DeviceLogFormatError):
            decode_entries(blob)
    assert decode_entries(LOG_CODEC.encode(LogEntries((good,)))) == (good,)


@given(st.binary(max_size=600))
@settings(max_examples=200, deadline=None)
def test_any_bytes_give_entries_or_a_format_error(data: bytes) -> None:
    with contextlib.suppress(DeviceLogFormatError):
        decode_entries(data)


def test_the_permission_table() -> None:
    log = team()
    a, b, c, d = (x[0].sign_public for x in (A, B, C, D))
    assert log.allows(b, Action.WATCH) and not log.allows(b, Action.APPROVE)
    assert log.allows(c, Action.APPROVE) and log.allows(c, Action.DENY)
    assert not log.allows(c, Action.MANAGE_DEVICES) and not log.allows(c, Action.REVOKE_MACHINE)
    assert all(log.allows(a, action) for action in Action)
    assert not any(log.allows(d, action) for action in Action)


# --- properties ---------------------------------------------------------------

POOL = [device(f"device-{i}") for i in range(6)]
ROLES = list(DeviceRole)


@st.composite
def histories(draw: st.DrawFn) -> tuple[DeviceLog, dict[bytes, DeviceRole]]:
    """A random legal history and the membership a plain model predicts."""
    log = DeviceLog.genesis(POOL[0][0], POOL[0][1], ACCOUNT, at=0.0)
    model = {POOL[0][0].sign_public: DeviceRole.OWNER}
    removed: set[bytes] = set()
    for step in range(draw(st.integers(0, 12))):
        owners = [k for k, r in model.items() if r is DeviceRole.OWNER]
        author = draw(st.sampled_from(sorted(owners)))
        by = next(p[0] for p in POOL if p[0].sign_public == author)
        who = draw(st.sampled_from(POOL))
        key = who[0].sign_public
        role = draw(st.sampled_from(ROLES))
        last_owner = model.get(key) is DeviceRole.OWNER and len(owners) == 1
        if key not in model and key not in removed:
            log, _ = log.append(by, Op.ADD, key, card=who[1], role=role, at=float(step))
            model[key] = role
        elif key in model and draw(st.booleans()) and not last_owner:
            log, _ = log.append(by, Op.REMOVE, key, at=float(step))
            del model[key]
            removed.add(key)
        elif key in model and (role is DeviceRole.OWNER or not last_owner):
            log, _ = log.append(by, Op.SET_ROLE, key, role=role, at=float(step))
            model[key] = role
    return log, model


@given(histories())
@settings(max_examples=60, deadline=None)
def test_verifying_from_scratch_agrees_with_the_model(
    history: tuple[DeviceLog, dict[bytes, DeviceRole]],
) -> None:
    log, model = history
    again = DeviceLog.verify(decode_entries(encode_entries(log.entries)), account=ACCOUNT)
    assert {d.key: d.role for d in again.devices} == model
    assert any(r is DeviceRole.OWNER for r in model.values())
    # Any prefix is a valid log that the full one extends.
    cut = len(log.entries) // 2 or 1
    prefix = DeviceLog.verify(log.entries[:cut])
    assert prefix.update(log.since(prefix.head)).head == log.head


@given(histories(), st.data())
@settings(max_examples=60, deadline=None)
def test_any_changed_field_is_refused(
    history: tuple[DeviceLog, dict[bytes, DeviceRole]], data: st.DataObject
) -> None:
    log, _ = history
    index = data.draw(st.integers(0, len(log.entries) - 1))
    entry = log.entries[index]
    name = data.draw(st.sampled_from(["at", "subject", "author", "signature", "prev", "seq"]))
    value: object = getattr(entry, name)
    changed: object
    if isinstance(value, bytes):
        flip = data.draw(st.integers(0, len(value) - 1))
        changed = value[:flip] + bytes([value[flip] ^ 1]) + value[flip + 1 :]
    else:
        assert isinstance(value, int | float)
        changed = value + 1
    try:
        tampered = dataclasses.replace(entry, **{name: changed})  # type: ignore[arg-type]
    except ValueError:
        return  # not even a well-formed entry
    entries = list(log.entries)
    entries[index] = tampered
    with pytest.raises(DeviceLogError):
        DeviceLog.verify(entries)
