"""linux.paths.exclusive_temporary: the temporary files Phoenix makes in its
state directory (the journal being created, the pidfile and the instance
file before their rename) never follow a link planted at their name."""

import os
import stat

import pytest

from phoenix.linux import paths


def test_a_new_private_file_under_the_prefix_and_suffix(tmp_path):
    fd, path = paths.exclusive_temporary(tmp_path, ".pid.", ".tmp")
    os.close(fd)
    name = os.path.basename(path)
    assert os.path.dirname(path) == str(tmp_path)
    assert name.startswith(".pid.") and name.endswith(".tmp") and len(name) == len(".pid.") + 12 + len(".tmp")
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o077 == 0


def test_a_link_planted_at_the_name_is_never_followed(tmp_path, monkeypatch):
    # The name is made unpredictable on purpose; here it is made predictable
    # so that the link can be planted at it: every try finds it, none writes
    # through it, and the caller gets an error rather than the link.
    monkeypatch.setattr(paths.os, "urandom", lambda n: b"\0" * n)
    target = tmp_path / "victim"
    (tmp_path / f".pid.{'00' * 6}").symlink_to(target)
    with pytest.raises(FileExistsError):
        paths.exclusive_temporary(tmp_path, ".pid.")
    assert not target.exists()


def test_two_calls_make_two_files(tmp_path):
    made = [paths.exclusive_temporary(tmp_path, "x-") for _ in range(2)]
    for fd, _path in made:
        os.close(fd)
    assert made[0][1] != made[1][1]
