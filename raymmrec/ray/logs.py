"""What a Ray command prints: our processes' lines, without Ray's internal noise (``--verbose``: all of it).

Ray echoes every Ray process's stdout/stderr to the driver when ``ray.init(log_to_driver=True)``.
Besides our own lines (the workers' epoch lines, the data task's warnings) a Ray Train run then
shows output of Ray's helper processes that says nothing about the run: the ``PreemptionWatcher``
``core_worker.cc`` error line at every start, the ``DatasetManager``'s ``RayDeprecationWarning``
about ``ExecutionOptions.exclude_resources``, and on a busy machine 30-line tracebacks of lookups
that time out and are retried (the ``PlacementGroupCleaner``'s ``Internal KV Get failed``, the
controller's ``Failed to send resource request``).

So a command starts or joins Ray with ``log_to_driver=False`` (``--verbose``: ``True``, Ray's
output as Ray prints it), and our own lines travel on a channel of their own, built on public
Ray API only:

* :class:`DriverLines` (driver): a :class:`ray.util.queue.Queue` and a thread that prints what
  arrives on it to the driver's stdout / stderr; :meth:`DriverLines.close` prints the rest.
* :func:`lines_to_driver` (our data task, Ray Train's rank 0): while active, :data:`worker_stdout`
  and, in the task, ``sys.stdout`` / ``sys.stderr`` (so ``print``, warnings, tqdm) send each
  complete line to the queue. Not a Train worker's ``sys.stderr``: Ray's own loggers there write
  to whatever it is at the time (Ray Data's "Progress bars disabled" notice, per-report lines).
  Without a queue, or once it is gone, the lines go to the process's own streams.

Errors need no channel: Ray Train raises a worker's error from ``TorchTrainer.fit`` on the driver,
and ``ray.get`` a task's. A Train worker's error carries where that worker's log is
(:func:`note_worker_log`), and the driver turns Ray Train's ``WorkerGroupError`` (every failed
rank's exception, one Ray-formatted traceback each) into one line naming the rank, the error and
that log (:func:`worker_failure`).
"""

from __future__ import annotations

import io
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from typing import Any, TextIO

from raymmrec.errors import UserError, error_message

STDOUT, STDERR = "stdout", "stderr"


class LineStream(io.TextIOBase):
    """A text stream that puts each complete line on the driver's queue as ``(name, line)``.

    Without a queue (or after a failed put: the queue is gone) it writes to ``fallback()``. A
    carriage return starts the line again (a progress bar's redraws send only its last state).
    """

    def __init__(self, name: str, fallback: Callable[[], TextIO | None]) -> None:
        super().__init__()
        self.name = name
        self.fallback = fallback
        self.queue: Any = None
        self._buf = ""
        self._lock = threading.Lock()

    def writable(self) -> bool:
        return True

    def isatty(self) -> bool:
        return False

    def write(self, text: str) -> int:
        if self.queue is None:
            self._write_fallback(text)
            return len(text)
        with self._lock:
            self._buf += text
            *lines, self._buf = self._buf.split("\n")
            self._buf = self._buf.rsplit("\r", 1)[-1] if "\r" in self._buf.rstrip("\r") else self._buf
        for line in lines:
            line = line.rstrip("\r")
            self._put(line.rsplit("\r", 1)[-1])
        return len(text)

    def flush(self) -> None:  # a partial line waits for its end (or for end())
        if self.queue is None:
            stream = self.fallback()
            if stream is not None:
                stream.flush()

    def end(self) -> None:
        """Send a pending partial line and go back to the fallback stream."""
        with self._lock:
            rest, self._buf = self._buf.rstrip("\r"), ""
        if rest and self.queue is not None:
            self._put(rest)
        self.queue = None

    def _put(self, line: str) -> None:
        try:
            self.queue.put_nowait((self.name, line))
        except Exception:  # the driver's queue is gone (driver exited): print here instead
            self.queue = None
            self._write_fallback(line + "\n")

    def _write_fallback(self, text: str) -> None:
        stream = self.fallback()
        if stream is not None:
            stream.write(text)
            stream.flush()


#: This process's stdout for our lines (``print(..., file=worker_stdout)``): the driver's stdout
#: inside :func:`lines_to_driver`, else the process's own. Not ``sys.stdout``: Ray Train's workers
#: patch ``print`` to log (a second copy of) every line printed to ``sys.stdout``.
worker_stdout = LineStream(STDOUT, lambda: sys.__stdout__)
worker_stderr = LineStream(STDERR, lambda: sys.__stderr__)


