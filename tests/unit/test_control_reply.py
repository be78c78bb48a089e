"""The control client's reply path: a reply cut off mid-way (the master
exec'd in a replacement, or went away, while a 400 KB status was on its way)
is no answer, never a malformed one: `phoenix reload --wait` asks again
instead of failing a reload that worked."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path

import pytest

from phoenix.wire import control


def _serve_once(path: Path, reply: bytes) -> threading.Thread:
    """A server on `path` that reads one request, sends `reply`, and closes."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(65536)
            conn.sendall(reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_large_status_cut_off_midway_is_no_answer_not_a_malformed_reply(tmp_path):
    path = tmp_path / "control.sock"
    child = {"attempt": 1, "age": 12.5, "last_beat_age": 0.4, "rss": 12_345_678, "adopted": False}
    running = {str(n): {"pid": 10_000 + n, **child} for n in range(4_000)}
    whole = json.dumps({"ok": True, "master": {"generation": 1}, "running": running}).encode()
    assert len(whole) > 250_000  # near a status of 4,000 children
    thread = _serve_once(path, whole[: len(whole) // 2])  # the exec closed the connection half-way
    with pytest.raises(control.ControlError) as raised:
        control.request(path, {"cmd": "status"})
    thread.join(5.0)
    assert isinstance(raised.value, control.CutOff) and not isinstance(raised.value, control.MalformedReply)
    assert "cut off" in str(raised.value)


def test_a_whole_large_reply_is_read(tmp_path):
    path = tmp_path / "control.sock"
    reply = {"ok": True, "master": {"generation": 2}, "running": {str(n): {"pid": n} for n in range(20_000)}}
    thread = _serve_once(path, json.dumps(reply).encode() + b"\n")
    assert control.request(path, {"cmd": "status"}) == reply
    thread.join(5.0)


def test_a_reply_that_is_whole_but_not_json_is_still_malformed(tmp_path):
    path = tmp_path / "control.sock"
    thread = _serve_once(path, b"{not json\n")
    with pytest.raises(control.MalformedReply):
        control.request(path, {"cmd": "status"})
    thread.join(5.0)
