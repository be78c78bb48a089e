"""The master's decisions, in-process and exhaustive: no process is started
here. The real-process suite proves the parts are wired right; these prove
each rule."""

from __future__ import annotations

import random
import signal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from phoenix.master.timers import TimerHeap
from phoenix.rules.commands import SIGNAL_COMMANDS, BadRequest, Command, from_request
from phoenix.rules.liveness import Limits, excused, master_was_away, verdict
from phoenix.rules.outcomes import classify, classify_exit
from phoenix.rules.policy import RestartBudget, after_attempt, backoff_delay, may_run, may_start_jobs
from phoenix.rules.states import (
    HANDOFF_TRANSITIONS,
    MASTER_TRANSITIONS,
    BadTransition,
    HandoffPhase,
    KillReason,
    MasterState,
    Outcome,
    TimerKind,
    check_move,
)

# -- policy.after_attempt -----------------------------------------------------------------


def _after(outcome: Outcome, failures: int, retries: int | None, budget: RestartBudget | None = None,
           now: float = 100.0):
    return after_attempt(outcome, failures, retries, budget=budget or RestartBudget(100, 10.0), now=now,
                         backoff_base=0.5, backoff_cap=60.0, rng=random.Random(1))


@pytest.mark.parametrize("outcome, failures, retries, state, counts, callback", [
    (Outcome.FINISHED, 0, 3, "finished", False, "on_finished"),
    (Outcome.FINISHED, 5, 0, "finished", False, "on_finished"),
    (Outcome.INTERRUPTED, 0, 0, "pending", False, None),  # the operator's stop is not the job's failure
    (Outcome.INTERRUPTED, 9, 0, "pending", False, None),
    (Outcome.CANCELLED, 0, 3, "cancelled", False, "on_failed"),  # the operator's cancel: never re-run
    (Outcome.CANCELLED, 9, 0, "cancelled", False, "on_failed"),
    (Outcome.CANCELLED, 0, None, "cancelled", False, "on_failed"),  # even with the policy unknown
    (Outcome.ERROR, 0, 3, "pending", True, None),
    (Outcome.ERROR, 2, 3, "pending", True, None),
    (Outcome.ERROR, 3, 3, "failed", True, "on_failed"),
    (Outcome.ERROR, 0, 0, "failed", True, "on_failed"),
    (Outcome.LOST, 0, 2, "pending", True, None),  # lost: re-run under the job's policy
    (Outcome.LOST, 2, 2, "failed", True, "on_failed"),
    (Outcome.KILLED, 0, 1, "pending", True, None),
    (Outcome.CRASHED, 1, 1, "failed", True, "on_failed"),
    (Outcome.LOST, 7, None, "pending", True, None),  # no app loaded: decided later, never failed blind
    (Outcome.ERROR, 0, None, "pending", True, None),
])
def test_after_attempt(outcome, failures, retries, state, counts, callback):
    after = _after(outcome, failures, retries)
    assert (after.job_state, after.counts_as_failure, after.callback) == (state, counts, callback)
    if state != "pending" or not counts or retries is None:
        assert after.delay == 0.0


@given(failures=st.integers(0, 50), retries=st.integers(0, 50),
       outcome=st.sampled_from([o for o in Outcome
                                if o not in (Outcome.FINISHED, Outcome.INTERRUPTED, Outcome.CANCELLED)]))
def test_a_failed_attempt_reruns_exactly_while_retries_remain(failures, retries, outcome):
    after = _after(outcome, failures, retries)
    assert (after.job_state == "pending") == (failures + 1 <= retries)
    assert 0.0 <= after.delay <= 60.0


def test_may_run_is_the_deferred_half_of_the_same_rule():
    # A degraded master recorded failures without the policy; the next master decides.
    assert may_run(2, 2) and not may_run(3, 2) and may_run(0, 0)


def test_a_rerun_waits_for_its_place_in_the_restart_budget():
    budget = RestartBudget(2, 10.0)
    delays = [_after(Outcome.ERROR, 0, 9, budget, now=100.0).delay for _ in range(4)]
    assert delays[0] <= 0.5 and delays[1] <= 0.5
    assert delays[2] == pytest.approx(10.0) and delays[3] == pytest.approx(10.0)


