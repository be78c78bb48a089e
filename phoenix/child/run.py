"""Everything that happens inside a forked child: detach from the master's
signals and file descriptors, wait for the master's go-ahead, beat from a
background thread, run the job once, deliver the outcome, and leave through
os._exit (never back into the master's code)."""

from __future__ import annotations

import _thread
import json
import os
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from phoenix.app import JobSpec, decode_params
from phoenix.child import forksafety, output
from phoenix.child.longjobs import (
    PROGRESS_EVERY,
    ForkedCheckpoint,
    Interrupted,
    PoliteStop,
    check_checkpoint,
    progress_value,
)
from phoenix.linux import lineage
from phoenix.linux.clock import SYSTEM
from phoenix.linux.signals import set_child_subreaper, unignore_reserved_signals
from phoenix.linux.title import set_title
from phoenix.linux.untrusted import MAX_JSON_DEPTH, cut_traceback, json_too_deep, visible
from phoenix.wire import heartbeat as protocol

if TYPE_CHECKING:
    # _signal, the C module under signal.py (why: _detach_from_master), has no
    # stub; its functions are signal.py's without the enum wrapping.
    import signal as _signal
else:
    import _signal

# Exit code of a child that never ran a job: no order came (the master died
# before recording the attempt, or discarded a spare child).
EXIT_NO_ORDER = 75
MAX_ERROR_JSON_BYTES = protocol.MAX_MESSAGE_BYTES - 1024  # of a traceback in a message (room for the rest)
# The first line of the error of a job that raised phoenix.Interrupted with no stop asked of it.
SELF_INTERRUPTED = ("the job raised phoenix.Interrupted itself, with no stop asked of it (no SIGTERM reached "
                    "Phoenix's handler)")


@dataclass
class ChildContext:
    """What a running job can ask about itself: `phoenix.current_job()`."""

    job_id: int
    key: str
    attempt: int
    params: Any
    # The attempt's id in the store: unique and increasing per job, so a job
    # can pass it to its own external writes as a fencing token (a write
    # tagged with an older id than one already applied is refused there).
    attempt_id: int | None = None
    # The last checkpoint saved by this job's attempts (phoenix.checkpoint()),
    # None if there is none yet: a job resumes from here.
    checkpoint: Any = None


