"""Untrusted strings are data everywhere: a job key, a target, parameters or
an error text is shown, never obeyed, by `phoenix status` on a terminal (no
rich markup, no hyperlink, no escape sequence) and in the log (no raw ESC or
carriage return); and keys that cannot be shown faithfully (control
characters, NUL, bad UTF-8, over 1 KiB) are refused at submission.
(Garbage on the sockets is test_hostile_input's business.)"""

from __future__ import annotations

import json
import os
import pty
import re
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from phoenix.app import App
from phoenix.linux.untrusted import MAX_KEY_BYTES, KeyRefused
from phoenix.store.sqlite import Journal
from tests.conftest import PYTHON, REPO, phoenix_cli
from tests.faults.conftest import report
from tests.faults.helpers import wake

APP = "tests.apps.untrusted:app"
# (A NUL in a key ended every attempt in setproctitle before submit refused it.)
HOSTILE_KEYS = ["[/bold]", "[link=file:///etc/passwd]x[/link]", "a\rb", "\x1b[31mred", "rtl\u202eevil", "nul\x00key"]
HOSTILE_ERROR = "\x1b[2J\x1b]8;;file:///etc/passwd\x07click\x1b]8;;\x07\rfaked\x1b[31m"
RAW_CR = re.compile(r"\r(?!\n)")  # a terminal's own line ends are \r\n


def record_as_an_old_version_would(state_dir: Path, target: str, params: object, key: str) -> None:
    """Insert a job whose key today's submit refuses: a journal written before
    the check (or by another tool) may hold one, and it must still be shown safely."""
    db = sqlite3.connect(state_dir / "journal.db")
    with db:
        db.execute("INSERT INTO jobs (key, target, params, state, created_at, updated_at) "
                   "VALUES (?, ?, ?, 'pending', ?, ?)", (key, target, json.dumps(params), time.time(), time.time()))
    db.close()


def on_a_terminal(*args: str, timeout: float = 30.0) -> tuple[int, bytes]:
    """Run `phoenix ARGS` with a pseudo-terminal as its stdout; (exit code, bytes shown)."""
    controller, terminal = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    env.update(TERM="xterm-256color", COLUMNS="250", LINES="50")
    proc = subprocess.Popen([PYTHON, "-m", "phoenix", *args], cwd=REPO, env=env, stdout=terminal,
                            stderr=terminal, stdin=subprocess.DEVNULL)
    os.close(terminal)
    shown = bytearray()
    try:
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the terminal's last holder exited
                break
            if not chunk:
                break
            shown += chunk
        code = proc.wait(timeout)
    finally:
        os.close(controller)
    return code, bytes(shown)


def test_hostile_keys_and_errors_are_shown_not_obeyed(master_factory, state_dir):
    master = master_factory(app=APP)
    for key in HOSTILE_KEYS:
        record_as_an_old_version_would(state_dir, f"{APP.split(':')[0]}:wait_forever", {}, key)
    record_as_an_old_version_would(state_dir, f"{APP.split(':')[0]}:raises", {"message": HOSTILE_ERROR}, "fails")
    wake(master)
    master.wait_jobs_done(["fails"])
    jobs = master.jobs()
    assert all(jobs[key]["state"] == "running" and jobs[key]["pid"] for key in HOSTILE_KEYS), jobs

    code, shown = on_a_terminal("status", "--state-dir", str(state_dir))
    text = shown.decode(errors="replace")
    assert code == 0 and "Traceback" not in text, text
    assert "┃" in text or "│" in text  # the rich table, not the piped columns
    for escaped in ("[/bold]", "[link=file:///etc/passwd]x[/link]", "a\\rb", "\\x1b[31mred", "rtl\\u202eevil",
                    "nul\\x00key"):
        assert escaped in text, (escaped, text)
    assert b"\x1b]8;" not in shown  # no hyperlink (OSC 8) to file:///etc/passwd
    assert b"\x1b[31mred" not in shown and not RAW_CR.search(text) and not {"\u202e", "\x00"} & set(text)

    piped = phoenix_cli("status", state_dir=state_dir)
    assert piped.returncode == 0 and "a\\rb" in piped.stdout and "\\x1b[31mred" in piped.stdout
    assert not {"\x1b", "\r", "\x00"} & set(piped.stdout)
    as_json = json.loads(phoenix_cli("status", "--json", state_dir=state_dir).stdout)
    by_key = {job["key"]: job for job in as_json["jobs"]}  # the data itself is kept as it was
    assert set(HOSTILE_KEYS) < set(by_key) and HOSTILE_ERROR in by_key["fails"]["error"]

    master.stop()
    log = master.log_path.read_bytes()
    assert b"\x1b" not in log and not re.search(rb"\r(?!\n)", log), log[-3000:]
    text_log = log.decode()
    assert "\\x1b[2J" in text_log and "click" in text_log  # the error text is in the log, escaped
    assert 'job="a\\rb"' in text_log  # and so are the keys
    report("untrusted_strings", keys=len(HOSTILE_KEYS), terminal_bytes=len(shown), log_bytes=len(log))


def test_keys_that_cannot_be_shown_are_refused_at_submit(state_dir):
    target = f"{APP.split(':')[0]}:wait_forever"
    refused_by_cli = {
        "escape": "a\x1b[31mb",
        "carriage return": "a\rb",
        "newline": "a\nb",
        "bell": "a\x07b",
        "C1 control (CSI)": "a\x9bb",
        "not UTF-8": "key-\udcff",  # argv bytes b"key-\xff"
        "too long": "k" * (MAX_KEY_BYTES + 1),
    }
    for what, key in refused_by_cli.items():
        result = phoenix_cli("submit", target, "{}", "--key", key, state_dir=state_dir)
        assert result.returncode == 2, (what, result.stdout, result.stderr)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("phoenix: error: job key"), (what, result.stderr)
        assert "Traceback" not in result.stderr and "\x1b" not in result.stderr and "\r" not in result.stderr
    # NUL cannot travel in argv; the library refuses it, as every other.
    app = App()
    for key in ("a\x00b", "a\rb", "k" * (MAX_KEY_BYTES + 1), "x\udcff"):
        with pytest.raises(KeyRefused, match="job key"):
            app.submit(target, {}, key=key, state_dir=str(state_dir))
    journal = Journal(state_dir / "journal.db")
    try:
        with pytest.raises(KeyRefused):
            journal.submit(target, "{}", "nul\x00key")
        with pytest.raises(KeyRefused):
            journal.submit_many([(target, "{}", "fine"), (target, "{}", "bad\x00")])
        assert journal.counts()["pending"] == 0  # nothing of a refused batch was recorded
        # What a key may be: any printable text up to the limit, brackets and all.
        for key in ("[/bold]", "café ☕", "k" * MAX_KEY_BYTES, "tab-less key with spaces"):
            assert journal.submit(target, "{}", key)[1] is True
    finally:
        journal.close()
    ok = phoenix_cli("submit", target, "{}", "--key", "[link=file:///etc/passwd]x[/link]", state_dir=state_dir)
    assert ok.returncode == 0, ok.stderr