def test_a_rerun_held_by_the_restart_budget_says_how_many_are_queued_ahead_of_it():
    budget = RestartBudget(2, 10.0)
    held = [_after(Outcome.ERROR, 0, 9, budget, now=100.0).queued_behind for _ in range(5)]
    assert held == [None, None, 0, 1, 2]  # None: the backoff, not the budget, decides the first two


@given(st.integers(1, 40), st.floats(0.01, 5), st.floats(0.01, 100))
def test_backoff_is_jittered_under_its_cap(failures, base, cap):
    delay = backoff_delay(failures, base, cap, random.Random(failures))
    assert 0.0 <= delay <= min(cap, base * 2 ** (failures - 1))


def test_backoff_with_no_base_is_immediate():
    assert backoff_delay(5, 0.0, 10.0) == 0.0


# -- the slot gate ----------------------------------------------------------------------------


@given(state=st.sampled_from(MasterState), phase=st.sampled_from(HandoffPhase), outage=st.booleans(),
       running=st.integers(0, 10), slots=st.integers(0, 10))
def test_the_slot_gate(state, phase, outage, running, slots):
    allowed = may_start_jobs(state, phase, outage, running, slots)
    expected = (state == MasterState.RUNNING and not outage and running < slots
                and phase in (HandoffPhase.IDLE, HandoffPhase.PREFLIGHT))
    assert allowed == expected
    if state == MasterState.DEGRADED:
        assert not allowed  # a master with no app loaded starts nothing


# -- liveness ------------------------------------------------------------------------------------


@pytest.mark.parametrize("limits, beat, progress, started, now, reason, next_check", [
    (Limits(5.0), 10.0, 0.0, 0.0, 14.9, None, 15.0),
    (Limits(5.0), 10.0, 0.0, 0.0, 15.0, KillReason.HEARTBEAT_TIMEOUT, 15.0),
    (Limits(5.0, stall_timeout=3.0), 10.0, 8.0, 0.0, 10.5, None, 11.0),
    (Limits(5.0, stall_timeout=3.0), 10.0, 8.0, 0.0, 11.0, KillReason.STALL_TIMEOUT, 11.0),
    (Limits(5.0, max_runtime=12.0), 11.0, 11.0, 0.0, 12.0, KillReason.MAX_RUNTIME, 12.0),
    (Limits(5.0, max_runtime=100.0), 11.0, 11.0, 0.0, 12.0, None, 16.0),
])
def test_verdict(limits, beat, progress, started, now, reason, next_check):
    judged = verdict(limits, last_beat=beat, last_progress=progress, started=started, now=now)
    assert judged.reason == reason and judged.next_check == pytest.approx(next_check)


@given(beat=st.floats(0, 1000), progress=st.floats(0, 1000), started=st.floats(0, 1000), now=st.floats(0, 2000),
       hb=st.floats(0.1, 100), stall=st.none() | st.floats(0.1, 100), runtime=st.none() | st.floats(0.1, 100))
def test_verdict_kills_exactly_when_a_limit_is_past(beat, progress, started, now, hb, stall, runtime):
    judged = verdict(Limits(hb, stall, runtime), last_beat=beat, last_progress=progress, started=started, now=now)
    due = [beat + hb] + ([progress + stall] if stall else []) + ([started + runtime] if runtime else [])
    assert judged.next_check == min(due)
    assert (judged.reason is not None) == (min(due) <= now)


@pytest.mark.parametrize("expected, woke, worked, interval, away", [
    (10.0, 10.01, 0.0, 1.0, False),  # scheduler jitter
    (10.0, 10.9, 0.0, 1.0, False),
    (10.0, 11.5, 0.0, 1.0, True),  # a second and a half late: the master did not run
    (10.0, 10.3, 0.0, 0.1, True),
    (10.0, 10.2, 0.0, 0.1, False),  # never less than a quarter second
    (10.0, 10.0, 0.25, 0.1, False),  # a slice of forks is work, not absence
    (10.0, 10.0, 0.9, 0.1, False),
    (10.0, 10.0, 3.0, 0.5, True),  # a turn stuck for seconds (a stalled journal write, a stop mid-turn)
    (10.0, 10.0, 1.5, 1.0, False),  # under two intervals
])
def test_master_was_away(expected, woke, worked, interval, away):
    assert master_was_away(expected, woke, worked, interval) is away


