"""The documentation site: it builds with `--strict` (no broken link, no page
left out of the navigation, no reference that failed to generate), and its
generated pages say what the code says. The blocks on its pages run in
tests/test_readme.py."""

from __future__ import annotations

import dataclasses
import html
import importlib.util
import os
import re
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import click
import pytest

from phoenix import config
from tests.conftest import PYTHON, REPO, phoenix_cli

HOOKS = REPO / "docs" / "hooks"
README_MOST_LINES = 250  # the front door stays short; the manual is the site


def hook(name: str) -> ModuleType:
    """A hook as MkDocs loads it: a file, not a module of any package."""
    spec = importlib.util.spec_from_file_location(f"docs_hook_{name}", HOOKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # as MkDocs does: its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def page_text(site: Path, page: str) -> str:
    """A built page's article as text, tags dropped."""
    document = (site / page / "index.html").read_text()
    article = document[document.index("<article"):document.index("</article>")]
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", article)))


def command_paths(group: click.Group, prefix: str = "phoenix") -> list[str]:
    paths = []
    for name, command in group.commands.items():
        paths.append(f"{prefix} {name}")
        if isinstance(command, click.Group):
            paths += command_paths(command, f"{prefix} {name}")
    return paths


def test_the_site_builds_strict_and_its_references_say_what_the_code_says(tmp_path: Path) -> None:
    pytest.importorskip("mkdocs", reason="the docs extra is not installed: pip install -e '.[docs]'")
    pytest.importorskip("material", reason="mkdocs-material (the docs extra) is not installed")
    site = tmp_path / "site"
    built = subprocess.run([PYTHON, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)], cwd=REPO,
                           env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True,
                           timeout=120)
    assert built.returncode == 0, built.stderr[-4000:]

    from phoenix.cli.main import main as group  # the CLI the `phoenix` entry point (phoenix.cli.entry) hands to

    cli = page_text(site, "reference/cli")
    missing_commands = [path for path in command_paths(group) if f"{path} [OPTIONS]" not in cli]
    assert not missing_commands, f"the command-line reference lacks {missing_commands}"

    settings = page_text(site, "reference/settings")
    for field in dataclasses.fields(config.Config):
        assert f"{field.name} ¶" in settings and f"PHOENIX_{field.name.upper()}" in settings, field.name
    assert "--heartbeat-timeout" in settings  # an option of `phoenix start`, read from the command

    api = page_text(site, "reference/api")
    for name in ("App", "on_finished", "on_failed", "JobInfo", "max_rss_kb", "heartbeat", "current_job", "Client",
                 "submit_many", "KeyConflict", "AppError"):
        assert f" {name} " in api, f"the API reference lacks {name}"

    events = page_text(site, "reference/log-events")
    assert "spawn" in events and "reload_failed" in events and "lease_lapsed" in events

    changelog = page_text(site, "changelog")  # included from CHANGELOG.md
    assert "Unreleased" in changelog and "phoenix store migrate" in changelog


def test_the_settings_reference_renders_every_setting_from_the_code() -> None:
    settings = hook("settings")
    page = settings.render()
    sections = page.split("### ")[1:]
    assert [section.split("`")[1] for section in sections] == [f.name for f in dataclasses.fields(config.Config)]
    workers = next(section for section in sections if section.startswith("`workers`"))
    assert "Concurrent child slots." in workers
    assert "| `int` | `4` | `PHOENIX_WORKERS` | `--workers` |" in workers
    state_dir = next(section for section in sections if section.startswith("`state_dir`"))
    assert '`".phoenix"`' in state_dir and "`--state-dir`" in state_dir
    node = next(section for section in sections if section.startswith("`node`"))
    assert "`unset`" in node


def test_a_setting_without_a_description_fails_the_build(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = hook("settings")

    @dataclasses.dataclass
    class Undocumented:
        workers: int = dataclasses.field(default=4, metadata=config.doc("concurrent child slots"))
        spares: int = 2

    monkeypatch.setattr(settings, "phoenix_config", SimpleNamespace(Config=Undocumented,
                                                                    env_settings=config.env_settings))
    with pytest.raises(settings.UndocumentedSetting, match="Config.spares has no description"):
        settings.render()


def test_the_log_events_reference_lists_the_events_the_code_writes() -> None:
    events = hook("log_events").events()
    assert {"spawn", "kill", "ready", "reload_failed", "adopt", "lease_lapsed", "quarantined"} <= set(events)
    assert events["kill"].levels == {"WARNING"} and {"pid", "job", "attempt", "reason"} <= events["kill"].fields
    # The events whose names are computed are written by hand on the page: each must still be in the code.
    page = (REPO / "docs" / "reference" / "log-events.md").read_text()
    by_hand = re.findall(r"^\| `(\w+)` \|", page, re.MULTILINE)
    source = "".join(path.read_text() for path in (REPO / "phoenix").rglob("*.py"))
    assert by_hand and all(f'"{name}"' in source for name in by_hand), by_hand


def test_phoenix_version_prints_the_version_in_pyproject() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    printed = phoenix_cli("--version")
    assert printed.returncode == 0 and printed.stdout.split()[-1] == version, printed.stdout
    import phoenix

    assert phoenix.__version__ == version


def test_the_readme_stays_a_short_front_door() -> None:
    lines = len((REPO / "README.md").read_text().splitlines())
    assert lines <= README_MOST_LINES, f"README.md has {lines} lines: move the detail into a page under docs/"


def test_the_metrics_reference_lists_what_a_master_serves(master_factory: Any) -> None:
    """Every series a real master exposes is a row of the reference, of its type, and no row is of a series
    it does not expose."""
    master = master_factory("--metrics", "127.0.0.1:0")
    address = master.wait_log("metrics address=").split("metrics address=")[1].split()[0]
    text = urllib.request.urlopen(address, timeout=5).read().decode()
    served = {}
    for name, kind in re.findall(r"^# TYPE (phoenix_\w+) (\w+)$", text, re.MULTILINE):
        if name.endswith("_created"):  # prometheus_client's creation time of each histogram, said on the page
            continue
        served[name if kind != "counter" or name.endswith("_total") else name + "_total"] = kind
    page = (REPO / "docs" / "reference" / "metrics.md").read_text()
    documented = dict(re.findall(r"^\| `(phoenix_\w+)` \| (\w+) \|", page, re.MULTILINE))
    assert documented == served, (documented, served)


def test_the_signals_reference_has_a_row_for_each_signal_the_master_handles() -> None:
    from phoenix.rules.commands import HANDLED_SIGNALS

    page = (REPO / "docs" / "reference" / "signals.md").read_text()
    rows = {name for cell in re.findall(r"^\| (`[^|]+`) \|", page, re.MULTILINE)
            for name in re.findall(r"`([A-Z0-9]+)`", cell)}
    assert rows == {signal.Signals(number).name.removeprefix("SIG") for number in HANDLED_SIGNALS}