class _Runtime:
    """The live state of this child process (one per process, set after fork)."""

    def __init__(self, context: ChildContext, sender: protocol.Sender, interval: float,
                 orphan: tuple[float, float] | None = None, capture: output.Capture | None = None,
                 outbox: str = "", delivery: float = 0.0) -> None:
        self.context = context
        self.sender = sender
        self.interval = interval
        self.orphan = orphan  # (seconds without a master, kill grace): shared store only
        self.capture = capture  # the job's output file, looked at once per beat
        self.outbox, self.delivery = outbox, delivery  # where, and after how long, a checkpoint goes to disk
        self.progress = 0
        self.seq = 0
        self.final_seq = 0
        self.pid = os.getpid()  # the job's own process: a copy it forks shares its numbering and connection
        self.lock = _thread.allocate_lock()
        self.reported: list[Any] | None = None  # phoenix.progress()'s latest [done, total, note]
        self.reported_sent: list[Any] | None = None  # the latest one a message carried
        self.report_due = 0.0  # monotonic: when the job's thread may send a changed one itself
        self.stop = PoliteStop()
        # One checkpoint at a time: the thread that waits for an ack reads every reply on the connection.
        self.checkpoint_lock = _thread.allocate_lock()

    def next_message(self, kind: str, **body: Any) -> bytes:
        return self.numbered(kind, **body)[1]

    def numbered(self, kind: str, **body: Any) -> tuple[int, bytes]:
        """(its sequence number, the message): numbered under the lock the beat thread takes too."""
        with self.lock:
            job, attempt = self.context.job_id, self.context.attempt
            if kind not in protocol.FINAL_KINDS:
                self.seq += 1
                return self.seq, protocol.encode(job, attempt, kind, self.seq, self.progress, **body)
            # The last word on how far it got, kept with the attempt: on the final when both fit.
            news = self.reported if self.reported is not self.reported_sent else None
            ahead, final = protocol.encode_final(job, attempt, kind, self.seq + 1, self.progress, news, **body)
            if ahead is not None:
                # Too large to ride on the final: sent first, on its own (numbered before the final, so
                # the master keeps it as the latest). Only once, and never in the final's way: if the
                # connection takes nothing now, the progress the master last heard stays the attempt's.
                try:
                    self.sender.send_once(ahead)
                except OSError:
                    pass  # the final's delivery meets the same error, and has its own way out (the outbox)
            if news is not None:
                self.reported_sent = news
            self.seq += 1 if ahead is None else 2
            self.final_seq = self.seq
            return self.seq, final

    def beat_forever(self) -> None:
        # The first beat is due one interval in (the master's first check
        # comes later still, at heartbeat_timeout): a job shorter than that
        # sends none. Jittered, so that children forked together do not beat
        # in lockstep.
        time.sleep(protocol.jitter(self.interval / 2, self.interval))
        reported = -1
        while True:
            kind = "progress" if self.progress != reported else "beat"
            reported = self.progress
            news = self.reported
            if news is not self.reported_sent:  # phoenix.progress() since the last message that carried it
                self.reported_sent = news
                message = self.next_message("progress", **{protocol.PROGRESS: news})
            else:
                message = self.next_message(kind)
            delay = 0.01
            unsent_since = SYSTEM.monotonic()
            # Keep this beat (and its number) until it is sent: the master may be
            # gone for a while (a crash, then a new one binds the path); none of it is fatal.
            while not self.sender.send_once(message):
                if self.capture is not None:
                    self.capture.check()
                if self.orphan is not None and SYSTEM.monotonic() - unsent_since >= self.orphan[0]:
                    self.end_orphaned()
                time.sleep(protocol.jitter(delay, 2 * delay))
                delay = min(delay * 2, self.interval)
            if self.capture is not None:
                self.capture.check()
            time.sleep(self.interval)

    def report(self, value: list[Any]) -> None:
        """phoenix.progress(): kept as the latest; sent now if none was for a
        while (else the next beat, or a later call, carries it)."""
        if os.getpid() != self.pid:
            return  # a forked copy (a pool worker): only the job's own process reports, on its connection
        self.reported = value
        now = time.monotonic()
        if now >= self.report_due:
            self.report_due = now + PROGRESS_EVERY
            self.reported_sent = value
            self.sender.send_once(self.next_message("progress", **{protocol.PROGRESS: value}))

    def save(self, obj: Any) -> None:
        """phoenix.checkpoint(): on the master's journal (acknowledged) or in
        the outbox when this returns; until then, not returned."""
        if os.getpid() != self.pid:
            # A forked copy numbers its messages from the job's count at the fork: its checkpoint would
            # take a number the job's own next one takes too, and one of them would be dropped unseen.
            raise ForkedCheckpoint("phoenix.checkpoint() was called in a process the job forked "
                                   f"(pid {os.getpid()}; the job is pid {self.pid}): only the job's own process "
                                   "saves its place; hand the workers' results back to it and checkpoint there")
        size = len(check_checkpoint(obj))  # one line naming the fix, raised in the job
        if size > protocol.MAX_CHECKPOINT_BYTES:  # (before it takes a sequence number the master would miss)
            raise protocol.CheckpointTooLarge(size)
        with self.checkpoint_lock:
            self._round_trip(obj)
        self.context.checkpoint = obj
        self.stop.raise_if_due()  # a TERM that came while it was being saved

    def _round_trip(self, obj: Any) -> None:
        seq, message = self.numbered(protocol.CHECKPOINT, **{protocol.SAVED: obj})
        self.stop.saving = True
        try:
            said = False
            while not self.sender.round_trip(message, seq, time.monotonic() + self.delivery):
                if _write_outbox_file(checkpoint_outbox_path(self.outbox, self.context.job_id, self.context.attempt),
                                      message, quiet=said):
                    break
                said = True
        finally:
            self.stop.saving = False

    def end_orphaned(self) -> None:
        """No master has heard from this child for so long that another host
        may soon recover its job: end this attempt (the whole process group,
        as the master would) rather than run beside the re-run."""
        assert self.orphan is not None
        waited, grace = self.orphan
        _say(f"phoenix: no master reachable for {waited:.1f}s; ending job {visible(self.context.key)} attempt "
             f"{self.context.attempt} before another master runs it again")
        os.killpg(os.getpid(), signal.SIGTERM)
        time.sleep(grace)
        os.killpg(os.getpid(), signal.SIGKILL)


