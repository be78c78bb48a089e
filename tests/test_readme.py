"""Every fenced block of README.md, of the other pages at the root that the
site includes (CHANGELOG, SECURITY, CONTRIBUTING) and of every page under
docs/ (the site, subfolders included) is exercised, so a newcomer can paste it.

The line before each fence names the rule that covers the block, in an HTML
comment GitHub and the site do not show: `<!-- readme-test: RULE [ARGUMENT] -->`.
A block without one, or with a rule this file does not know, fails the suite:
a new block cannot be skipped silently. So does a fence that names no
language (```sh, ```python, ```text, ```mermaid): the site highlights by it.
The rules:

- `run APP`: the block runs as written (`bash -e`) in a scratch directory
  holding a copy of `examples/`; then a batch of APP there must finish every
  job the journal holds, the ones the block submitted or left running included.
- `run-with-master APP`: the same, with a master of APP already running there.
- `python APP`: the same as `run`, the block being a Python program (library use).
- `example PATH`: the block (after a first `# PATH` line) is part of that file.
- `install`: not run (it would install into the tree under test): its test
  command must be what `.ci/run` runs, and its example run is run.
- `output COMMAND`: sample output; its lines must have the shape COMMAND prints
  (for a master reloaded once, with a failed job and a running one).
- `bench`: the extra it installs holds what it names, and the options it uses
  exist (running the benchmark takes minutes).
- `layers`: the diagram names every module of the import-linter layers
  contract, top-down.
- `ci`: each command is a line that `.ci/run` runs (what to run before a push).
- `state-files`: the picture names every file and folder a state directory
  holds (`phoenix.linux.paths.StatePaths`), and no other `*.sock`, `*.db`, `*.pid`
  or `*.lock` file.
- `store APP`: like `run`, against a real PostgreSQL database (the `pg_url`
  fixture) put in place of the block's example URL; its `pip install` line
  must name the extra that brings psycopg, and is not run.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from phoenix.linux.paths import StatePaths
from tests.conftest import PYTHON, REPO, Master, phoenix_cli, wait_for

README = REPO / "README.md"
# The front door, the root pages the site includes (docs/changelog.md ...), and the site's pages.
PAGES = [README, *(REPO / name for name in ("CHANGELOG.md", "SECURITY.md", "CONTRIBUTING.md")),
         *sorted((REPO / "docs").rglob("*.md"))]
TAG = re.compile(r"<!-- readme-test: (\S+)(?: (.+?))? -->")
# An opening fence and its info string: the language first (```python), maybe attributes after it.
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([^`\s]*)[^`]*$")
BIN = Path(PYTHON).parent  # this interpreter's `phoenix` script, the one under test


@dataclass(frozen=True)
class Block:
    page: str  # README.md, or docs/NAME.md
    line: int  # of the opening fence, 1-based
    language: str
    text: str
    rule: str  # "" when the line before the fence names none
    argument: str


def readme_blocks() -> list[Block]:
    return [block for page in PAGES for block in page_blocks(page)]


def page_blocks(path: Path) -> list[Block]:
    page = str(path.relative_to(REPO))
    lines = path.read_text().splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if opening is None:
            index += 1
            continue
        indent, fence, language = opening.groups()
        language = language.strip("{}.")  # ```{.python} is ```python
        end = next((j for j in range(index + 1, len(lines)) if lines[j].strip() == fence), None)
        assert end is not None, f"{page}:{index + 1}: the block opened here is never closed"
        tag = TAG.fullmatch(lines[index - 1].strip()) if index > 0 else None
        text = "".join(line.removeprefix(indent) + "\n" for line in lines[index + 1:end])
        blocks.append(Block(page, index + 1, language, text, tag[1] if tag else "", (tag[2] or "") if tag else ""))
        index = end + 1
    return blocks


def commands(block: Block) -> list[str]:
    """The block's command lines, without comment lines or trailing comments."""
    found = []
    for line in block.text.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command and not command.startswith("#"):
            found.append(command)
    return found


# -- a scratch directory to run in --------------------------------------------------------

