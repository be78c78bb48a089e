"""The plain-beat fast path (protocol.plain_beat) may only accept what the
full decoder accepts, with the same values; everything else it leaves to
`decode` (which rejects or takes it)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix.wire.heartbeat import RECV_BUFFER_BYTES, decode, encode, plain_beat, plain_beat_prefix

PREFIX = plain_beat_prefix(17, 2)


def _in_buffer(data: bytes) -> tuple[bytearray, int]:
    """As the intake holds it: one reused buffer, with stale bytes after the message."""
    buffer = bytearray(b"9}" * (RECV_BUFFER_BYTES // 2) + b"x")
    buffer[:len(data)] = data
    return buffer, len(data)


@pytest.mark.parametrize(("data", "expected"), [
    (encode(17, 2, "beat", 41, 3), (41, 3)),
    (encode(17, 2, "beat", 0, 0), (0, 0)),
    (encode(17, 2, "beat", 10**17, 10**17), (10**17, 10**17)),
    (encode(17, 2, "beat", 10**18, 0), None),  # longer than the fast path takes: decode decides
    (encode(17, 2, "progress", 41, 3), None),  # decode takes it
    (encode(17, 2, "finished", 41, 3, result=1), None),
    (encode(18, 2, "beat", 41, 3), None),  # another job's: decode, then the attempt check rejects it
    (encode(17, 3, "beat", 41, 3), None),
    (encode(17, 2, "beat", 41, 3) + b" ", None),  # decode rejects trailing bytes
    (b'{"v":1,"job":17,"att":2,"k":"beat","seq":041,"p":3}', None),  # not JSON: leading zero
    (b'{"v":1,"job":17,"att":2,"k":"beat","seq":-1,"p":3}', None),
    (b'{"v":1,"job":17,"att":2,"k":"beat","seq":1.0,"p":3}', None),
    (b'{"v":1,"job":17,"att":2,"k":"beat","seq":4,"p":3,"p":-1}', None),  # duplicate key: decode's last wins
    (b'{"v":1,"job":17,"att":2,"k":"beat","seq":4,"p":3', None),  # truncated
    (b'{"v":1,"job":17,"att":2,"k":"beat","seq":' + b"1" * 5000 + b',"p":3}', None),  # int() digit limit
    (b'{"v":1,"job":17,"att":2,"k":"beat","seq":\xd9\xa1,"p":3}', None),  # an Arabic-Indic digit
    (b"", None),
])
def test_plain_beat_takes_only_encodes_own_plain_beats(data: bytes, expected: tuple[int, int] | None) -> None:
    buffer, size = _in_buffer(data)
    assert plain_beat(buffer, size, PREFIX) == expected
    assert plain_beat(data, len(data), PREFIX) == expected


@given(st.binary(max_size=80), st.integers(0, 2**70), st.integers(0, 2**70), st.binary(max_size=8))
def test_whatever_plain_beat_takes_decode_takes_with_the_same_values(noise: bytes, seq: int, progress: int,
                                                                      tail: bytes) -> None:
    for data in (noise, PREFIX + noise, PREFIX + b"%d,\"p\":%d}" % (seq, progress) + tail,
                 encode(17, 2, "beat", seq, progress)):
        buffer, size = _in_buffer(data)
        taken = plain_beat(buffer, size, PREFIX)
        if taken is not None:
            message = decode(data)
            assert message is not None
            assert (message.job, message.attempt, message.kind) == (17, 2, "beat")
            assert (message.seq, message.progress) == taken