_runtime: _Runtime | None = None


def heartbeat() -> None:
    """Report progress from job code. A job with `stall_timeout` is killed when
    it has not called this for that long. Outside a Phoenix child it does nothing."""
    if _runtime is not None:
        _runtime.progress += 1


def progress(done: float, total: float | None = None, note: str | None = None) -> None:
    """Say how far the job is (`done` of `total`, and a short note): shown by
    `phoenix status` and `phoenix show`, in the metrics and on the timeline,
    and kept with the attempt. Cheap in a tight loop (the latest value wins;
    it travels with the beats); counts as a heartbeat() for `stall_timeout`.
    Outside a Phoenix child it does nothing."""
    value = progress_value(done, total, note)
    if _runtime is not None:
        _runtime.progress += 1
        _runtime.report(value)


def checkpoint(obj: Any) -> None:
    """Save where the job is (JSON, at most 64 KiB): when this returns it is
    durable, and the next attempt of this job, after any interruption, starts
    with it as `phoenix.current_job().checkpoint`. One round trip to the
    master on the child's connection. Outside a Phoenix child it does nothing."""
    if _runtime is not None:
        _runtime.save(obj)
    else:
        check_checkpoint(obj)


def stopping() -> bool:
    """Whether the job has been asked to stop (SIGTERM: `phoenix stop`, a
    drain's time running out, a lease running out); phoenix.Interrupted is
    raised in the job at that moment too. False outside a Phoenix child."""
    return _runtime is not None and _runtime.stop.asked


def current_job() -> ChildContext | None:
    """The running job's id, key, attempt, parameters and `attempt_id` (a
    fencing token for the job's own external writes), from job code; None
    outside a Phoenix child."""
    return _runtime.context if _runtime is not None else None


def reset_signal_handlers() -> None:
    """Undo the master's (and the app's) signal handlers after fork: the
    wake-up fd goes, every handler is the default again, SIGPIPE ignored as
    Python sets it at start-up. The mask is the caller's to set."""
    signal.set_wakeup_fd(-1)
    # _signal, the C module under signal.py: its wrappers turn every number and
    # handler into enum members, which touches (and so, after fork, copies)
    # several times more memory than resetting the handlers themselves.
    for signum in range(1, signal.NSIG):
        try:
            # Python's own table (no system call): only the handlers the master
            # (or the app, at import) installed need resetting.
            handler = _signal.getsignal(signum)
            if handler not in (_signal.SIG_DFL, None) and signum != signal.SIGPIPE:
                _signal.signal(signum, _signal.SIG_DFL)
        except (OSError, ValueError):
            pass  # a number with no signal behind it, or one Python may not touch
    _signal.signal(signal.SIGPIPE, _signal.SIG_IGN)
    unignore_reserved_signals()  # those Python cannot reach (a master started by posix_spawn has them ignored)


def _detach_from_master(keep_fds: set[int]) -> None:
    os.setpgid(0, 0)  # own process group: TERM/KILL reach the job's own children too
    reset_signal_handlers()
    _signal.pthread_sigmask(signal.SIG_SETMASK, ())
    _close_fds_except(keep_fds)


def _leave_server(server_fds: tuple[int, ...]) -> None:
    """A child of the fork server: the server reset the master's handlers and
    closed the master's fds once for all its children; here only its own two
    fds go, and what it blocks (SIGCHLD for its signalfd, the rest so that no
    job's signal takes it down) is unblocked. Its parent already put it in a
    process group of its own."""
    for fd in server_fds:
        os.close(fd)
    _signal.pthread_sigmask(signal.SIG_SETMASK, ())


