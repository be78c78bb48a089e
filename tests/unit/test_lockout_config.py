"""config.load with a `warn` (the commands that need only the state
directory): what else is wrong is left out and said once; without it, the
same file is refused. In-process, with real files in a temporary directory."""

from __future__ import annotations

import os

import pytest

from phoenix import config


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(os.environ):
        if name.startswith("PHOENIX_") and name != "PHOENIX_TEST_MARKER":
            monkeypatch.delenv(name)
    return tmp_path


def test_bad_settings_are_left_out_and_said_in_one_warning(in_tmp, monkeypatch):
    (in_tmp / "phoenix.toml").write_text('state_dir = "/srv/state"\nwokers = 3\nworkers = "many"\nretries = 2\n')
    monkeypatch.setenv("PHOENIX_KILL_GRACE", "soon")
    said: list[str] = []
    loaded = config.load(None, None, {"state_dir": None}, validate=False, warn=said.append)
    assert (loaded.state_dir, loaded.workers, loaded.retries, loaded.kill_grace) == ("/srv/state", 4, 2, 5.0)
    assert len(said) == 1
    assert "'wokers'" in said[0] and "workers" in said[0] and "kill_grace" in said[0]
    with pytest.raises(config.ConfigError, match="wokers"):
        config.load(None, None, {"state_dir": None}, validate=False)


def test_a_file_that_is_not_toml_needs_the_state_directory_on_the_command_line(in_tmp):
    (in_tmp / "phoenix.toml").write_text("state_dir = [\n")
    said: list[str] = []
    with pytest.raises(config.ConfigError, match="give --state-dir"):
        config.load(None, None, {"state_dir": None}, validate=False, warn=said.append)
    loaded = config.load(None, None, {"state_dir": "/given"}, validate=False, warn=said.append)
    assert loaded.state_dir == "/given" and len(said) == 1 and "whole file is ignored" in said[0]


def test_flags_are_always_checked(in_tmp):
    with pytest.raises(config.ConfigError, match="workers"):
        config.load(None, None, {"workers": "x"}, validate=False, warn=lambda message: None)


def test_a_sound_file_says_nothing(in_tmp):
    (in_tmp / "phoenix.toml").write_text("workers = 3\n")
    said: list[str] = []
    assert config.load(None, None, {}, validate=False, warn=said.append).workers == 3
    assert said == []
