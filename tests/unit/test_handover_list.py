"""The hand-over's fd list travels in a memfd: it holds as many children as a
host can run, where the environment's 128 KiB per string ended at about 6,000."""

from __future__ import annotations

import os

import pytest

from phoenix.master.handoff import FD_LIST_PREFIX, read_fd_list, write_fd_list

MAX_ARG_STRLEN = 32 * 4096  # the kernel's cap on one argument or environment string


def test_a_list_longer_than_an_environment_string_can_hold_comes_back_whole() -> None:
    fds = {"heartbeat": 3, "control": 4, **{f"link.{400000 + n}.{n}": 10 + n for n in range(20_000)}}
    fd = write_fd_list(fds)
    assert os.get_inheritable(fd)
    assert os.fstat(fd).st_size > MAX_ARG_STRLEN
    raw = read_fd_list(f"{FD_LIST_PREFIX}{fd}")
    assert dict(item.split("=") for item in raw.split(",")) == {name: str(number) for name, number in fds.items()}
    with pytest.raises(OSError):
        os.fstat(fd)  # read once, then closed: the new image keeps no stray descriptor


def test_a_list_sent_in_the_environment_by_an_older_image_is_read_as_it_is() -> None:
    assert read_fd_list("heartbeat=3,control=4") == "heartbeat=3,control=4"
    assert read_fd_list("") == ""
