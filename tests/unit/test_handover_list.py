"""The hand-over's fd list: a short one in the environment, as every Phoenix
wrote it (so a rollback to an older release still reads it), a long one in a
memfd, which holds as many children as a host can run where the environment's
128 KiB per string ended at about 6,000."""

from __future__ import annotations

import os

import pytest

from phoenix.master.handoff import FD_LIST_IN_ENVIRONMENT, FD_LIST_PREFIX, read_fd_list, write_fd_list

MAX_ARG_STRLEN = 32 * 4096  # the kernel's cap on one argument or environment string


def parsed(raw: str) -> dict[str, str]:
    return dict(item.split("=") for item in raw.split(","))


def test_a_list_longer_than_an_environment_string_can_hold_travels_in_a_memfd_and_comes_back_whole() -> None:
    fds = {"heartbeat": 3, "control": 4, **{f"link.{400000 + n}.{n}": 10 + n for n in range(20_000)}}
    value, fd = write_fd_list(fds)
    assert fd is not None and value == f"{FD_LIST_PREFIX}{fd}"
    assert os.get_inheritable(fd)
    assert os.fstat(fd).st_size > MAX_ARG_STRLEN
    assert parsed(read_fd_list(value)) == {name: str(number) for name, number in fds.items()}
    with pytest.raises(OSError):
        os.fstat(fd)  # read once, then closed: the new image keeps no stray descriptor


def test_a_short_list_stays_in_the_environment_in_the_form_older_releases_read() -> None:
    fds = {"heartbeat": 3, "control": 4, "link.4242.1": 9}
    value, fd = write_fd_list(fds)
    assert fd is None and value == "heartbeat=3,control=4,link.4242.1=9"
    assert read_fd_list(value) == value


def test_the_switch_to_a_memfd_comes_well_before_the_kernels_cap() -> None:
    fds = {f"link.{400000 + n}.{n}": 10 + n for n in range(FD_LIST_IN_ENVIRONMENT // 10)}
    value, fd = write_fd_list(fds)
    assert fd is not None  # past the limit
    os.close(fd)
    assert FD_LIST_IN_ENVIRONMENT + len("PHOENIX_FDS=") < MAX_ARG_STRLEN


def test_a_list_sent_by_an_older_image_and_no_list_are_read_as_they_are() -> None:
    assert read_fd_list("heartbeat=3,control=4") == "heartbeat=3,control=4"
    assert read_fd_list("") == ""
