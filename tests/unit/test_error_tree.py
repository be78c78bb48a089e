"""One error tree (phoenix/errors.py): every exception class Phoenix defines
derives from PhoenixError and from exactly one category, keeps the standard
base code catches it by, and the command maps the category to its exit code."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import click
import pytest
from click.testing import CliRunner

import phoenix
from phoenix import errors
from phoenix.cli.main import EXIT_CODES, friendly_errors

# __main__ runs the command when imported.
SKIP = {"phoenix.__main__"}


def phoenix_exceptions() -> list[type[Exception]]:
    """Every exception class defined in a module of the package (imported
    here: a module nothing imports yet is walked too). A BaseException that is
    not an Exception is control flow, not an error (as KeyboardInterrupt is:
    code that catches every Exception must not catch it), and stays out of the tree."""
    found = []
    for module_info in pkgutil.walk_packages(phoenix.__path__, "phoenix."):
        if module_info.name in SKIP:
            continue
        module = importlib.import_module(module_info.name)
        for _name, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, Exception) and value.__module__ == module.__name__:
                found.append(value)
    return found


EXCEPTIONS = phoenix_exceptions()


def test_the_walk_finds_the_exceptions_of_every_floor() -> None:
    names = {cls.__name__ for cls in EXCEPTIONS}
    # One of each floor: a walk that silently found nothing would pass the test below.
    assert {"ConfigError", "StateDirError", "BadTransition", "ControlError", "JournalError", "StoreUnavailable",
            "NodeTaken", "AppError", "MetricsError", "BadCursor"} <= names
    assert len(EXCEPTIONS) >= 25


@pytest.mark.parametrize("cls", [c for c in EXCEPTIONS if c not in (errors.PhoenixError, *errors.CATEGORIES)],
                         ids=lambda cls: f"{cls.__module__}.{cls.__name__}")
def test_every_exception_phoenix_defines_has_the_root_and_one_category(cls: type[Exception]) -> None:
    assert issubclass(cls, errors.PhoenixError), f"{cls.__module__}.{cls.__name__} does not derive from PhoenixError"
    categories = [category.__name__ for category in errors.CATEGORIES if issubclass(cls, category)]
    assert len(categories) == 1, f"{cls.__name__}: categories {categories} (want exactly one)"


@pytest.mark.parametrize(("name", "stdlib"), [
    ("phoenix.store.base:StoreUnavailable", OSError),  # the outage machinery catches OSError
    ("phoenix.linux.paths:StateDirError", OSError),
    ("phoenix.master.recorder:OutboxUnreadable", OSError),
    ("phoenix.config:ConfigError", ValueError),
    ("phoenix.store.base:KeyConflict", ValueError),
    ("phoenix.wire.control:ControlError", RuntimeError),
])
def test_each_keeps_the_standard_base_code_catches_it_by(name: str, stdlib: type[Exception]) -> None:
    module, _, attribute = name.partition(":")
    assert issubclass(getattr(importlib.import_module(module), attribute), stdlib)


def test_an_oserror_subclass_still_builds_from_errno_strerror_and_filename() -> None:
    from phoenix.master.recorder import OutboxUnreadable

    exc = OutboxUnreadable(5, "Input/output error", "/tmp/x")
    assert (exc.errno, exc.strerror, exc.filename) == (5, "Input/output error", "/tmp/x")


@pytest.mark.parametrize(("raised", "code"), [
    (errors.UsageError("bad flag"), 2),
    (errors.StateError("journal damaged"), 2),
    (errors.Conflict("already running"), 1),
    (errors.Unavailable("store down"), 1),
])
def test_the_command_maps_each_category_to_its_exit_code_and_one_line(raised: Exception, code: int) -> None:
    @click.command()
    @friendly_errors
    def command() -> None:
        raise raised

    result = CliRunner().invoke(command)
    assert result.exit_code == code
    assert result.output.strip() == f"phoenix: error: {raised}"
    assert EXIT_CODES[type(raised)] == code


def test_a_broken_rule_of_phoenix_is_not_hidden_behind_one_line() -> None:
    from phoenix.rules.states import BadTransition

    @click.command()
    @friendly_errors
    def command() -> None:
        raise BadTransition("running -> pending is not allowed")

    result = CliRunner().invoke(command)
    assert isinstance(result.exception, BadTransition)  # its traceback, for the bug report


def test_the_root_is_importable_from_the_package() -> None:
    assert phoenix.PhoenixError is errors.PhoenixError