def scratch_env() -> dict[str, str]:
    """This interpreter's phoenix first on PATH, and no PHOENIX_* setting from outside."""
    env = {name: value for name, value in os.environ.items()
           if not name.startswith("PHOENIX_") or name == "PHOENIX_TEST_MARKER"}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def scratch(tmp_path: Path) -> Path:
    """A directory like the checkout's root as the README's commands see it: the examples and a fresh `.phoenix`."""
    root = tmp_path / "scratch"
    shutil.copytree(REPO / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__"))
    return root


def run_shell(text: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-euo", "pipefail", "-c", text], cwd=cwd, env=scratch_env(),
                          capture_output=True, text=True, timeout=60)


def run_python(text: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-c", text], cwd=cwd, env=scratch_env(), capture_output=True, text=True, timeout=60)


def finish_every_job(root: Path, app: str) -> None:
    """A batch of `app` in `root`: it adopts what was left running and runs what is pending; all must finish."""
    batch = subprocess.run([str(BIN / "phoenix"), "start", app, "--exit-when-done"], cwd=root, env=scratch_env(),
                           capture_output=True, text=True, timeout=60)
    assert batch.returncode == 0, batch.stderr[-3000:]
    report = json.loads(phoenix_cli("status", "--json", state_dir=root / ".phoenix").stdout)
    jobs = {job["key"]: job for job in report["jobs"]}
    assert jobs and {job["state"] for job in jobs.values()} == {"finished"}, jobs


def stop_any_master(root: Path) -> None:
    """After a block that failed half-way: a master it started must not outlive the test."""
    if (root / ".phoenix").exists() and phoenix_cli("status", state_dir=root / ".phoenix").returncode == 0:
        phoenix_cli("stop", state_dir=root / ".phoenix")


# -- the rules ------------------------------------------------------------------------------

def check_run(block: Block, tmp_path: Path, runner: Callable[[str, Path], subprocess.CompletedProcess[str]] = run_shell,
              ) -> None:
    root = scratch(tmp_path)
    try:
        result = runner(block.text, root)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
        stop_any_master(root)
        finish_every_job(root, block.argument)
    finally:
        stop_any_master(root)


def check_python(block: Block, tmp_path: Path) -> None:
    check_run(block, tmp_path, run_python)


def check_run_with_master(block: Block, tmp_path: Path) -> None:
    root = scratch(tmp_path)
    master = Master(root / ".phoenix", block.argument, cwd=root, log_dir=tmp_path, env=scratch_env()).start()
    try:
        result = run_shell(block.text, root)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
        stop_any_master(root)
        master.wait_exit()
        finish_every_job(root, block.argument)
    finally:
        master.stop()


EXAMPLE_STORE = "postgresql://phoenix@db.internal/phoenix"


def check_store(block: Block, tmp_path: Path, url: str) -> None:
    install, *_ = commands(block)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert install == "pip install 'phoenix-procmaster[postgres]'", install
    assert any(spec.startswith("psycopg[binary]") for spec in extras["postgres"])
    assert EXAMPLE_STORE in block.text, f"the block's store URL is not {EXAMPLE_STORE}"
    text = "".join(line + "\n" for line in block.text.replace(EXAMPLE_STORE, url).splitlines()
                   if not line.startswith("pip install"))
    root = scratch(tmp_path)
    env = {**scratch_env(), "PHOENIX_STORE": url}
    try:
        result = run_shell(text, root)
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout}\n{result.stderr[-3000:]}"
        phoenix_cli("stop", state_dir=root / ".phoenix")  # its --daemon master; no journal file to ask first
        batch = subprocess.run([str(BIN / "phoenix"), "start", block.argument, "--exit-when-done"], cwd=root, env=env,
                               capture_output=True, text=True, timeout=60)
        assert batch.returncode == 0, batch.stderr[-3000:]
        report = json.loads(phoenix_cli("status", "--json", "--store", url).stdout)
        assert report["jobs"] and {job["state"] for job in report["jobs"]} == {"finished"}, report["jobs"]
    finally:
        phoenix_cli("stop", state_dir=root / ".phoenix")


def check_example(block: Block, tmp_path: Path) -> None:
    text = block.text.removeprefix(f"# {block.argument}\n")
    shipped = (REPO / block.argument).read_text()
    assert text in shipped, f"{block.page}:{block.line} is not a verbatim part of {block.argument}: copy it from there"


def check_install(block: Block, tmp_path: Path) -> None:
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()]
    ci_install = next(line for line in ci if line.startswith("python3 -m venv"))
    ci_tests = next(line for line in ci if " -m pytest" in line)
    example, tests = commands(block)
    assert tests == f"{ci_install} && {ci_tests}", "the README's test command is not what .ci/run runs"
    venv, install, start = example.split(" && ")
    assert venv == ci_install.split(" && ")[0]
    assert install == ".venv/bin/pip install -q ."
    # Its last step, the example run, with this interpreter's phoenix in a scratch copy of the checkout.
    root = scratch(tmp_path)
    result = run_shell(start.replace(".venv/bin/phoenix", "phoenix", 1), root)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (root / ".phoenix" / "journal.db").exists()  # "SQLite journal in ./.phoenix"
    assert "monitoring_complete finished=6 failed=0" in result.stderr