@pytest.mark.parametrize("last, away, now, expected", [
    (100.0, 6.0, 107.0, 106.0),  # silent since before a 6 s absence: only the silence outside it counts
    (106.9, 6.0, 107.0, 107.0),  # beat just now (read after the wake): never moved past now
    (90.0, 1.0, 107.0, 91.0),  # frozen long before a short absence: still found, 1 s later
    (100.0, 0.0, 107.0, 100.0),
])
def test_excused_moves_a_silence_on_by_the_absence_and_no_further(last, away, now, expected):
    assert excused(last, away, now) == expected


# -- outcomes.classify -------------------------------------------------------------------------

SIGKILLED = signal.SIGKILL  # a wait status of "killed by SIGKILL" is the signal number itself
SEGFAULT = signal.SIGSEGV
EXIT_3 = 3 << 8


@pytest.mark.parametrize("kwargs, outcome, reason", [
    (dict(final={"k": "finished", "result": 1}), Outcome.FINISHED, None),
    (dict(final={"k": "failed", "error": "Traceback ... ValueError"}), Outcome.ERROR, None),
    (dict(final={"k": "finished", "result": 1}, interrupted=True, status=SIGKILLED), Outcome.FINISHED, None),
    (dict(interrupted=True, status=SIGKILLED), Outcome.INTERRUPTED, "stopped before it finished"),
    (dict(kill_reason=KillReason.HEARTBEAT_TIMEOUT, kill_detail="heartbeat_timeout: 5.10 s", status=SIGKILLED),
     Outcome.KILLED, "heartbeat_timeout"),
    (dict(kill_reason=KillReason.CANCELLED, status=SIGKILLED), Outcome.CANCELLED,
     "cancelled by the operator (phoenix cancel)"),
    (dict(kill_reason=KillReason.CANCELLED, status=0), Outcome.CANCELLED,  # left on its own TERM handler
     "cancelled by the operator (phoenix cancel)"),
    (dict(kill_reason=KillReason.CANCELLED, final={"k": "failed", "error": "KeyboardInterrupt"}), Outcome.CANCELLED,
     "cancelled by the operator (phoenix cancel)"),  # a job that raised on its TERM is still not re-run
    (dict(kill_reason=KillReason.CANCELLED, interrupted=True, status=SIGKILLED), Outcome.CANCELLED,
     "cancelled by the operator (phoenix cancel)"),  # a stop during the cancel: cancelled, not back to pending
    # Finished before the cancel came: finished. Finished after it (its own TERM handler's
    # sys.exit(0), found from outside): the cancel wins, and no on_finished runs.
    (dict(kill_reason=KillReason.CANCELLED, final={"k": "finished", "result": 1}, final_before_stop=True),
     Outcome.FINISHED, None),
    (dict(kill_reason=KillReason.CANCELLED, final={"k": "finished", "result": None}), Outcome.CANCELLED,
     "cancelled by the operator (phoenix cancel)"),
    (dict(status=SEGFAULT), Outcome.CRASHED, "SIGSEGV"),
    (dict(status=SIGKILLED), Outcome.SIGNALLED, "SIGKILL"),
    (dict(status=EXIT_3), Outcome.EXITED, "exit code 3"),
    (dict(), Outcome.LOST, "gone"),
])
def test_classify(kwargs, outcome, reason):
    args = dict(final=None, status=None, interrupted=False, kill_reason=None, kill_detail=None, lost_reason="gone")
    result = classify(**{**args, **kwargs})
    assert (result.outcome, result.reason) == (outcome, reason)
    if outcome == Outcome.FINISHED:
        assert result.result_json == "1" and result.error is None
    else:
        assert result.error


