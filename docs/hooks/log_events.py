"""MkDocs hook: the table of log events, read from the code when the site is
built, so that it lists every event the code writes and no other.

A page that holds the line `<!-- log-events: generated -->` gets, in its
place, one row per event name that a call `event(LEVEL, "name", field=...)`
(`phoenix.log.event`, however imported) writes anywhere in the `phoenix`
package: the levels it is written at, the fields those calls name, and the
modules that write it. Events whose name is computed at run time are not
found this way; the page names them in its text.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import phoenix

MARKER = "<!-- log-events: generated -->"
LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@dataclass
class Event:
    levels: set[str] = field(default_factory=set)
    fields: set[str] = field(default_factory=set)
    modules: set[str] = field(default_factory=set)


def level_name(node: ast.expr) -> str:
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else ""
    return name if name in LEVELS else "varies"


def events() -> dict[str, Event]:
    package = Path(phoenix.__file__).parent
    found: dict[str, Event] = defaultdict(Event)
    for source in sorted(package.rglob("*.py")):
        module = ".".join(("phoenix", *source.relative_to(package).with_suffix("").parts))
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            if not (isinstance(node, ast.Call) and len(node.args) >= 2):
                continue
            called = node.func.id if isinstance(node.func, ast.Name) else \
                node.func.attr if isinstance(node.func, ast.Attribute) else ""
            name = node.args[1]
            if called != "event" or not (isinstance(name, ast.Constant) and isinstance(name.value, str)):
                continue
            event = found[name.value]
            event.levels.add(level_name(node.args[0]))
            event.fields.update(keyword.arg for keyword in node.keywords if keyword.arg is not None)
            event.modules.add(module.removesuffix(".__init__"))
    return dict(found)


def render() -> str:
    rows = ["| event | level | fields | written by |", "| --- | --- | --- | --- |"]
    for name, event in sorted(events().items()):
        levels = ", ".join(level.lower() for level in LEVELS + ("varies",) if level in event.levels)
        fields = " ".join(f"`{name}`" for name in sorted(event.fields)) or "—"
        modules = ", ".join(f"`{module}`" for module in sorted(event.modules))
        rows.append(f"| `{name}` | {levels} | {fields} | {modules} |")
    return "\n".join(rows) + "\n"


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:  # MkDocs passes these by name
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, render())