def shape(line: str) -> str:
    """A line with every number, duration, size or ratio as `#` and runs of spaces as one."""
    return " ".join(re.sub(r"^\d[\d.:/hms]*[KMG]?$", "#", word) for word in line.split())


FAILURE = re.compile(r"  \d\d-\d\d \d\d:\d\d:\d\d  \S+  [a-z]+: .+?(  max RSS [\d.]+M)?")  # `last failures:` lines


def check_output(block: Block, tmp_path: Path) -> None:
    prompt, *sample = block.text.splitlines()
    assert prompt == f"$ {block.argument}" and block.argument == "phoenix status", "only `phoenix status` samples"
    sample = [line for line in sample if line != "..."]
    # A master that has been reloaded once and has a failed job, so that every line the sample shows is printed.
    master = Master(tmp_path / "state", "tests.apps.jobs:app", log_dir=tmp_path).start()
    try:
        master.submit("tests.apps.jobs:raises", {}, key="broken")
        wait_for(lambda: master.jobs()["broken"]["state"] == "failed", timeout=10, what="the job's failure")
        reload = phoenix_cli("reload", "--wait", state_dir=master.state_dir)
        assert reload.returncode == 0, reload.stderr
        master.submit("tests.apps.jobs:sleep", {"s": 30}, key="sleeper")
        wait_for(lambda: master.jobs()["sleeper"]["last_beat_age"] is not None, timeout=10,
                 what="the job's first beat")
        printed = phoenix_cli("status", state_dir=master.state_dir).stdout.splitlines()
    finally:
        master.stop()
    # The master line and the counts; the failures, each as FAILURE; the column header; then
    # job rows with their key as `KEY`.
    header = printed.index(next(line for line in printed if line.startswith("key ")))
    assert printed[2] == "last failures:" and all(FAILURE.fullmatch(line) for line in printed[3:header]), printed
    assert [shape(line) for line in sample[:3]] == [shape(line) for line in printed[:3]], printed
    sample_header = 3 + next(i for i, line in enumerate(sample[3:]) if not FAILURE.fullmatch(line))
    assert sample_header > 3, "the sample shows no failure line"
    assert shape(sample[sample_header]) == shape(printed[header]), (sample[sample_header], printed[header])
    real_row = shape("KEY " + printed[header + 1].split(maxsplit=1)[1])
    for row in sample[sample_header + 1:]:
        assert shape("KEY " + row.split(maxsplit=1)[1]) == real_row, (row, printed[header + 1])


