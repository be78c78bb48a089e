"""The attempt's output file, in-process on real files: trimming to the
limit, never trimming a file that is not ours, reading on across a trim,
and printing a job's bytes safely to a terminal (phoenix/output.py)."""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from pathlib import Path

from phoenix.child import output


def capture_of(path: Path, max_bytes: int) -> output.Capture:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
    return output.Capture(fd, str(path), max_bytes)


LINES = [f"line {i:05d}\n".encode() for i in range(2000)]  # 11 bytes each


def test_trim_cuts_the_head_in_place_and_the_reader_says_how_much_went(tmp_path):
    # /tmp's file system (ext4 here) collapses ranges: the head goes in place.
    path = tmp_path / "1.log"
    capture = capture_of(path, 8192)
    os.write(capture.fd, b"".join(LINES))
    capture.trim()
    kept = path.read_bytes()
    assert len(kept) <= 8192 and kept.endswith(LINES[-1])
    dropped = int(os.getxattr(path, output.DROPPED_XATTR))
    assert dropped + len(kept) == 22_000 and dropped % 4096 == 0
    os.write(capture.fd, b"after\n")  # the job's appends go on at the end
    shown = output.Reader(str(path)).read()
    note, _, rest = shown.partition(b"\n")
    assert note.startswith(b"[phoenix: ") and b"dropped" in note
    assert rest.startswith(b"line ") and rest.endswith(LINES[-1] + b"after\n")  # whole lines only
    assert int(note.split()[1]) + len(rest) == 22_006
    os.close(capture.fd)


def test_a_reader_never_reads_twice_across_a_cut(tmp_path):
    path = tmp_path / "1.log"
    capture = capture_of(path, 8192)
    reader = output.Reader(str(path))
    os.write(capture.fd, b"".join(LINES[:500]))
    first = reader.read()
    assert first == b"".join(LINES[:500])
    os.write(capture.fd, b"".join(LINES[500:]))
    capture.trim()  # cuts what the reader had read and more
    second = reader.read()
    note, _, rest = second.partition(b"\n")
    assert note.startswith(b"[phoenix: ") and rest.endswith(LINES[-1])
    assert rest not in first and int(note.split()[1]) + len(first) + len(rest) == 22_000
    os.write(capture.fd, LINES[0])
    assert reader.read() == LINES[0]  # and on from there
    os.close(capture.fd)


def test_where_ranges_cannot_be_collapsed_the_tail_is_copied_behind_a_note(tmp_path):
    shm = Path("/dev/shm")  # tmpfs: no FALLOC_FL_COLLAPSE_RANGE
    if not shm.is_dir():
        import pytest

        pytest.skip("no tmpfs at /dev/shm")
    directory = Path(tempfile.mkdtemp(dir=shm, prefix="phoenix-test-"))
    try:
        path = directory / "1.log"
        capture = capture_of(path, 4096)
        reader = output.Reader(str(path))
        os.write(capture.fd, b"".join(LINES[:10]))
        assert reader.read() == b"".join(LINES[:10])
        os.write(capture.fd, b"".join(LINES[10:]))
        capture.trim()
        kept = path.read_bytes()
        note, _, tail = kept.partition(b"\n")
        assert note.startswith(b"[phoenix: ") and tail.startswith(b"line ") and tail.endswith(LINES[-1])
        assert len(kept) <= 4096 and int(note.split()[1]) + len(tail) == 22_000
        assert reader.read() == kept  # shorter than what was read: read again from its note
        os.close(capture.fd)
    finally:
        shutil.rmtree(directory)


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


def test_the_reader_reads_on(tmp_path):
    path = tmp_path / "1.log"
    reader = output.Reader(str(path))
    assert reader.read() == b""  # not there yet
    path.write_bytes(b"one\n")
    assert reader.read() == b"one\n"
    with path.open("ab") as f:
        f.write(b"two\n")
    assert reader.read() == b"two\n"


def test_printer_escapes_for_a_terminal_and_passes_bytes_to_a_pipe():
    raw = b"ok \x1b[2J \xff \xe2\x82"  # an escape, a byte that is not UTF-8, half a euro sign
    pipe, terminal = io.BytesIO(), io.BytesIO()
    output.Printer(pipe, terminal=False).write(raw)
    assert pipe.getvalue() == raw
    shown = output.Printer(terminal, terminal=True)
    shown.write(raw)
    shown.write(b"\xac\n")  # the rest of the euro sign
    assert terminal.getvalue() == "ok \\x1b[2J \\xff €\n".encode()


def test_each_attempt_removes_the_one_three_before_and_a_name_found_taken_is_replaced(tmp_path):
    root = str(tmp_path / "output")
    for attempt in range(1, 6):
        os.close(output._create(root, 7, attempt))
        Path(output.attempt_file(root, 7, attempt)).write_text(f"attempt {attempt}")
    assert sorted(p.name for p in Path(root).iterdir()) == ["7.3.log", "7.4.log", "7.5.log"]
    os.close(output._create(root, 7, 5))  # the id and number came back (a restored journal)
    assert Path(output.attempt_file(root, 7, 5)).read_text() == ""
