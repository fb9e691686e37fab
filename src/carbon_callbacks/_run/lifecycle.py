"""How an open run ends when the process does: a scheduler's SIGTERM, Ctrl-C, or the interpreter's exit.

Schedulers preempt with SIGTERM, then SIGKILL after a grace period (SLURM's `KillWait`, Kubernetes'
`terminationGracePeriodSeconds`: 30 s by default). While a run is open, one handler per process for SIGTERM and
SIGINT composes with the handler that was there (as Lightning's `_HandlersCompose` does) and never changes what
the process does with the signal:

- where the handler before it is Python code (Lightning's, which turns SIGTERM into an exception at the next
  batch; the interpreter's Ctrl-C handler, which raises `KeyboardInterrupt`; the user's), each open run writes its
  files now and notes the signal, so the exception that follows ends it as `interrupted`; then that handler runs;
- where it is the default action, which ends the process without Python's cleanup (the Hugging Face Trainer, Keras
  and JAX install none for SIGTERM), each open run ends now as `interrupted` (its last interval, totals, loggers'
  last row where the adapter has one, `report.md`), then the default action is put back and the signal raised
  again, so the process dies of it as it would have;
- where the signal is ignored, the runs write their files and nothing else happens.

A signal that arrives while the main thread is inside a run's own bookkeeping (microseconds per step) is handled
when that returns, so a run is never ended half-updated. At the interpreter's exit, a run still open ends
`interrupted` if a signal came, else as its adapter decides (`failed`: its training raised past the framework's
end hook). The handlers are installed only from the main thread, and removed when the last run ends.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
import weakref

log = logging.getLogger(__name__)

#: The signals a run ends on: the scheduler's preemption and Ctrl-C.
SIGNALS = (signal.SIGTERM, signal.SIGINT)
MAIN_THREAD = threading.main_thread().ident

_runs: weakref.WeakSet = weakref.WeakSet()  # open runs (RunSession objects)
_previous: dict[int, object] = {}  # signal -> the handler ours replaced
_atexit_registered = False


def attach(run) -> None:
    """Ends `run` with the process from now on (see the module docstring): call when it starts."""
    global _atexit_registered
    _runs.add(run)
    if not _atexit_registered:
        atexit.register(_at_exit)
        _atexit_registered = True
    if threading.current_thread() is not threading.main_thread():
        log.debug("carbon-callbacks: a run started off the main thread; no signal handler is installed")
        return
    for signum in SIGNALS:
        current = signal.getsignal(signum)
        if current is _handle or current is None:  # ours already, or a handler not installed from Python
            continue
        try:
            signal.signal(signum, _handle)
        except (ValueError, OSError):  # pragma: no cover - not allowed here (an embedded interpreter)
            continue
        _previous[signum] = current


def detach(run) -> None:
    """Stops watching `run` (it ended); the last run to end puts the previous handlers back."""
    _runs.discard(run)
    if _runs or threading.current_thread() is not threading.main_thread():
        return
    for signum, previous in list(_previous.items()):
        if signal.getsignal(signum) is _handle:  # untouched since: put the previous one back
            signal.signal(signum, previous)
        _previous.pop(signum, None)


def _handle(signum: int, frame) -> None:
    """The handler: each open run takes the signal (now, or when its bookkeeping returns)."""
    previous = _previous.get(signum, signal.SIG_DFL)
    busy = [run for run in list(_runs) if run.defer_signal(signum, frame)]
    if busy:
        return  # handled by the last run to leave its bookkeeping (`deliver`)
    deliver(signum, frame, previous)


def deliver(signum: int, frame, previous: object = None) -> None:
    """Hands the signal to every open run, then does what the previous handler would have done."""
    if previous is None:
        previous = _previous.get(signum, signal.SIG_DFL)
    ends = previous == signal.SIG_DFL
    for run in list(_runs):
        try:
            run.take_signal(signum, ends=ends)
        except Exception as err:  # a run that cannot end must not keep the signal from the process
            log.warning("carbon-callbacks: ending the run on signal %d failed: %s", signum, err)
    if ends:
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
    elif callable(previous):
        previous(signum, frame)


def _at_exit() -> None:
    for run in list(_runs):
        try:
            run.end_at_exit()
        except Exception as err:  # at exit, nothing is left to report to but the log
            log.warning("carbon-callbacks: ending the run at exit failed: %s", err)


def reset() -> None:
    """Detaches every run without ending it and puts the previous handlers back (for tests that leave runs open)."""
    for run in list(_runs):
        detach(run)