def check_bench(block: Block, tmp_path: Path) -> None:
    install, *runs = commands(block)
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert install == "pip install -e '.[bench]'" and "bench" in extras
    named = re.search(r"# ([\w, -]+);", block.text.splitlines()[0])
    assert named, "the install line's comment names the packages the extra brings"
    requirements = {re.split(r"[<>=\[ ]", spec)[0] for spec in extras["bench"]}
    assert set(named[1].split(", ")) <= requirements
    usage = subprocess.run([PYTHON, "-m", "bench", "--help"], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert usage.returncode == 0, usage.stderr
    for run in runs:
        assert run.startswith("python -m bench")
        for option in run.split()[3:]:
            assert f" {option}" in usage.stdout, f"`python -m bench` has no option {option}"


def check_layers(block: Block, tmp_path: Path) -> None:
    """The package map: its floors are import-linter's layers, top-down, and each
    folder's line (with its indented continuation lines) names every module in it."""
    contract = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    layer_of = {name.strip().removeprefix("phoenix."): number  # "a | b": independent, "a : b": siblings
                for number, layer in enumerate(contract["layers"]) for name in re.split(r"[|:]", layer)}
    floors: list[tuple[list[str], str]] = []  # (names in the first column, the description with continuations)
    for line in block.text.splitlines():
        if not line.strip():
            continue
        if line.startswith("   ") and floors:  # a continuation of the floor above
            floors[-1] = (floors[-1][0], floors[-1][1] + " " + line.strip())
            continue
        first, _, description = re.sub(r"\s{2,}", "\0", line.strip(), count=1).partition("\0")
        floors.append((re.findall(r"[a-z_][a-z0-9_]*", first), description))
    named = [name for names, _ in floors for name in names]
    assert sorted(named) == sorted(layer_of), "the diagram and pyproject.toml's layers name other packages"
    layers = [layer_of[name] for name in named]
    assert layers == sorted(layers), "the diagram lists the layers in another order than pyproject.toml"
    for names, description in floors:
        for name in names:
            folder = REPO / "phoenix" / name
            if folder.is_dir():
                modules = {p.stem for p in folder.glob("*.py") if p.stem != "__init__"}
                missing = sorted(m for m in modules if not re.search(rf"\b{m}\b", description))
                assert not missing, f"the package map's line for {name}/ does not name {missing}"


def check_ci(block: Block, tmp_path: Path) -> None:
    ci = {line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()}
    assert commands(block), "the block holds no command"
    for command in commands(block):
        assert command in ci, f"`{command}` is not what .ci/run runs: copy the line from there"


STATE_FILE = re.compile(r"\b[\w-]+\.(?:sock|db|pid|lock)\b")


def check_state_files(block: Block, tmp_path: Path) -> None:
    paths = StatePaths("/state")
    made = {getattr(paths, name) for name in dir(StatePaths) if isinstance(getattr(StatePaths, name), property)}
    names = {path.name + ("" if path.suffix else "/") for path in made}  # a folder as `outbox/`
    missing = {name for name in names if name not in block.text}
    assert not missing, f"the picture leaves out {sorted(missing)} of the state directory"
    unknown = set(STATE_FILE.findall(block.text)) - names
    assert not unknown, f"the picture names {sorted(unknown)}, which no state directory holds"


RULES: dict[str, Callable[[Block, Path], None]] = {
    "run": check_run, "run-with-master": check_run_with_master, "python": check_python, "example": check_example,
    "install": check_install, "output": check_output, "bench": check_bench, "layers": check_layers,
    "ci": check_ci, "state-files": check_state_files,
}
NEEDS_ARGUMENT = {"run", "run-with-master", "python", "example", "output"}
BLOCKS = readme_blocks()


@pytest.mark.parametrize("block", BLOCKS, ids=[f"{Path(b.page).stem}-line{b.line}-{b.rule or 'untagged'}"
                                               for b in BLOCKS])
def test_readme_block(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    assert block.language, (f"{block.page}:{block.line}: the fence names no language: open it with ```sh, "
                            "```python, ```text or the like (the site highlights by it)")
    if block.rule == "store":  # the one rule that needs a database: its server starts only for this block
        assert block.argument, f"{block.page}:{block.line}: `store` of what?"
        check_store(block, tmp_path, request.getfixturevalue("pg_url"))
        return
    assert block.rule in RULES, (
        f"{block.page}:{block.line}: no rule covers this block; put `<!-- readme-test: RULE [ARGUMENT] -->` "
        f"on the line before it, RULE one of {', '.join([*RULES, 'store'])} (see {Path(__file__).name})")
    assert block.argument or block.rule not in NEEDS_ARGUMENT, f"{block.page}:{block.line}: `{block.rule}` of what?"
    RULES[block.rule](block, tmp_path)


def test_the_readme_has_the_blocks_this_file_knows() -> None:
    """A parser that lost blocks would pass every test above."""
    assert len(BLOCKS) == sum(page.read_text().count("<!-- readme-test: ") for page in PAGES) >= 8
