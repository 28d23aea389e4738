"""Signals that stop training cleanly, and the exit codes they leave.

Ctrl-C (SIGINT), SIGTERM (what `kill`, systemd and Slurm's preemption send), SIGUSR1 (the warning
signal Slurm sends before a time limit with `--signal=USR1@90`) and SIGUSR2 (submitit's default
warning signal) all ask the loop to stop at the next optimizer step; the trainer then saves its
resume point and raises Interrupted. A second Ctrl-C aborts at once (the last resume point on disk
stays valid: every write is atomic); any other repeated signal is ignored, since a stop is already
on its way.

Exit codes follow the shell's 128 + signal number: 130 for Ctrl-C, 143 for SIGTERM, 138 for SIGUSR1,
140 for SIGUSR2. Under submitit (laser_tool/launch/base.py) a preemption signal instead ends in a requeue.

`StopFlag` is the one signal guard: the trainer's loop polls `.set`; a study (launch/) passes
`on_stop` to tell its running steps, and the signals it owns.
"""
import contextlib
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)


class Interrupted(KeyboardInterrupt):
    """Raised once the resume point is saved. A KeyboardInterrupt, so callers that stop on Ctrl-C
    stop here too; `exit_code` is what the process should exit with."""

    def __init__(self, signum=signal.SIGINT, message=""):
        super().__init__(message)
        self.signum = signal.Signals(signum)
        self.exit_code = 128 + int(self.signum)

    @property
    def preempted(self) -> bool:
        """True for the signals a scheduler sends (everything but Ctrl-C)."""
        return self.signum != signal.SIGINT


def exit_code(exc: BaseException) -> int:
    """The process exit code for an interruption (130 for a plain KeyboardInterrupt)."""
    return getattr(exc, "exit_code", 130)


def signal_name(signum) -> str:
    return "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name


class StopFlag:
    """While active, the stop signals set `.set` (and `.signum`, the first one) instead of killing, and
    call `on_stop()` once. A second Ctrl-C raises KeyboardInterrupt (abort now); any other repeated
    signal is ignored, since a stop is already on its way.

    Guards nest (a serial study's around the trainer's): a guard entered while an outer one has already
    caught a signal starts stopped, so a SIGTERM that arrives while a study is starting a training reaches
    that training, which stops at its first step instead of running all its epochs."""

    _active = []  # the guards entered in this process, outermost first

    def __init__(self, signals=STOP_SIGNALS, on_stop=None):
        self.set = False
        self.signum = signal.SIGINT  # what a test's simulated stop (stop.set = True) counts as
        self._signals, self._on_stop = signals, on_stop
        self._old = {}

    def __enter__(self):
        pending = next((g for g in StopFlag._active if g.set), None)
        if pending is not None:
            self.set, self.signum = True, pending.signum
        StopFlag._active.append(self)
        for s in self._signals:
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals stay with whoever owns them
                break
        return self

    def _handle(self, signum, frame):
        if self.set:
            if signum == signal.SIGINT:
                raise KeyboardInterrupt  # Ctrl-C while stopping: abort now
            return
        self.set, self.signum = True, signal.Signals(signum)
        if self._on_stop is not None:
            self._on_stop()

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
        self._old = {}
        StopFlag._active.remove(self)
        if self.set:  # what the inner guard caught, the outer ones know too
            for g in StopFlag._active:
                if not g.set:
                    g.set, g.signum = True, self.signum


@contextlib.contextmanager
def sigterm_raises():
    """While active, SIGTERM raises Interrupted(SIGTERM) where the program is, so a verb with no resume
    point (reduce, export, ...) ends in one line and exit 143 instead of dying silently; its outputs are
    written whole or not at all (atomic writes, debris cleared next time). Off the main thread: no-op."""
    def stop(signum, frame):
        raise Interrupted(signum)
    try:
        old = signal.signal(signal.SIGTERM, stop)
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)
