"""The transfer state machine (network-free): a sender and a receiver paired directly,
with chunks lost, channels cut, credit abused and bytes flipped."""

from __future__ import annotations

import itertools

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from starmux.errors import MessageError, UsageError
from starmux.messages import APP
from starmux.padding import padded_size
from starmux.transfer import (
    CHUNK_SIZE,
    PACE_RATE,
    TRANSITIONS,
    WINDOW,
    Pace,
    Receiver,
    Sender,
    State,
    TooLarge,
    TransferFailed,
    Trigger,
    chunk_count,
    file_digest,
    parse_size,
)
from starmux.transfer_messages import FileChunk, OfferFile, check_file_name


def digest(data: bytes) -> bytes:
    hashed = file_digest()
    hashed.update(data)
    return hashed.digest()


def pair(data: bytes, *, chunk: int = 7, window: int = 4) -> tuple[Sender, Receiver]:
    sender = Sender(size=len(data), chunk_size=chunk)
    receiver = Receiver(
        size=len(data), digest=digest(data), cap=1 << 30, window=window, chunk_size=chunk
    )
    return sender, receiver


def run(
    data: bytes, sender: Sender, receiver: Receiver, out: bytearray, *, lose_after: int | None
) -> int:
    """Pump one channel's worth: the receiver asks, chunks flow under credit; after
    ``lose_after`` chunks the channel dies (in-flight chunks lost). Returns chunks moved."""
    start = receiver.request()
    if receiver.finished:
        return 0
    sender.restart() if sender.state is not State.WAITING else None
    sender.grant(start, receiver.window)
    moved = 0
    in_flight: list[tuple[int, bytes]] = []
    while not receiver.finished:
        while (chunk := sender.next_chunk()) is not None:
            in_flight.append((chunk.index, data[chunk.offset : chunk.offset + chunk.length]))
        if lose_after is not None and moved >= lose_after:
            receiver.channel_lost()
            sender.channel_lost()
            return moved
        index, payload = in_flight.pop(0)
        accepted = receiver.on_chunk(index, payload)
        out[accepted.offset : accepted.offset + len(accepted.data)] = accepted.data
        moved += 1
        if accepted.credit is not None:
            sender.grant(accepted.credit, receiver.window)
    return moved


def test_a_file_moves_whole_under_credit() -> None:
    data = bytes(range(256)) * 3
    sender, receiver = pair(data)
    out = bytearray(len(data))
    run(data, sender, receiver, out, lose_after=None)
    assert bytes(out) == data
    assert receiver.state is State.DONE and sender.state is State.DONE
    assert sender.bytes_sent == len(data) == receiver.bytes_received


def test_the_sender_never_runs_ahead_of_its_credit() -> None:
    sender = Sender(size=100, chunk_size=10)
    sender.grant(0, 3)
    assert [sender.next_chunk() is not None for _ in range(4)] == [True, True, True, False]
    sender.grant(2, 3)
    assert sender.next_chunk() is not None and sender.next_chunk() is not None
    assert sender.next_chunk() is None


@settings(max_examples=150, deadline=None)
@given(
    data=st.binary(min_size=0, max_size=400),
    chunk=st.integers(1, 50),
    window=st.integers(1, 8),
    cuts=st.lists(st.integers(0, 12), max_size=5),
)
def test_resumes_after_any_cuts_send_each_chunk_at_most_once_more_than_lost(
    data: bytes, chunk: int, window: int, cuts: list[int]
) -> None:
    sender, receiver = pair(data, chunk=chunk, window=window)
    out = bytearray(len(data))
    for cut in cuts:
        run(data, sender, receiver, out, lose_after=cut)
        if receiver.finished:
            break
    if not receiver.finished:
        run(data, sender, receiver, out, lose_after=None)
    assert bytes(out) == data and receiver.state is State.DONE
    # Resumed from what was held: at most a window of chunks was sent twice per cut.
    assert sender.bytes_sent <= len(data) + len(cuts) * window * chunk
    assert receiver.bytes_received == len(data)


@pytest.mark.parametrize("held", [0, 3, 6])  # none, some, all (the last chunk is short)
def test_a_receiver_given_held_chunks_asks_only_for_the_rest(held: int) -> None:
    data = bytes(range(40))
    sender, receiver = pair(data, chunk=7)
    kept = data[: held * 7]
    hashed = file_digest()
    hashed.update(kept)
    receiver.hold(held, hashed)
    out = bytearray(data[: held * 7].ljust(len(data), b"\0"))
    run(data, sender, receiver, out, lose_after=None)
    assert bytes(out) == data and receiver.state is State.DONE
    assert receiver.bytes_received == sender.bytes_sent == len(data) - len(kept)


def test_held_chunks_whose_bytes_differ_fail_the_whole_file() -> None:
    data = bytes(range(40))
    sender, receiver = pair(data, chunk=7)
    hashed = file_digest()
    hashed.update(b"\xff" + data[1:21])  # a kept part that was changed on disk
    receiver.hold(3, hashed)
    with pytest.raises(TransferFailed, match="hash"):
        run(data, sender, receiver, bytearray(len(data)), lose_after=None)
    assert receiver.state is State.FAILED


def test_held_chunks_are_given_before_anything_moves_and_fit_the_file() -> None:
    _, receiver = pair(bytes(40), chunk=7)
    with pytest.raises(UsageError):
        receiver.hold(7, file_digest())
    receiver.request()
    with pytest.raises(UsageError):
        receiver.hold(1, file_digest())


