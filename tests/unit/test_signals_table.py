"""The signals PID 1 holds from the entry point's first line are the ones the master handles."""

from phoenix.cli.entry import EARLY_HELD
from phoenix.rules.commands import HANDLED_SIGNALS


def test_pid1_holds_from_its_first_line_exactly_the_signals_the_master_handles() -> None:
    assert EARLY_HELD == frozenset(HANDLED_SIGNALS)
