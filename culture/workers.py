"""Worker processes that leave interrupts to the main process.

Ctrl-C in a terminal sends SIGINT to the whole process group: the main
process *and* every pool worker. A worker that turned it into a
KeyboardInterrupt would print its own traceback next to the main process's
one-line message. :func:`quiet_worker` (a pool ``initializer``) makes workers
ignore SIGINT and die silently on SIGTERM (the default action): the main
process reports the interrupt once and terminates the pool.
:func:`quiet_pool` also keeps a forkserver (which imports its preload modules
when it starts, in the same process group) from reporting a Ctrl-C of its own,
or the failed start of a worker whose main process has gone.
"""

from __future__ import annotations

import contextlib
import signal
import threading


def quiet_signals() -> None:
    """In a worker process: ignore SIGINT, default action (silent exit) on SIGTERM."""
    for sig, action in ((signal.SIGINT, signal.SIG_IGN), (signal.SIGTERM, signal.SIG_DFL)):
        try:
            signal.signal(sig, action)
        except (ValueError, OSError):  # pragma: no cover - not the main thread of the worker
            pass


def quiet_worker(threads: int | None = 1) -> None:
    """Pool initializer: :func:`quiet_signals`, and ``threads`` torch threads
    (None: leave torch alone)."""
    quiet_signals()
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


@contextlib.contextmanager
def _sigint_ignored():
    """SIGINT ignored in this process for the block (a few milliseconds: the
    start of a forkserver). An ignored signal stays ignored through exec, and
    Python keeps it so, so the forkserver does not turn a Ctrl-C that comes
    while it imports its preload modules into a traceback of its own."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 on /dev/null for the block: a process started
    meanwhile (the forkserver, and the workers it forks) writes nothing on the
    terminal. A worker's exception still reaches the main process (the pool
    sends it back); what goes is the bootstrap traceback of a worker still
    being forked when an interrupted main process has gone."""
    import os
    import sys

    with contextlib.suppress(AttributeError, ValueError, OSError):
        sys.stderr.flush()
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:  # pragma: no cover - no fd 2
        yield
        return
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def quiet_pool(context, processes: int, initializer=quiet_worker, initargs=()):
    """``context.Pool(processes, initializer)`` whose workers (and forkserver)
    leave Ctrl-C and SIGTERM to the main process."""
    if context.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with _sigint_ignored(), _stderr_silenced():
            forkserver.ensure_running()  # returns once the server is spawned, before it imports anything
    return context.Pool(processes, initializer=initializer, initargs=initargs)
