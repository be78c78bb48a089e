"""An operator is never locked out (FAILURES.md, class 9): a configuration
file a master would refuse does not keep `status`, `stop` or `jobs` from the
state directory (one warning line), while `check` and `reload` refuse it in
one line; a state directory that is a file, or under one, is one error line
for every command, `check` included; and beside an app whose App(...) sets
its own state_dir, "nothing has run here" says where that directory is."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tests.conftest import REPO, phoenix_cli

SLEEP = "tests.apps.jobs:sleep"


def one_line(result: Any, prefix: str) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix), result.stderr
    return str(lines[0])


def in_dir(cwd: Path, *args: str, state_dir: Path | None = None) -> Any:
    """`phoenix ...` run in `cwd` (its phoenix.toml), the tests' apps importable."""
    return phoenix_cli(*args, state_dir=state_dir, cwd=cwd, env={"PYTHONPATH": str(REPO)})


def test_a_misspelt_setting_warns_the_commands_that_need_only_the_state_directory(master_factory, state_dir,
                                                                                   tmp_path):
    """Old code: stop, status, reload and jobs exited 2 on `wokers = 3`."""
    master = master_factory()
    master.submit(SLEEP, {"s": 30}, key="long")
    project = tmp_path / "project"
    project.mkdir()
    (project / "phoenix.toml").write_text(f'state_dir = "{state_dir}"\nwokers = 3\nheartbeat_timeout = "soon"\n')
    for command in (("status",), ("jobs",), ("show", "long"), ("submit", SLEEP, '{"s": 0}', "--key", "quick")):
        for state in (None, state_dir):  # from the file, and with --state-dir
            result = in_dir(project, *command, state_dir=state)
            assert result.returncode == 0, (command, result.stderr)
            line = one_line(result, "phoenix: warning: ")
            assert "'wokers'" in line and "heartbeat_timeout" in line and "phoenix check" in line, line
    assert "long" in in_dir(project, "jobs").stdout

    checked = in_dir(project, "check", "tests.apps.jobs:app")
    assert checked.returncode == 2 and "'wokers'" in one_line(checked, "phoenix: error: ")
    reloaded = in_dir(project, "reload", state_dir=state_dir)
    assert reloaded.returncode == 2 and "'wokers'" in one_line(reloaded, "phoenix: error: ")
    assert master.live()["master"]["generation"] == 1  # the refused reload asked the master nothing

    stopped = in_dir(project, "stop")
    assert stopped.returncode == 0, stopped.stderr
    one_line(stopped, "phoenix: warning: ")
    assert master.wait_exit() == 0


def test_a_file_that_is_not_toml_does_not_lock_out_a_command_given_the_state_directory(master_factory, state_dir,
                                                                                       tmp_path):
    master = master_factory()
    project = tmp_path / "project"
    project.mkdir()
    (project / "phoenix.toml").write_text("workers = [unclosed\n")
    status = in_dir(project, "status", state_dir=state_dir)
    assert status.returncode == 0, status.stderr
    assert "not valid TOML" in one_line(status, "phoenix: warning: ")
    # Without --state-dir the file may have named it: guessing could address another directory.
    guessed = in_dir(project, "status")
    assert guessed.returncode == 2 and "give --state-dir" in one_line(guessed, "phoenix: error: ")
    stopped = in_dir(project, "stop", state_dir=state_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert master.wait_exit() == 0


def test_a_state_directory_that_is_a_file_or_under_one_is_one_line(tmp_path):
    """Old code: NotADirectoryError tracebacks from status, stop and reload,
    and `check` said ok."""
    a_file = tmp_path / "state-file"
    a_file.write_text("not a directory\n")
    project = tmp_path / "project"
    project.mkdir()
    for state, shown in ((a_file, "is a file"), (a_file / "state", "is under a file")):
        (project / "phoenix.toml").write_text(f'state_dir = "{state}"\n')
        for command in (("status",), ("stop",), ("reload",), ("jobs",), ("submit", SLEEP, "{}"),
                        ("check", "tests.apps.jobs:app"), ("start", "tests.apps.jobs:app")):
            result = in_dir(project, *command)
            assert result.returncode == 2, (command, result.stdout, result.stderr)
            line = one_line(result, "phoenix: error: ")
            assert shown in line and str(state) in line, line
    assert a_file.read_text() == "not a directory\n"


APP_WITH_ITS_OWN_STATE_DIR = '''
import phoenix

app = phoenix.App(state_dir={state_dir!r}, heartbeat_interval=0.2, heartbeat_timeout=1.0)


@app.job
def sleep(params):
    import time
    time.sleep(params["s"])
'''


def test_nothing_has_run_here_says_where_the_apps_own_state_directory_is(master_factory, state_dir, tmp_path):
    """Old code: status, stop and jobs beside the app said "nothing has run
    here" (./.phoenix) while the app's master ran on its own state_dir."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "ownstate.py").write_text(APP_WITH_ITS_OWN_STATE_DIR.format(state_dir=str(state_dir)))
    (project / "phoenix.toml").write_text('app = "ownstate:app"\n')
    master = master_factory(app="ownstate:app", cwd=project)
    for command, code in ((("status",), 3), (("stop",), 3), (("jobs",), 2), (("reload",), 3)):
        result = in_dir(project, *command)
        assert result.returncode == code, (command, result.stdout, result.stderr)
        line = one_line(result, "phoenix: error: ")
        assert f"keeps its state in {state_dir}" in line and f"--state-dir {state_dir}" in line, line
    assert not (project / ".phoenix").exists()  # looking created nothing
    assert in_dir(project, "status", state_dir=state_dir).returncode == 0
    assert master.proc is not None and master.proc.poll() is None

    # An app that cannot be imported: said, and the way out.
    (project / "phoenix.toml").write_text('app = "missing_module:app"\n')
    result = in_dir(project, "status")
    assert result.returncode == 3 and "could not be imported" in one_line(result, "phoenix: error: ")
    assert os.path.isdir(state_dir)


def test_the_hint_never_imports_code_another_user_could_have_put_here(tmp_path):
    """The hint imports the app from the current directory: in one that is
    another user's (or writable by others) it is not imported, and says so."""
    import pwd

    project = tmp_path / "project"
    project.mkdir()
    marker = tmp_path / "imported-as-root"
    (project / "planted.py").write_text(f"open({str(marker)!r}, 'w').close()\nimport phoenix\napp = phoenix.App()\n")
    # (The default ./.phoenix would be refused already: it would lie under nobody's directory.)
    (project / "phoenix.toml").write_text(f'app = "planted:app"\nstate_dir = "{tmp_path / "elsewhere"}"\n')
    nobody = pwd.getpwnam("nobody")
    for path in (project, project / "planted.py", project / "phoenix.toml"):
        os.chown(path, nobody.pw_uid, nobody.pw_gid)
    result = in_dir(project, "status")
    assert result.returncode == 3
    assert "was not imported" in one_line(result, "phoenix: error: ")
    assert not marker.exists()
