"""The attempt's output file, in-process on real files: trimming to the
limit, never trimming a file that is not ours, reading on across a trim,
and printing a job's bytes safely to a terminal (phoenix/output.py)."""

from __future__ import annotations

import io
import os
from pathlib import Path

from phoenix import output


def capture_of(path: Path, max_bytes: int) -> output.Capture:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return output.Capture(fd, str(path), max_bytes, saved_stderr=None)


def test_trim_keeps_the_last_half_from_a_line_start_behind_a_note(tmp_path):
    path = tmp_path / "1.log"
    capture = capture_of(path, 4096)
    lines = [f"line {i:05d}\n".encode() for i in range(1000)]  # 11 bytes each
    os.write(capture.fd, b"".join(lines))
    capture.trim()
    kept = path.read_bytes()
    note, _, tail = kept.partition(b"\n")
    assert note.startswith(b"[phoenix: ") and b"dropped" in note
    assert tail.endswith(lines[-1]) and tail.startswith(b"line ")  # whole lines only
    assert len(kept) <= 4096
    dropped = int(note.split()[1])
    assert dropped == 11_000 - len(tail)
    os.write(capture.fd, b"after\n")  # the job's next write lands after what was kept
    assert path.read_bytes().endswith(tail + b"after\n")
    os.close(capture.fd)


def test_a_number_reused_by_the_job_is_never_trimmed_and_the_file_is_found_again(tmp_path):
    path = tmp_path / "1.log"
    capture = capture_of(path, 4096)
    number = capture.fd
    os.close(number)  # the job closed it ...
    theirs = tmp_path / "theirs.bin"
    reused = os.open(theirs, os.O_RDWR | os.O_CREAT, 0o600)  # ... and its own file got the number
    assert reused == number
    os.write(reused, b"z" * 10_000)
    path.write_bytes(b"y\n" * 5000)
    capture.trim()
    assert theirs.stat().st_size == 10_000, "a file of the job's was trimmed"
    assert path.stat().st_size <= 4096 and capture.fd != number
    os.close(reused)
    os.close(capture.fd)


def test_a_file_replaced_at_the_path_is_not_ours_either(tmp_path):
    path = tmp_path / "1.log"
    capture = capture_of(path, 4096)
    os.close(capture.fd)
    path.rename(tmp_path / "moved.log")  # still allocated: its inode number cannot be the new file's
    path.write_bytes(b"q" * 10_000)  # another inode at the same name
    capture.trim()
    assert path.stat().st_size == 10_000
    assert capture.size() is None


def test_the_reader_reads_on_and_starts_again_after_a_trim(tmp_path):
    path = tmp_path / "1.log"
    reader = output.Reader(str(path))
    assert reader.read() == b""  # not there yet
    path.write_bytes(b"one\n")
    assert reader.read() == b"one\n"
    with path.open("ab") as f:
        f.write(b"two\n")
    assert reader.read() == b"two\n"
    path.write_bytes(b"[note]\n")  # trimmed: shorter than what was read
    assert reader.read() == b"[note]\n"


def test_printer_escapes_for_a_terminal_and_passes_bytes_to_a_pipe():
    raw = b"ok \x1b[2J \xff \xe2\x82"  # an escape, a byte that is not UTF-8, half a euro sign
    pipe, terminal = io.BytesIO(), io.BytesIO()
    output.Printer(pipe, terminal=False).write(raw)
    assert pipe.getvalue() == raw
    shown = output.Printer(terminal, terminal=True)
    shown.write(raw)
    shown.write(b"\xac\n")  # the rest of the euro sign
    assert terminal.getvalue() == "ok \\x1b[2J \\xff €\n".encode()


def test_pruning_keeps_the_last_attempts_and_a_first_attempt_starts_clean(tmp_path):
    directory = tmp_path / "7"
    directory.mkdir()
    for n in range(1, 6):
        (directory / f"{n}.log").write_text(str(n))
    output._prune(str(directory), 6)
    assert sorted(p.name for p in directory.iterdir()) == ["4.log", "5.log"]  # with 6: the last three
    output._prune(str(directory), 1)  # a pruned job's id, reused
    assert not any(directory.iterdir())
