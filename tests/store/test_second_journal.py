"""A second Journal in the master's process (a phoenix.Client in a callback
or a startup hook) must not drop the master's locks on the journal: closing
any descriptor of a file drops all of a process's POSIX locks on it, and
another process's close then takes the master for gone, checkpoints and
deletes the write-ahead log under it; the master's later commits went to a
file nobody else could read, and were lost at its next crash."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from phoenix.store.sqlite import Journal

LOOK = "from phoenix.store.sqlite import Journal; import sys; j = Journal(sys.argv[1]); j.counts(); j.close()"


def test_a_second_journal_in_the_process_leaves_the_first_ones_commits_visible(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    master = Journal(path)
    try:
        master.submit("m:f", "1", "before")
        second = Journal(path, create=False)  # as phoenix.Client(...) in an on_finished callback
        second.counts()
        second.close()
        subprocess.run([sys.executable, "-c", LOOK, str(path)], check=True)  # `phoenix jobs`, say
        assert path.with_name("journal.db-wal").exists()
        master.submit("m:f", "2", "after")
        seen = sqlite3.connect(path).execute("SELECT key FROM jobs ORDER BY id").fetchall()
        assert seen == [("before",), ("after",)]
    finally:
        master.close()