def test_a_flipped_byte_fails_the_whole_file() -> None:
    data = b"the quick brown fox jumps over the lazy dog"
    sender, receiver = pair(data)
    receiver.request()
    sender.grant(0, receiver.window)
    with pytest.raises(TransferFailed, match="hash"):
        while not receiver.finished:
            chunk = sender.next_chunk()
            if chunk is None:
                sender.grant(receiver.received, receiver.window)
                continue
            payload = bytearray(data[chunk.offset : chunk.offset + chunk.length])
            if chunk.index == 2:
                payload[0] ^= 1
            accepted = receiver.on_chunk(chunk.index, bytes(payload))
            if accepted.credit is not None:
                sender.grant(accepted.credit, receiver.window)
    assert receiver.state is State.FAILED


@pytest.mark.parametrize(
    ("index", "payload", "why"),
    [
        (1, b"x" * 7, "arrived where 0 was next"),
        (0, b"x" * 6, "wrong length"),
        (0, b"x" * 8, "wrong length"),
    ],
)
def test_a_receiver_takes_only_the_next_chunk_of_its_exact_length(
    index: int, payload: bytes, why: str
) -> None:
    _, receiver = pair(b"y" * 30)
    receiver.request()
    with pytest.raises(TransferFailed, match=why):
        receiver.on_chunk(index, payload)
    assert receiver.state is State.FAILED
    with pytest.raises(TransferFailed):  # failed for good
        receiver.on_chunk(0, b"y" * 7)


def test_a_chunk_past_the_credit_fails() -> None:
    data = b"z" * 70
    _, receiver = pair(data, window=2)
    receiver.request()
    receiver.on_chunk(0, data[:7])
    receiver.on_chunk(1, data[7:14])  # credit 2 sent now (half a window)
    receiver.on_chunk(2, data[14:21])
    receiver.on_chunk(3, data[21:28])
    with pytest.raises(TransferFailed, match="without credit"):
        receiver._credited = 2  # the sender ignored the credit it was given
        receiver.on_chunk(4, data[28:35])


def test_credit_that_goes_back_or_past_what_was_sent_fails() -> None:
    sender = Sender(size=100, chunk_size=10)
    sender.grant(2, 4)
    sender.next_chunk()
    with pytest.raises(TransferFailed):
        sender.grant(1, 4)
    sender = Sender(size=100, chunk_size=10)
    sender.grant(0, 4)
    sender.next_chunk()
    with pytest.raises(TransferFailed):
        sender.grant(2, 4)


def test_over_the_cap_is_refused_before_anything_moves() -> None:
    with pytest.raises(TooLarge, match=r"limit is 1\.0 MiB"):
        Receiver(size=(1 << 20) + 1, digest=bytes(32), cap=1 << 20)


def test_an_empty_file_is_done_at_once() -> None:
    sender, receiver = pair(b"")
    assert receiver.request() == 0 and receiver.state is State.DONE
    sender.grant(0, 4)
    assert sender.state is State.DONE


def test_every_transition_not_in_the_table_raises() -> None:
    for state, trigger in itertools.product(State, Trigger):
        machine = Sender(size=10)
        machine.state = state
        if (state, trigger) in TRANSITIONS:
            machine._move(trigger)
            assert machine.state is TRANSITIONS[(state, trigger)]
        else:
            with pytest.raises(TransferFailed):
                machine._move(trigger)


def test_a_full_chunk_fills_the_largest_padding_bucket_of_one_message() -> None:
    biggest = FileChunk("t-" + "f" * 62, (1 << 40) - 1, b"x" * CHUNK_SIZE)
    encoded = APP.encode(biggest)
    assert padded_size(len(encoded)) == 60 * 1024 >= len(encoded) + 2
    assert chunk_count(200 << 20) == 3421 and WINDOW * CHUNK_SIZE < 4 << 20


@pytest.mark.parametrize(
    "name", ["../x", "a/b", "a\\b", ".", "..", "", "x\x1b[2J", "bidi\u202e", "x" * 256]
)
def test_file_names_cannot_escape_a_folder_or_act_on_a_terminal(name: str) -> None:
    with pytest.raises(UsageError):
        check_file_name(name)
    with pytest.raises(UsageError):
        OfferFile("t-1", name, 1, bytes(32))


@pytest.mark.parametrize(
    ("text", "size"), [("1024", 1024), ("200M", 200 << 20), ("2G", 2 << 30), ("512KiB", 512 << 10)]
)
def test_sizes_parse(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_a_bad_size_is_refused() -> None:
    with pytest.raises(UsageError):
        parse_size("lots")


def test_the_pace_keeps_file_bytes_under_the_relays_budget() -> None:
    pace = Pace(rate=1000.0, burst=CHUNK_SIZE)
    assert pace.wait(CHUNK_SIZE, now=0.0) == 0.0
    pace.take(CHUNK_SIZE)
    assert pace.wait(1000, now=0.0) == pytest.approx(1.0)
    assert pace.wait(1000, now=0.5) == pytest.approx(0.5)
    assert pace.wait(1000, now=1.0) == 0.0
    assert pace.wait(10 * CHUNK_SIZE, now=1000.0) > 0  # the burst caps what piles up
    assert PACE_RATE < 64 * 1024 * 1024  # the relay's default bytes_per_second


@pytest.mark.parametrize("reason", ["\x1b]52;c;aGk=\x07", "line\nbreak", "bidi\u202e"])
def test_a_machines_failure_reason_cannot_act_on_a_terminal(reason: str) -> None:
    wire = msgpack.packb(["file-failed", 1, {"transfer": "t-1", "reason": reason}])
    with pytest.raises(MessageError, match="invalid"):
        APP.decode(wire)
