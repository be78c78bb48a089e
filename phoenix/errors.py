"""Every exception Phoenix defines derives from `PhoenixError` and from one
category, which says what the `phoenix` command does with it (one line on
stderr, never a traceback, and this exit code):

    PhoenixError
    ├── UsageError    exit 2: bad input or configuration; the message says what to change
    │   ├── ConfigError, BadDuration, BadCursor, KeyRefused      (config, linux.untrusted, rules, cli)
    │   ├── AppError, MessageTooLarge, MetricsError              (the app, its jobs, --metrics)
    │   ├── BadRequest                                           (a control request the master refuses)
    │   └── BatchRefused                                         (a batch name closed, unknown or malformed)
    ├── StateError    exit 2: the state directory or the store is damaged or unfit; nothing is written over it
    │   ├── StateDirError, SocketBusy, OutboxUnreadable, NoJournal
    │   └── JournalError
    │       └── SchemaMismatch, WeakDurability, NodeTaken        (the PostgreSQL store)
    ├── Conflict      exit 1: well formed, but at odds with what is recorded or running
    │   └── AlreadyRunning, KeyConflict, RetryRefused
    ├── Unavailable   exit 1: the store or the master cannot be reached now; trying again may work
    │   ├── StoreUnavailable, NoPidfile
    │   └── ControlError
    │       └── ForeignServer, MalformedReply, CutOff, NoAnswer (delivered, unanswered: exit 4)
    └── InternalError a rule of Phoenix's own was broken: a bug, shown with its traceback
        └── BadTransition

Each class also keeps the standard base that code catches it by (an
`OSError` for StoreUnavailable, a `ValueError` for ConfigError, ...), so
`except OSError` still sees a store outage. Catch a category to handle a
kind of failure; catch `PhoenixError` for all of them. docs/troubleshooting.md
("Errors and exit codes") is the user's page of this tree. (A BaseException
that is not an Exception is control flow, not an error, as KeyboardInterrupt
is: it stays outside the tree, so that `except Exception` never catches it.)

This module imports nothing: every floor of the package may raise these.
"""

from __future__ import annotations


class PhoenixError(Exception):
    """The root of every exception Phoenix defines."""


class UsageError(PhoenixError):
    """Bad input or configuration (a flag, a setting, a job's parameters, an
    app that cannot be loaded): exit 2, the message names what to change."""


class StateError(PhoenixError):
    """The state directory or the store is damaged, foreign or unfit: exit 2;
    Phoenix leaves it as it is and the message names the way out."""


class Conflict(PhoenixError):
    """A well-formed request at odds with what is recorded or running (a
    master already running, a key that names another job): exit 1."""


class Unavailable(PhoenixError):
    """The store or the master cannot be reached, or answers nonsense: exit 1;
    the same command may work later."""


class InternalError(PhoenixError):
    """Phoenix broke one of its own rules: a bug to report, never caught by
    the command (its traceback is what the report needs)."""


CATEGORIES: tuple[type[PhoenixError], ...] = (UsageError, StateError, Conflict, Unavailable, InternalError)
