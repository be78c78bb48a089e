"""cli/entry.py: a new image after USR2 reads `phoenix start`'s line without
click, exactly as click reads it, and falls back to click for any line it
does not know."""

from __future__ import annotations

import os
import subprocess

import click
import pytest

from phoenix.cli.entry import START_OPTIONS, read_start
from phoenix.cli.main import start
from phoenix.master.handoff import FDS_VARIABLE
from tests.conftest import PYTHON, REPO

LINES = [
    [],
    ["pkg.mod:app"],
    ["pkg.mod:app", "--state-dir", "/tmp/s", "--config", "phoenix.toml"],
    ["--workers", "3", "pkg.mod:app", "--heartbeat-interval", "0.5", "--heartbeat-timeout=7"],
    ["pkg.mod:app", "--exit-when-done", "--daemon", "--reexec", "fork", "--log-level", "debug", "--log-format=json"],
    ["pkg.mod:app", "--log-file", "/tmp/l", "--metrics", "9100", "--store", "postgresql://h/db", "--node", "n1",
     "--lease-ttl", "12.5"],
    ["pkg.mod:app", "--workers", "2", "--workers", "5"],  # the last one wins, as in click
    ["--", "-odd:app"],
    ["pkg.mod:app", "--node", "--store"],  # a value that looks like an option is a value
]


@pytest.mark.parametrize("args", LINES)
def test_a_start_line_reads_as_click_reads_it(args):
    assert read_start(args) == start.make_context("start", list(args)).params


@pytest.mark.parametrize("args", [
    ["--help"], ["-h"], ["a:app", "b:app"], ["a:app", "--workers", "many"], ["a:app", "--reexec", "later"],
    ["a:app", "--workers"], ["a:app", "--daemon=yes"], ["a:app", "--not-an-option"], ["a:app", "--log-level", "INFO"],
])
def test_a_line_it_does_not_know_is_left_to_click(args):
    assert read_start(args) is None


def test_every_option_of_start_is_known():
    """An option added to cli.main's start and not here would only send replacements through click (slower);
    one that reads differently would be a wrong setting: both are caught here."""
    declared = {opt: (param.name, param.is_flag) for param in start.params if isinstance(param, click.Option)
                for opt in param.opts if opt != "--help"}
    assert {opt: (name, reader is None) for opt, (name, reader) in START_OPTIONS.items()} == declared


def test_a_new_image_reaches_the_master_without_the_cli_libraries():
    """The replacement's path to run_master (the master's own imports included) imports neither click nor
    rich nor prometheus_client: their import was part of the blind window."""
    code = ("import sys\n"
            "import phoenix.cli.replacement as replacement\n"
            "def run_replacement(app_spec, config_file, flags, daemon):\n"
            "    import phoenix.master.arbiter\n"
            "    heavy = [m for m in ('click', 'rich', 'prometheus_client') if m in sys.modules]\n"
            "    print(app_spec, flags['workers'], heavy)\n"
            "    return 0\n"
            "replacement.run_replacement = run_replacement\n"
            "sys.argv = ['phoenix', 'start', 'pkg.mod:app', '--workers', '2']\n"
            "from phoenix.cli.entry import main\n"
            "main()\n")
    env = {**os.environ, FDS_VARIABLE: "{}"}
    done = subprocess.run([PYTHON, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[0] == "pkg.mod:app 2 []"
