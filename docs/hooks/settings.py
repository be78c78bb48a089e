"""MkDocs hook: the settings reference, rendered from `phoenix.config.Config`
when the site is built, so that it cannot drift from the code.

A page that holds the line `<!-- settings: generated -->` gets, in its place,
one section per field of `Config`, in the order the code declares them: the
name (the key in phoenix.toml), its type and default as the code has them,
the environment variable that sets it (checked against
`phoenix.config.env_settings`, the function that reads them), the option of
`phoenix start` that sets it (read from the click command itself) and the
description kept beside the field (`metadata=doc(...)`). A field without a
description fails the build.
"""

from __future__ import annotations

import dataclasses
import json
import re
from typing import Any

import click

from phoenix import config as phoenix_config

MARKER = "<!-- settings: generated -->"
# "(see Many hosts)" in a description becomes a link to that page, relative to the settings page.
PAGES = {"Failure modes": "../failure-modes.md", "Many hosts": "../many-hosts.md", "Writing jobs": "../writing-jobs.md",
         "Deploying": "../deploying.md", "Operating": "../operating.md", "Configuration": "../configuration.md",
         "Tracing": "../tracing.md"}


class UndocumentedSetting(Exception):
    pass


def start_options() -> dict[str, list[str]]:
    """Each setting's options of `phoenix start`, read from the CLI (the
    click group the `phoenix` entry point, phoenix.cli.entry, hands commands to)."""
    from phoenix.cli.main import main as group

    start = group.commands["start"]
    return {param.name: list(param.opts) for param in start.params
            if isinstance(param, click.Option) and param.name is not None}


def toml_value(value: Any) -> str:
    """A default as it would be written in phoenix.toml."""
    if value is None:
        return "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


def environment_variable(name: str) -> str:
    variable = f"PHOENIX_{name.upper()}"
    if phoenix_config.env_settings({variable: "x"}) != {name: "x"}:
        raise UndocumentedSetting(f"{variable} is not what phoenix.config.env_settings reads for {name}")
    return variable


def linked(description: str) -> str:
    return re.sub(r"\bsee ([A-Z][a-z]+(?: [a-z]+)?)\b",
                  lambda see: f"see [{see[1]}]({PAGES[see[1]]})" if see[1] in PAGES else see[0], description)


def render() -> str:
    options = start_options()
    sections = []
    for setting in dataclasses.fields(phoenix_config.Config):
        description = setting.metadata.get("doc")
        if not description:
            raise UndocumentedSetting(
                f"phoenix.config.Config.{setting.name} has no description: add metadata=doc(...) beside it")
        flags = ", ".join(f"`{flag}`" for flag in options.get(setting.name, [])) or "—"
        sections.append("\n".join([
            f"### `{setting.name}`",
            "",
            f"{linked(description[0].upper() + description[1:])}.",
            "",
            "| type | default | environment | `phoenix start` |",
            "| --- | --- | --- | --- |",
            f"| `{setting.type}` | `{toml_value(setting.default)}` | `{environment_variable(setting.name)}` "
            f"| {flags} |",
            "",
        ]))
    return "\n".join(sections)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:  # MkDocs passes these by name
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
