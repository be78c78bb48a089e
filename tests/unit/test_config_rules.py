"""Settings of the wrong type are refused with one line, whatever the source:
a TOML boolean is not a number (`workers = true` is not 1), nor a string; a
number is finite (nan would pass every range check)."""

from __future__ import annotations

from pathlib import Path

import pytest

from phoenix import config
from phoenix.config import Config, ConfigError


@pytest.mark.parametrize(("setting", "value", "kind"), [
    ("workers", True, "an integer"),
    ("workers", False, "an integer"),
    ("retries", True, "an integer"),
    ("heartbeat_timeout", True, "a number"),
    ("kill_grace", False, "a number"),
    ("log_file", True, "a string"),
    ("node", ["a"], "a string"),
    ("workers", {"n": 1}, "an integer"),
])
def test_a_boolean_or_a_table_is_refused_where_a_number_or_string_belongs(setting, value, kind):
    with pytest.raises(ConfigError) as refusal:
        Config().overlay({setting: value}, "phoenix.toml")
    message = str(refusal.value)
    assert message == f"{setting} in phoenix.toml must be {kind} (got {value!r})"
    assert "\n" not in message


@pytest.mark.parametrize("text", ["nan", "inf", "-inf"])
def test_a_number_that_is_not_finite_is_refused(text):
    with pytest.raises(ConfigError, match=f"heartbeat_timeout in the PHOENIX_\\* environment must be a number "
                                          f"\\(got '{text}'\\)"):
        Config().overlay({"heartbeat_timeout": text}, "the PHOENIX_* environment")


def test_workers_true_in_a_toml_file_is_refused_at_load(tmp_path: Path):
    path = tmp_path / "phoenix.toml"
    path.write_text("workers = true\n")
    with pytest.raises(ConfigError, match="workers in .*phoenix.toml must be an integer \\(got True\\)"):
        config.load(None, str(path), {})


def test_well_typed_values_still_pass():
    loaded = Config().overlay({"workers": 3, "heartbeat_timeout": 2, "kill_grace": "1.5", "exit_when_done": True,
                               "log_file": "x.log", "retries": 2.0}, "phoenix.toml")
    assert (loaded.workers, loaded.heartbeat_timeout, loaded.kill_grace, loaded.exit_when_done, loaded.log_file,
            loaded.retries) == (3, 2.0, 1.5, True, "x.log", 2)