def test_classify_names_what_ended_a_killed_child():
    result = classify(final=None, status=SIGKILLED, interrupted=False, kill_reason=KillReason.STALL_TIMEOUT,
                      kill_detail="stall_timeout: 3.00 s")
    assert result.error == "stall_timeout: 3.00 s; ended by SIGKILL"


def test_classify_exit_of_unknown_signals():
    assert classify_exit(64)[1] in ("SIGRTMAX", "signal 64")


# -- states: one writer, checked moves ----------------------------------------------------------


def test_every_state_can_reach_stopped_and_stopped_is_final():
    for state in MasterState:
        assert state == MasterState.STOPPED or MasterState.STOPPED in MASTER_TRANSITIONS[state]
    assert MASTER_TRANSITIONS[MasterState.STOPPED] == frozenset()


@pytest.mark.parametrize("table", [MASTER_TRANSITIONS, HANDOFF_TRANSITIONS])
def test_moves_outside_the_table_raise(table):
    for current, allowed in table.items():
        for new in type(current):
            if new == current or new in allowed:
                assert check_move(table, current, new) == new
            else:
                with pytest.raises(BadTransition):
                    check_move(table, current, new)


def test_a_degraded_master_never_goes_back_to_running_in_place():
    # Loading good code is a new image (USR2), which starts again from STARTING.
    assert MasterState.RUNNING not in MASTER_TRANSITIONS[MasterState.DEGRADED]


# -- timers --------------------------------------------------------------------------------------


@given(st.lists(st.floats(0, 100), max_size=50), st.floats(0, 100))
def test_the_timer_heap_pops_exactly_the_due_timers_in_order(whens, now):
    heap = TimerHeap()
    for n, when in enumerate(whens):
        heap.push(when, TimerKind.CHECK, n, n)
    due = list(heap.pop_due(now))
    assert [t.when for t in due] == sorted(w for w in whens if w <= now)
    assert len(heap) == len(whens) - len(due)
    rest = heap.next_deadline()
    assert rest is None or rest > now


def test_paused_timers_come_back():
    heap = TimerHeap()
    heap.push(5.0, TimerKind.KILL, 1, 1)
    paused = heap.pause()
    assert heap.next_deadline() is None
    heap.resume(paused)
    assert heap.next_deadline() == 5.0


# -- the command table ---------------------------------------------------------------------------


@pytest.mark.parametrize("request_, command", [
    ({"cmd": "status"}, Command.STATUS),
    ({"cmd": "wake"}, Command.WAKE),
    ({"cmd": "reload"}, Command.RELOAD),
    ({"cmd": "stop"}, Command.STOP),
    ({"cmd": "stop", "mode": "term"}, Command.STOP),
    ({"cmd": "stop", "mode": "drain"}, Command.DRAIN),
    ({"cmd": "stop", "mode": "leave"}, Command.LEAVE),
    ({"cmd": "cancel", "keys": ["a", "b"]}, Command.CANCEL),
])
def test_requests_become_commands(request_, command):
    assert from_request(request_) == command


@pytest.mark.parametrize("request_", [{}, {"cmd": None}, {"cmd": ["stop"]}, {"cmd": {"a": 1}}, {"cmd": "halt"},
                                      {"cmd": "stop", "mode": ["x"]}, {"cmd": "stop", "mode": "now"},
                                      {"cmd": "cancel"}, {"cmd": "cancel", "keys": []}, {"cmd": "cancel", "keys": "a"},
                                      {"cmd": "cancel", "keys": [1]}])
def test_bad_requests_are_refused_with_a_reason(request_):
    with pytest.raises(BadRequest):
        from_request(request_)


def test_a_signal_and_its_request_are_one_command():
    assert SIGNAL_COMMANDS[signal.SIGQUIT] == from_request({"cmd": "stop", "mode": "drain"})
    assert SIGNAL_COMMANDS[signal.SIGTERM] == from_request({"cmd": "stop"})
    assert SIGNAL_COMMANDS[signal.SIGUSR2] == from_request({"cmd": "reload"})
