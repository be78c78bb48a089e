"""Configuration precedence: App() < file < PHOENIX_* environment < flags."""

import pytest

from phoenix import config


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in list(__import__("os").environ):
        if name.startswith("PHOENIX_") and name != "PHOENIX_TEST_MARKER":
            monkeypatch.delenv(name)
    return tmp_path


def test_each_source_overrides_the_one_before(in_tmp, monkeypatch):
    (in_tmp / "phoenix.toml").write_text("workers = 3\nheartbeat_timeout = 9.0\nkill_grace = 2\n")
    monkeypatch.setenv("PHOENIX_HEARTBEAT_TIMEOUT", "7.5")
    monkeypatch.setenv("PHOENIX_RETRIES", "5")
    loaded = config.load({"workers": 10, "callback_timeout": 4.0, "retries": 1}, None, {"retries": 0, "workers": None})
    assert loaded.workers == 3  # file over App()
    assert loaded.callback_timeout == 4.0  # App() over built-in default
    assert loaded.heartbeat_timeout == 7.5  # environment over file
    assert loaded.retries == 0  # flag over environment
    assert loaded.kill_grace == 2.0


def test_pyproject_tool_table(in_tmp):
    (in_tmp / "pyproject.toml").write_text("[project]\nname = 'x'\n\n[tool.phoenix]\nworkers = 6\n")
    assert config.load(None, None, {}).workers == 6


def test_errors_name_the_setting_and_the_source(in_tmp, monkeypatch):
    (in_tmp / "phoenix.toml").write_text("wrokers = 3\n")
    with pytest.raises(config.ConfigError, match="unknown setting 'wrokers' in phoenix.toml"):
        config.load(None, None, {})
    (in_tmp / "phoenix.toml").write_text("workers = 3\n")
    monkeypatch.setenv("PHOENIX_HEARTBEAT_INTERVAL", "soon")
    with pytest.raises(config.ConfigError, match="heartbeat_interval in the PHOENIX_\\* environment must be a number"):
        config.load(None, None, {})
    monkeypatch.setenv("PHOENIX_HEARTBEAT_INTERVAL", "10")
    with pytest.raises(config.ConfigError, match="heartbeat_timeout .* must be longer than heartbeat_interval"):
        config.load(None, None, {})