def _close_fds_except(keep_fds: set[int]) -> None:
    """Close every fd the master held (sockets, epoll, pipes, the pidfile lock,
    the journal) by number: the Python objects that own them are never used
    again in this process, which only ever leaves through os._exit. One
    close_range(2) per gap between kept fds (os.closerange uses it), instead
    of listing /proc/self/fd."""
    low = 3
    for fd in sorted(fd for fd in keep_fds if fd >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def _hand_over(sender: protocol.Sender, outbox: Path, context: ChildContext, final: bytes, delivery: float) -> None:
    """Until a master acknowledges the outcome (it is in the journal then) or
    it is on disk in the outbox: this child may be its only holder (the
    master's journal full, say), so it never exits before. Each round offers
    it to a master for `delivery` seconds (one that takes over this child
    hears from it within a second), then tries the outbox again."""
    assert _runtime is not None
    said = False
    while not sender.deliver(final, _runtime.final_seq, SYSTEM.monotonic() + delivery):
        if _write_outbox(outbox, context.job_id, context.attempt, final, quiet=said):
            return
        said = True
        set_title(f"phoenix: job {visible(context.key)} attempt {context.attempt}: holding its outcome "
                  "(no master took it, and the outbox cannot be written)")


def checkpoint_outbox_path(outbox: str, job_id: int, attempt: int) -> str:
    """Where an attempt's latest unacknowledged checkpoint waits for a master
    (each replaces the one before; recorder.py takes it with the attempt's end)."""
    return f"{outbox}/{job_id}.{attempt}.checkpoint.json"


def _write_outbox(outbox: Path, job_id: int, attempt: int, data: bytes, quiet: bool = False) -> bool:
    return _write_outbox_file(f"{outbox}/{job_id}.{attempt}.json", data, quiet)


def _write_outbox_file(final: str, data: bytes, quiet: bool = False) -> bool:
    """An outcome (or a checkpoint) on disk when no master acknowledged it:
    the next master finds it here, and the job is not run again (or resumes
    from it). On disk means synced: the file's data before its rename, the
    directory's new name after it (the child exits next, and nobody else
    holds this outcome). False: not written. Plain os calls on str paths:
    pathlib's objects cost more than the writing."""
    outbox, _slash, name = final.rpartition("/")
    temporary = f"{outbox}/.{name}.{os.getpid()}.tmp"
    try:
        # O_EXCL | O_NOFOLLOW: no link planted at this name is followed. One left
        # by an earlier process of the same pid (killed while writing) is removed first.
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(temporary, flags, 0o600)
        except FileExistsError:
            os.unlink(temporary)
            fd = os.open(temporary, flags, 0o600)
        try:
            written = 0
            while written < len(data):
                written += os.write(fd, data[written:])
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, final)
        directory = os.open(outbox, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError as exc:
        if not quiet:  # (said once per child: it tries again every few seconds)
            _say(f"phoenix: cannot write outcome to {final}: {exc} (this child keeps it, and tries again)")
        try:
            os.unlink(temporary)
        except OSError:
            pass
        return False
    return True


ORDER_HEADER = 8  # bytes of big-endian length before an order's JSON


def order(job_id: int, key: str, attempt: int, target: str, params: str, heartbeat_interval: float,
          delivery_timeout: float, attempt_id: int | None = None, orphan: tuple[float, float] | None = None,
          output_to: tuple[str, int] | None = None, checkpoint: str | None = None) -> bytes:
    """What the master writes to a waiting child once the attempt is recorded:
    the job to run and the settings to run it with (a spare child may have
    been forked before a reload changed them). Length first: the child must
    not need EOF, which a process forked by app code in a master thread
    would hold back by keeping a copy of the pipe's write end. `orphan`
    (shared store only): (seconds without any master, kill grace) after which
    the child ends its own attempt (see leases.orphan_after). `output_to`:
    (directory, byte limit per attempt) of the job's own output (output.py).
    `checkpoint`: the job's last saved checkpoint (JSON text), if any."""
    payload = json.dumps({"job": job_id, "key": key, "attempt": attempt, "target": target, "params": params,
                          "interval": heartbeat_interval, "delivery": delivery_timeout,
                          "attempt_id": attempt_id, "orphan": orphan, "output": output_to,
                          "checkpoint": checkpoint}).encode()
    return len(payload).to_bytes(ORDER_HEADER, "big") + payload


def _read_order(fd: int) -> dict[str, Any] | None:
    """The order, or None at EOF before a whole one: the master died or
    discarded this child. One read takes a whole order written at once (up
    to the pipe's buffer); a longer one comes in more."""
    chunks, size, got = [], 0, 0
    while not size or got < ORDER_HEADER + size:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        got += len(chunk)
        if not size and got >= ORDER_HEADER:
            size = int.from_bytes(b"".join(chunks)[:ORDER_HEADER], "big") or -1
    os.close(fd)
    if size <= 0 or got != ORDER_HEADER + size:
        return None
    order: dict[str, Any] = json.loads(b"".join(chunks)[ORDER_HEADER:].decode())  # str: no encoding guess
    return order


def run(
    *,
    order_fd: int,
    resolve: Callable[[str], JobSpec],
    socket_path: str,
    outbox: Path,
    keep_fds: set[int],
    server_fds: tuple[int, ...] | None = None,
) -> NoReturn:
    """The whole life of a child after fork. Never returns.

    It detaches, then waits for its order. The master writes the order only
    after recording this child's pid, so a new master never runs the job
    again beside a child it does not know. A spare child, forked ahead of
    need, waits here until a job comes; EOF instead of an order means exit
    without running anything. `server_fds`: forked by the fork server (which
    holds these fds), not by the master."""
    global _runtime
    code = 70
    capture: output.Capture | None = None
    try:
        if server_fds is None:
            _detach_from_master(keep_fds | {order_fd})
        else:
            _leave_server(server_fds)
        set_child_subreaper()  # what the job daemonises stays below us, to end with the attempt
        set_title("phoenix: spare child, waiting for a job")
        got = _read_order(order_fd)
        if got is None:
            os._exit(EXIT_NO_ORDER)
        saved = got.get("checkpoint")
        context = ChildContext(got["job"], got["key"], got["attempt"], decode_params(got["params"]),
                               got.get("attempt_id"), None if saved is None else json.loads(saved))
        set_title(f"phoenix: job {visible(context.key)} attempt {context.attempt}")  # a NUL would raise
        _stdin_from_devnull()
        if got.get("output"):
            capture = _capture_output(got["output"], context, streams_prepared=server_fds is not None)
        try:
            forksafety.after_fork()  # thread pools and numpy's random state the app set up at import
        except Exception:  # noqa: BLE001 - a repair that fails leaves the job as it was: it still runs
            traceback.print_exc()  # in the attempt's output
        sender = protocol.Sender(socket_path)
        sender.connect()
        orphan = got.get("orphan")
        _runtime = _Runtime(context, sender, got["interval"], (orphan[0], orphan[1]) if orphan else None, capture,
                            str(outbox), got["delivery"])
        # _thread, not threading.Thread: start() waits for the thread to run
        # (about 1 ms), and this process only ever leaves through os._exit.
        _thread.start_new_thread(_runtime.beat_forever, ())
        # After the first beats start: a job module the master imported only
        # after this child was forked is imported here, and may take a while.
        spec = resolve(got["target"])
        job_pid = os.getpid()
        _runtime.stop.install()  # from here, TERM is a polite stop (longjobs.PoliteStop)
        code, final = _perform(spec, context)
        _runtime.stop.job_over()
        if os.getpid() != job_pid:
            _leave_as_a_fork_of_the_job(code)
        _flush_std_streams()  # what the job printed is in its output before its outcome is recorded
        if capture is not None:
            capture.release()  # the job is over: the wait for an ack holds no file open on the state directory
        # On the same connection, after every beat: the master acknowledges it
        # once it is in the journal. Only without an ack (the master being
        # replaced too long, or gone) does the outcome go to a file.
        _hand_over(sender, outbox, context, final, got["delivery"])
    except BaseException:  # noqa: BLE001 - a child must never unwind into the master's code
        traceback.print_exc()
    finally:
        try:
            lineage.end_own_descendants()
            _flush_std_streams()
            if capture is not None:
                capture.finish()
        finally:
            os._exit(code)


def _leave_as_a_fork_of_the_job(code: int) -> NoReturn:
    """A process the job made with os.fork() came back out of the job
    function (returned or raised): only the job's own process reports the
    attempt's outcome, so this copy leaves without one, and says so in the
    attempt's output. (Its result was taken for the job's, and its exception
    failed a job whose own process finished.)"""
    print(f"phoenix: process {os.getpid()}, forked by the job, returned from the job function: it exits without "
          "reporting an outcome (only the job's own process does; end a forked process with os._exit)",
          file=sys.stderr)
    _flush_std_streams()
    os._exit(code)


def _stdin_from_devnull() -> None:
    """A job reads nothing of its master's: not a terminal (its process group
    is not the terminal's, so a read would stop it), nor whatever file a
    supervisor left on fd 0."""
    null = os.open(os.devnull, os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    os.set_inheritable(0, True)  # the job's own subprocesses read it too


def _say(line: str) -> None:
    """A line of Phoenix's own, from a job child: where its master's log goes
    (the stderr the child had), not into the job's output file, which may be
    on the disk that just filled up, and is the job's, not the operator's."""
    stream = output.log_stream() or sys.stderr
    try:
        print(line, file=stream, flush=True)
    except (OSError, ValueError):
        pass  # nowhere to say it: the outcome is still kept, and offered again


def _flush_std_streams() -> None:
    for stream in (sys.stdout, sys.stderr):
        if stream is not None:
            try:
                stream.flush()
            except (OSError, ValueError):
                pass  # closed by the job, or its disk is full: nothing more to keep


def _capture_output(where: list[Any], context: ChildContext, streams_prepared: bool) -> output.Capture | None:
    """The job's stdout and stderr go to its attempt's file from here on; the
    `logging` records of the job still go where the master's do (formatted,
    one record each), through the stderr this child had."""
    root, max_bytes = str(where[0]), int(where[1])
    capture = output.Capture.start(root, context.job_id, context.attempt, max_bytes, streams_prepared)
    if capture is None:
        return None
    log_module = sys.modules.get("phoenix.log")  # never imported here: only if logging is set up already
    if log_module is not None:
        stream = output.log_stream()
        if stream is not None:
            log_module.keep_on_stream(stream)
    return capture


def _fitted(text: str) -> str:
    """An error text cut (in the middle) to fit one message, whatever JSON makes of its characters."""
    return cut_traceback(text, json_bytes=MAX_ERROR_JSON_BYTES)


def _perform(spec: JobSpec, context: ChildContext) -> tuple[int, bytes]:
    """Run the job; (exit code, final message)."""
    assert _runtime is not None
    try:
        result = spec.func(context.params)
        _runtime.stop.job_over()
    except Interrupted as exc:
        _runtime.stop.job_over()
        trace = "".join(traceback.format_exception(exc))
        if not _runtime.stop.asked:
            # No TERM came: the job raised it of its own accord, an error like any other (no stop to blame).
            return 1, _runtime.next_message("failed", error=_fitted(
                f"{SELF_INTERRUPTED}: counted as the job's own error, as any exception is\n{trace}"))
        # Let through by the job after a polite stop: `interrupted` if its
        # master asked (no retry used); the checkpoint it saved is where the next attempt starts.
        return 1, _runtime.next_message("failed", error=_fitted(trace), **{protocol.INTERRUPTED: True})
    except SystemExit as exc:
        if exc.code in (0, None):
            result = None
        else:
            return 1, _runtime.next_message("failed", error=_fitted(f"the job called sys.exit({exc.code!r})"))
    except BaseException as exc:  # noqa: BLE001 - any failure of the job is its outcome
        # Within one record, however many of its characters JSON escapes (a NUL, a lone surrogate: 6 bytes each).
        return 1, _runtime.next_message("failed", error=_fitted("".join(traceback.format_exception(exc))))
    try:
        final = _runtime.next_message("finished", result=result)
        if json_too_deep(final.decode(), MAX_JSON_DEPTH + 1):  # (+1: the message's own object)
            raise RecursionError
        return 0, final
    except RecursionError:
        return 1, _runtime.next_message(
            "failed",
            error=(f"the job's result nests more than {MAX_JSON_DEPTH} levels of lists and dicts, deeper than "
                   "Phoenix keeps: return a flatter value"),
        )
    except protocol.MessageTooLarge as exc:  # (a ValueError: before the JSON line below, which it is not)
        return 1, _runtime.next_message("failed", error=str(exc))
    except (TypeError, ValueError) as exc:
        return 1, _runtime.next_message(
            "failed",
            error=f"the job's result is not JSON ({exc}); return dicts, lists, strings, numbers, booleans or None",
        )
