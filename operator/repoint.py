"""Router re-points in flight, off the reconcile's thread.

A re-point is a round trip to the router's control channel; one that does not answer waits out its
timeout (10 s). Run inline, that wait held one of kopf's few worker threads, and a burst of moved
replicas (a node gone) queued every other reconcile behind it. So the reconcile starts the
re-point here and returns; the router counts as not ready meanwhile, and when the re-point ends
the kernel is reconciled again and takes its result (keep the router, or make it again).
Nothing here outlives the process: a restarted operator finds the router's recorded members
differ from the replicas' and starts the re-point again.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future, ThreadPoolExecutor

log = logging.getLogger(__name__)


class Repoints:
    # Threads that mostly wait on a socket: enough that a node's worth of moved replicas (a dozen
    # kernels) is not queued behind routers that do not answer.
    def __init__(self, workers: int = 16) -> None:
        self._pool = ThreadPoolExecutor(workers, thread_name_prefix="repoint")
        self._lock = threading.Lock()
        self._inflight: dict[Hashable, tuple[str, Future[bool]]] = {}

    def outcome(self, key: Hashable, members: str, run: Callable[[], bool], then: Callable[[], None]) -> bool | None:
        """None while the re-point of `key` to `members` runs (started now if it is not running);
        then, once, whether it succeeded. `then` runs when it ends, in the caller's context."""
        with self._lock:
            current = self._inflight.get(key)
            if current is not None and current[0] == members:
                if not current[1].done():
                    return None
                del self._inflight[key]
                try:
                    return current[1].result()
                except Exception:
                    log.exception("re-pointing the router of %s", key)
                    return False
            # None yet, or for members that have changed since: start one for these.
            ctx = contextvars.copy_context()
            future = self._pool.submit(contextvars.copy_context().run, run)
            self._inflight[key] = (members, future)
        # A thread of its own: the callback may run at once, here, where `then` (a reconcile of
        # this kernel) would wait on the lock the caller holds.
        future.add_done_callback(lambda _: threading.Thread(target=ctx.run, args=(then,), daemon=True).start())
        return None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
