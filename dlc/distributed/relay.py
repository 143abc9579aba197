"""The run's own lines of a Ray Train run, carried from the workers to the `dlc train` process.

Ray forwards a worker's output to the driver prefixed `(RayTrainWorker pid=...)`, deduplicated,
and (Ray Train's print patch) a second time through its logger, mixed with Ray's own records;
the driver's own reports (a dead worker's paragraph) go to its stdout. That broke the promise
of `dlc train`'s streams: stdout holds dlc's own output only (jsonl: one JSON object a line).
So a worker's Python-level stdout and stderr (the epoch lines, jsonl events and notes rank 0
prints) go through a Ray queue (an actor: the workers may run on other machines) to the driver,
which writes them unchanged to its own stdout and stderr; Ray's records stay Ray's, on stderr
(without -q) or in its session logs.
"""

from __future__ import annotations

import contextlib
import threading

POLL_S = 0.1  # how long the driver's pump waits on the queue before it looks for the end


class Lines:
    """A write-only text stream whose complete lines go into the relay's queue."""

    def __init__(self, queue, stream: str):
        self.queue, self.stream, self.partial = queue, stream, ""

    def write(self, text: str) -> int:
        *lines, self.partial = (self.partial + text).split("\n")
        if lines:
            self.queue.put((self.stream, "".join(f"{line}\n" for line in lines)))
        return len(text)

    def flush(self) -> None:
        pass  # only whole lines travel: a line's end flushes it

    def isatty(self) -> bool:
        return False


@contextlib.contextmanager
def relayed(queue):
    """In a worker: its stdout and stderr into `queue`."""
    with contextlib.redirect_stdout(Lines(queue, "out")), \
            contextlib.redirect_stderr(Lines(queue, "err")):
        yield


class Relay:
    """In the driver: a Ray queue, and a thread that writes what arrives in it to `out` and
    `err` (this process's stdout and stderr)."""

    def __init__(self, out, err):
        from ray.util.queue import Empty, Queue

        self.queue, self.empty = Queue(), Empty
        self.streams = {"out": out, "err": err}
        self.ending = threading.Event()
        self.thread = threading.Thread(target=self._pump, name="dlc-relay", daemon=True)
        self.thread.start()

    def _pump(self) -> None:
        try:
            while not (self.ending.is_set() and self.queue.empty()):
                try:
                    stream, text = self.queue.get(timeout=POLL_S)
                except self.empty:
                    continue
                self.streams[stream].write(text)
                self.streams[stream].flush()
        except Exception:  # noqa: BLE001 - the queue's actor is gone (a Ray shutting down), or
            return  # the stream is (a closed pipe): the run's own error says what went wrong

    def close(self) -> None:
        """Write what is still queued, then end the thread and the queue's actor."""
        self.ending.set()
        self.thread.join()
        self.queue.shutdown()
