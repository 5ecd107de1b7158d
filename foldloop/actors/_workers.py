"""A bounded set of daemon worker threads: the tool and model pools.

``concurrent.futures.ThreadPoolExecutor`` builds a Future, a work item and a semaphore
dance for every call; the step path wants none of that (results travel back as actor
messages), so this is a queue and up to ``limit`` threads, started on demand.

A lazy pool (given ``call_later``: a tool's) wakes or starts no thread for a job while one
of its threads is awake: that thread takes the job when its own ends. Under the
interpreter lock more threads do not run short jobs sooner; each one woken for a job or
two contends for the lock with every other thread of the runtime (eight threads for a
trivial tool cost a fleet a quarter more CPU, ``bench_fleet.py --case 10k``). Jobs still
waiting ``LAZY_S`` later, behind threads that have all been in one job that long (blocked
in I/O, say), get threads of their own.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import threading
import time
from collections.abc import Callable, Iterator

from foldloop._log import get_logger
from foldloop.actors._base import FAILURES
from foldloop.actors._own_threads import holding_outcome, mark_own_thread, outcome_in_hand

__all__ = ["LAZY_S", "Workers"]

log = get_logger(__name__)

LAZY_S = 0.01
"""How long a lazy pool's jobs wait behind busy threads before more threads start (in a
quiet process: a look that runs late waits longer, see ``Workers._check``)."""

_current = threading.local()
"""``pool``: the Workers the current thread works for; ``slot``: the job it runs next."""


class Workers:
    """Run callables on at most ``limit`` threads (None: as many as jobs wait); extra jobs
    wait in order. A thread idle for ``keep_idle_s`` ends, so a burst leaves none behind."""

    def __init__(
        self,
        limit: int | None,
        name: str,
        *,
        keep_idle_s: float = 30.0,
        call_later: Callable[[float, Callable[[], None]], object] | None = None,
    ) -> None:
        self._limit = limit if limit is not None else 2**31
        self._keep_idle_s = keep_idle_s
        self._name = name
        self._jobs: collections.deque[Callable[[], object]] = collections.deque()
        self._lock = threading.Lock()
        self._threads = 0
        """Threads running, or counted to start: a lazy pool leaves jobs to every one not
        sleeping, so one counted must exist (``_start`` and ``_died`` count out those that
        do not)."""
        self._sleepers: dict[threading.Lock, None] = {}
        """Idle threads, each waiting for its own lock's release (the last in woken first):
        who was woken, and who timed out, is exact under ``_lock``, as a Condition's
        notify and timeout are not to its waiters."""
        self._coming = 0
        """Threads woken or started for a job that have not yet taken one."""
        self._numbers = itertools.count(1)  # names its threads
        self._unfinished = 0  # queued or running
        self._finished = threading.Condition(self._lock)
        self._closed = False
        self._call_later = call_later
        self._took_at: dict[int, float] = {}
        """When each awake thread (by ident) took its job (lazy pools only)."""
        self._check_due: float | None = None  # when the look armed is due (monotonic)

    def submit(self, job: Callable[[], object]) -> None:
        """Queue ``job``; wake or start a thread for it if it needs one and the bound allows.
        A job one of this pool's threads submits as it hands its own job's outcome on
        (``outcome_in_hand``), while no other job waits, is that thread's next (as Tokio's
        LIFO slot): the run step that outcome drove asks for the next call, and the thread
        about to be free makes it, with no hand-over. The slot's job waits for its
        submitter's job to return: submit it last, and never wait for it there."""
        mine = (
            holding_outcome() and getattr(_current, "pool", None) is self and _current.slot is None
        )
        with self._lock:
            if self._closed:
                return
            self._unfinished += 1
            if mine and not self._jobs:
                _current.slot = job
                return
            self._jobs.append(job)
            started = self._serve(lazily=True)
        self._start(started)

    def _requeue(self, job: Callable[[], object]) -> None:
        """Queue a job already counted unfinished (a slot's whose thread ends)."""
        with self._lock:
            if self._closed:  # dropped
                self._unfinished -= 1
                if not self._unfinished:
                    self._finished.notify_all()
                return
            self._jobs.append(job)
            started = self._serve(lazily=False)
        self._start(started)

    def has_room(self) -> bool:
        """Every job queued has a thread, sleeping or on its way, or one may start for it
        (a lazy pool's job left to an awake thread counts as covered)."""
        with self._lock:
            covered = len(self._sleepers) + self._coming
            return len(self._jobs) <= covered or self._threads < self._limit

    def lend(self) -> None:
        """One more thread may run (a job holding one is past its timeout and no longer
        counts): a job waiting starts now. ``reclaim`` once that job returns."""
        with self._lock:
            if self._closed:
                return
            self._limit += 1
            started = self._serve(lazily=False)
        self._start(started)

    def _serve(self, *, lazily: bool, grow: bool = True) -> int:
        """(Lock held.) Wake idle threads or count new ones (up to the bound; none unless
        ``grow``) for the jobs queued; a lazy pool, while one of its threads is awake, leaves
        them to it and looks again in LAZY_S. Returns how many threads to start."""
        sleepers = self._sleepers
        if lazily and self._call_later is not None and self._threads > len(sleepers):
            self._arm_check()
            return 0
        wanted = len(self._jobs) - self._coming
        woken = max(0, min(wanted, len(sleepers)))
        for _ in range(woken):
            sleepers.popitem()[0].release()  # the last to sleep: the others may time out
        new = max(0, min(wanted - woken, self._limit - self._threads)) if grow else 0
        self._threads += new
        self._coming += woken + new
        return new

    @contextlib.contextmanager
    def handing_on(self) -> Iterator[None]:
        """(A pool thread.) ``outcome_in_hand`` for a job whose own work is done: what is
        left (a run's step, a lock of the runtime's) is no call blocked in I/O, so however
        long it takes, a lazy pool leaves the jobs queued to this thread."""
        if self._call_later is not None:
            with self._lock:
                self._took_at[threading.get_ident()] = math.inf
        with outcome_in_hand():
            yield

    def _arm_check(self) -> None:
        """(Lock held.) Look again in LAZY_S, in case no submit comes to."""
        if self._check_due is None and self._call_later is not None:
            self._check_due = time.monotonic() + LAZY_S
            self._call_later(LAZY_S, self._check)

    def _check(self) -> None:
        """Serve the jobs still waiting if every awake thread has been in its job LAZY_S past
        twice the look's own lateness: a look late by that much says this process's threads
        wait that long for the interpreter lock, and a thread waiting for it is not blocked
        (in a busy fleet a trivial tool's pool grew to eight threads on LAZY_S alone). Behind
        a thread handing its outcome on, idle threads are woken, and none started."""
        with self._lock:
            due, self._check_due = self._check_due or 0.0, None
            if self._closed or not self._jobs:
                return
            now = time.monotonic()
            since = now - LAZY_S - 2 * max(0.0, now - due)
            awake = self._threads - len(self._sleepers)
            took = self._took_at.values()
            if awake > len(self._took_at) or any(since < t < math.inf for t in took):
                self._arm_check()  # one is starting, or taking job after job: it reaches them
                return
            handing = math.inf in took  # its step may be long; the jobs are no reason to grow
            started = self._serve(lazily=False, grow=not handing)
            if handing and len(self._jobs) > self._coming:  # none woken for them: look again
                self._arm_check()
        self._start(started)

    def _start(self, count: int) -> None:
        """Start ``count`` threads ``_serve`` counted; those that cannot start (the OS's
        thread limit) are counted out again, so that no job is left to a thread that does
        not exist, and the failure is raised."""
        for started in range(count):
            name = f"{self._name}-{next(self._numbers)}"
            try:
                threading.Thread(target=self._work, name=name, daemon=True).start()
            except BaseException:
                with self._lock:
                    self._threads -= count - started
                    self._coming -= count - started
                raise

    def reclaim(self) -> None:
        """Undo a ``lend``: a thread above the bound ends once its job is done."""
        with self._lock:
            self._limit -= 1

    def join(self, timeout: float) -> bool:
        """Wait until every job submitted so far has run; False if some still had not after
        ``timeout`` seconds."""
        with self._lock:
            return self._finished.wait_for(lambda: not self._unfinished, timeout)

    def shutdown(self) -> None:
        """Stop every thread once its current job ends; queued jobs are dropped."""
        with self._lock:
            self._closed = True
            self._coming += len(self._sleepers)  # each woken one counts itself out
            while self._sleepers:
                self._sleepers.popitem()[0].release()

    def _work(self) -> None:
        mark_own_thread()
        _current.pool, _current.slot = self, None
        me = threading.get_ident()
        started_for_job = True
        try:
            while (job := self._next_job(me, started_for_job)) is not None:
                started_for_job = False
                if not self._run(job):
                    return
        finally:
            with self._lock:
                self._took_at.pop(me, None)

    def _next_job(self, me: int, started_for_job: bool) -> Callable[[], object] | None:
        """The next job queued, once there is one; None when this thread should end (the
        pool shut down, or nothing came for ``keep_idle_s``). ``started_for_job``: counted
        in ``_coming`` until it looks."""
        with self._lock:
            if started_for_job:
                self._coming -= 1
            self._took_at.pop(me, None)
            while not self._jobs:
                if self._closed:
                    self._threads -= 1
                    return None
                wake = threading.Lock()
                wake.acquire()
                self._sleepers[wake] = None
                self._lock.release()
                try:
                    wake.acquire(timeout=self._keep_idle_s)
                finally:
                    self._lock.acquire()
                if wake in self._sleepers:  # nobody woke it for keep_idle_s
                    del self._sleepers[wake]
                    if not self._jobs:
                        self._threads -= 1
                        return None
                else:  # woken, for a job (which another may have taken) or by shutdown
                    self._coming -= 1
            if self._closed:
                self._threads -= 1
                return None
            if self._call_later is not None:
                self._took_at[me] = time.monotonic()
            return self._jobs.popleft()

    def _run(self, job: Callable[[], object] | None) -> bool:
        """Run ``job`` and the slot jobs it leaves; False when this thread should end (it
        was lent, and is given back)."""
        while job is not None:
            try:
                job()
            except FAILURES:
                log.exception("worker_job_failed", pool=self._name)
            except BaseException:  # outside FAILURES: it ends this thread
                self._died()
                raise
            job, _current.slot = _current.slot, None
            with self._lock:
                if job is not None and self._closed:
                    self._unfinished -= 1  # dropped: the pool is shut down
                    job = None
                self._unfinished -= 1
                if not self._unfinished:
                    self._finished.notify_all()
                above = self._threads > self._limit  # a lent thread given back
                if above:
                    self._threads -= 1
                elif job is not None and self._call_later is not None:
                    self._took_at[threading.get_ident()] = time.monotonic()
            if above:
                if job is not None:  # its thread ends: the job goes to another
                    self._requeue(job)
                return False
        return True

    def _died(self) -> None:
        """This thread ends in its job: counted out (a lazy pool would leave jobs to it for
        ever), its job too, and the slot job it left goes to another thread."""
        slot, _current.slot = _current.slot, None
        with self._lock:
            self._threads -= 1
            self._unfinished -= 1
            if not self._unfinished:
                self._finished.notify_all()
        if slot is not None:
            self._requeue(slot)