@contextmanager
def lines_to_driver(queue: Any, *, redirect: bool = True) -> Iterator[None]:
    """(Ray task or worker) Send :data:`worker_stdout`'s lines and, with ``redirect``, all of
    ``sys.stdout`` / ``sys.stderr`` to the driver's ``queue`` while active (``None``: leave the
    output as it is)."""
    if queue is None:
        yield
        return
    worker_stdout.queue = worker_stderr.queue = queue
    try:
        if redirect:
            with redirect_stdout(worker_stdout), redirect_stderr(worker_stderr):
                yield
        else:
            yield
    finally:
        worker_stdout.end()
        worker_stderr.end()


class DriverLines:
    """(Driver) The queue our Ray processes put their lines on, and a thread printing them here."""

    def __init__(self, poll_s: float = 0.5) -> None:
        from ray.util.queue import Queue

        # no CPU and outside any placement group (a Tune trial calling launch() would capture it)
        self.queue = Queue(actor_options={"num_cpus": 0, "scheduling_strategy": "DEFAULT"})
        self.poll_s = poll_s
        self._stop = threading.Event()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, name="raymmrec-driver-lines", daemon=True)
        self._thread.start()

    @staticmethod
    def _print(item: tuple[str, str]) -> None:
        name, line = item
        print(line, file=sys.stderr if name == STDERR else sys.stdout, flush=True)

    def _pump(self) -> None:
        from ray.util.queue import Empty

        while not self._stop.is_set():
            try:
                item = self.queue.get(timeout=self.poll_s)
            except Empty:
                continue
            except Exception:  # Ray shut down under us: close() prints what it still can
                return
            self._print(item)

    def close(self) -> None:
        """Print every line still on the queue, then remove the queue (again: nothing)."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._thread.join()
        try:
            while True:
                batch = self.queue.get_nowait_batch(self.queue.qsize())
                if not batch:
                    break
                for item in batch:
                    self._print(item)
            self.queue.shutdown(force=True)
        except Exception:  # Ray already shut down: the lines are gone with it
            pass

    def __enter__(self) -> DriverLines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


#: The attribute of a Train worker's exception that says where that worker's log is.
WHERE = "raymmrec_worker_log"


class WorkerFailed(UserError, RuntimeError):
    """Training stopped because a worker raised (``--verbose``: with Ray's tracebacks)."""


def worker_log() -> str:
    """(Ray worker) Where this process's output and tracebacks are: its stderr file on its node (Ray's
    session logs folder there) and the ``ray logs`` command that shows it from any machine."""
    import ray

    ctx = ray.get_runtime_context()
    try:  # Ray points a worker's stderr at its log file (Linux: the file behind descriptor 2)
        path = os.readlink("/proc/self/fd/2")
        path = path if os.path.isfile(path) else None
    except OSError:
        path = None
    if path is None:
        path = os.path.join(ctx.get_temp_dir(), ctx.get_session_name(), "logs") + os.sep
    where = f"{path} on node {ray.util.get_node_ip_address()}"
    actor = ctx.get_actor_id()
    return f"{where} (`ray logs actor --id {actor} --err`)" if actor else where


def note_worker_log(exc: BaseException) -> None:
    """(Ray Train worker) Record on ``exc`` where this worker's log is; it travels with the exception."""
    try:
        setattr(exc, WHERE, worker_log())
    except Exception:  # an exception without attributes, or no Ray context: the driver says less
        pass


def worker_failure(error: Any) -> WorkerFailed:
    """One line for Ray Train's ``WorkerGroupError`` (``worker_failures``: rank -> exception).

    Names one rank, its error and its log, then the other failed ranks. A rank whose error carries no
    log location failed outside our code (its process died: a crash, the OOM killer), which makes the
    others fail with it (a collective whose peer left), so it comes first; then the lowest rank.
    """
    failures: dict[int, BaseException] = dict(getattr(error, "worker_failures", None) or {})
    if not failures:
        return WorkerFailed(f"training failed: {error_message(error)}")
    rank = min(failures, key=lambda r: (getattr(failures[r], WHERE, None) is not None, r))
    exc = failures[rank]
    log = getattr(exc, WHERE, None)
    if log is None:  # a dead worker: Ray Train's error wraps the actor's (its id names the log)
        text = (str(exc).strip().splitlines() or [""])[0]  # the first line: the rest is Ray's worker dump
        actor = getattr(getattr(exc, "health_check_failure", exc), "actor_id", None)
        log = f"`ray logs actor --id {actor} --err`" if actor else "the worker's file in Ray's session logs (`ray logs`)"
    else:
        text = error_message(exc)
    others = sorted(set(failures) - {rank})
    also = f" (also failed: rank{'s' if len(others) > 1 else ''} {', '.join(map(str, others))})" if others else ""
    return WorkerFailed(f"rank {rank} failed: {type(exc).__name__}: {text or 'no message'}{also}; log: {log}")
