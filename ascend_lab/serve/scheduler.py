"""Iteration-level scheduling of concurrent requests over one kv_cache graph batch.

The engine's batch has ``serve.max_batch`` rows; each running request owns one row until it finishes or its client
goes away. All rows share the graph's one write position ``past_length`` (slot ``W``), and each row's context is
the slots ``[pad_lengths[row], W)`` (:mod:`ascend_lab.graph_contract`): positions are inputs, so a row's pad count
is free, which is what lets rows start at different times without changing the contract or any static shape.

- **Joining a running batch** (torch and onnxruntime, whose cache backends can copy slots): between two decode
  steps a waiting request is prefilled alone (batch 1, in a scratch cache), and its prompt's keys/values are copied
  into a free row right-aligned to ``W`` (pad = ``W`` − prompt length); from the next step it decodes with the
  others. When ``W`` would run past the capacity, every row slides left by the smallest pad (compaction); a prompt
  longer than ``W`` slides them right. A request that still does not fit waits.
- **Batches in turn** (acl): the ``.om``'s batch and capacity are compiled in, and placing one prompt into a row
  would need a batch-1 prefill (the model runs only its compiled batch) or a per-row write of the graph's
  ``present_key_values`` (the cache backend writes whole slots, one device copy per execution). So a batch starts
  when the previous one has ended: up to ``max_batch`` waiting requests are prefilled together, left-padded, and
  the rows whose request ends idle until the batch's last one does.

Rows without a request are fed token 0 with ``pad = W`` (they attend only to themselves) and their outputs are
dropped. Greedy tokens are the graph's ``next_token``; a request with a temperature samples from the logits, which
are only copied from the backend in steps where some row samples.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ascend_lab import graph_contract as gc
from ascend_lab.runtimes.engine import CAPACITY_ALIGN, CacheEngine, bounded_prefill_plan, prefill_chunks_of

log = logging.getLogger(__name__)

# finish reasons, as OpenAI names them (abort: the client went away or the server stopped).
LENGTH, STOP, ABORT = "length", "stop", "abort"


class QueueFull(Exception):
    """Every row is busy and the waiting queue is at serve.queue_size."""


class Draining(Exception):
    """The server is stopping and takes no new request."""


@dataclass(frozen=True)
class Sampling:
    max_tokens: int
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    seed: int | None = None
    ignore_eos: bool = False
    min_tokens: int = 0  # end-of-sequence tokens before this many are generated like any other


# emit(token or None, finish reason or None), called on the scheduler's thread.
Emit = Callable[[int | None, str | None], None]

_ids = itertools.count()


class Request:
    def __init__(self, prompt_ids: list[int], sampling: Sampling, stop_token_ids: frozenset[int], emit: Emit) -> None:
        self.id = next(_ids)
        self.prompt_ids = prompt_ids
        self.sampling = sampling
        self.stop_token_ids = stop_token_ids
        self.emit = emit
        self.generated = 0
        self.cancelled = False
        self.arrived = time.perf_counter()
        self.last_token_at: float | None = None
        self.rng = np.random.default_rng(sampling.seed) if sampling.temperature > 0 else None

    def cancel(self) -> None:
        """Free the request's row at the next step (any thread)."""
        self.cancelled = True


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    """One token from ``softmax(logits / temperature)`` restricted to the smallest top-p set."""
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p, kind="stable")
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p)) + 1]
        q = np.zeros_like(p)
        q[keep] = p[keep]
        p = q / q.sum()
    return int(rng.choice(p.shape[0], p=p))


class Scheduler:
    """Owns the engine's batch on one thread; :meth:`submit` from any thread."""

    def __init__(self, runtime, kv_capacity: int, max_batch: int, queue_size: int,
                 observer=None) -> None:
        self.backend = runtime.cache_backend()
        self.joins = self.backend.fixed_capacity is None and hasattr(self.backend, "read_slots")
        self.prefill_chunks = prefill_chunks_of(self.backend)  # None: one execution per prompt
        self.capacity = self.backend.fixed_capacity or kv_capacity  # the most slots the cache may have
        self.max_batch, self.queue_size = max_batch, queue_size
        self.observer = observer
        # Every step attends over the whole allocated cache, so torch and onnxruntime hold only the slots the
        # running requests can still reach (grown and shrunk in CAPACITY_ALIGN steps); a compiled cache is fixed.
        self.backend.allocate(max_batch, self.backend.fixed_capacity or CAPACITY_ALIGN)
        if self.joins:  # a batch-1 cache of the same runtime for prefilling one prompt apart
            self.scratch = runtime.cache_backend()
            self.prefill_engine = CacheEngine(self.scratch, runtime.contract, self.capacity)
        self.rows: list[Request | None] = [None] * max_batch
        self.pads = np.zeros(max_batch, dtype=np.int64)
        self.last_tokens = np.zeros(max_batch, dtype=np.int64)
        self.write_pos = 0
        self.waiting: collections.deque[Request] = collections.deque()
        self.steps = 0
        self.error: BaseException | None = None
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="ascend_lab-scheduler", daemon=True)
        self._thread.start()

    @property
    def mode(self) -> str:
        return "join at step" if self.joins else "batches in turn"

    # -- any thread ------------------------------------------------------------------------------

    def slots_needed(self, prompt_len: int, max_tokens: int) -> int:
        """Cache slots one request needs (its prompt, padded to whole prefill chunks on a compiled artifact, then
        its new tokens)."""
        return self._plan(prompt_len, max_tokens).padded_len + max_tokens - 1

    def _plan(self, prompt_len: int, max_tokens: int) -> gc.PrefillPlan:
        """The prefill plan of a prompt, its padding bounded by the slots its new tokens leave (as CacheEngine.plan)."""
        return bounded_prefill_plan(prompt_len, max_tokens, self.prefill_chunks, self.capacity)

    def submit(self, request: Request) -> None:
        with self._cond:
            if self._stopping:
                raise Draining()
            if len(self.waiting) >= self.queue_size:
                raise QueueFull()
            self.waiting.append(request)
            self._cond.notify()
        self._observe_counts()

    def running(self) -> int:
        return sum(r is not None for r in self.rows)

    def queued(self) -> int:
        return len(self.waiting)

    def close(self, timeout: float = 30.0) -> None:
        """Stop taking requests, end every one still waiting or running (finish reason ``abort``), stop the thread."""
        with self._cond:
            self._stopping = True
            for request in self.waiting:
                request.cancel()
            for request in self.rows:
                if request is not None:
                    request.cancel()
            self._cond.notify()
        self._thread.join(timeout)

    def cancel_all(self) -> None:
        """End every request waiting or running at the next step (finish reason ``abort``); the thread goes on."""
        with self._cond:
            for request in [*self.waiting, *(r for r in self.rows if r is not None)]:
                request.cancel()
            self._cond.notify()

    def stop_taking(self) -> None:
        """New submissions raise :class:`Draining`; those in flight go on."""
        with self._cond:
            self._stopping = True

    # -- the scheduler's thread ------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while True:
                with self._cond:
                    while not self.waiting and self.running() == 0 and not self._stopping:
                        self._cond.wait()
                    if self._stopping and not self.waiting and self.running() == 0:
                        return
                self._drop_cancelled()
                if self.joins:
                    self._admit_joining()
                elif self.running() == 0:
                    self._admit_batch()
                if self.running():
                    self._step()
                self._observe_counts()
        except BaseException as exc:  # the engine failed: every request ends, the server reports it
            log.exception("the serving engine failed")
            self.error = exc
            with self._cond:
                self._stopping = True
                pending = [*self.waiting, *(r for r in self.rows if r is not None)]
                self.waiting.clear()
            self.rows = [None] * self.max_batch
            for request in pending:
                request.emit(None, ABORT)

    def _drop_cancelled(self) -> None:
        with self._cond:
            gone = [r for r in self.waiting if r.cancelled]
            for request in gone:
                self.waiting.remove(request)
        for request in gone:
            request.emit(None, ABORT)
        for row, request in enumerate(self.rows):
            if request is not None and request.cancelled:
                self.rows[row] = None
                request.emit(None, ABORT)

    def _pop_waiting(self) -> Request | None:
        with self._cond:
            return self.waiting.popleft() if self.waiting else None

    def _peek_waiting(self) -> Request | None:
        with self._cond:
            return self.waiting[0] if self.waiting else None

    # joining (torch, onnxruntime)

    def _admit_joining(self) -> None:
        while None in self.rows:
            request = self._peek_waiting()
            if request is None:
                return
            prompt_len, max_tokens = len(request.prompt_ids), request.sampling.max_tokens
            if self._end(prompt_len, max_tokens) > self.capacity:
                self._compact()
                if self._end(prompt_len, max_tokens) > self.capacity:
                    return  # waits for rows to finish
            self._pop_waiting()
            self._resize(self._end(prompt_len, max_tokens))
            self._prefill_into(self.rows.index(None), request)

    def _future_writes(self) -> list[int]:
        """Slots each running request may still write (one per token it may still be fed)."""
        return [r.sampling.max_tokens - r.generated for r in self.rows if r is not None]

    def _end(self, prompt_len: int, max_tokens: int) -> int:
        """The slots the batch can reach with this request in it (every request running to its max_tokens)."""
        start = max(self.write_pos, prompt_len) if self.running() else prompt_len
        return start + max([max_tokens - 1, *self._future_writes()])

    def _resize(self, end: int) -> None:
        """Hold ``end`` slots, rounded up (at most ``capacity``): grown keeping the rows, or, with no row running,
        shrunk when far larger than needed."""
        backend = self.backend
        want = min(-(-end // CAPACITY_ALIGN) * CAPACITY_ALIGN, self.capacity)
        running = self.running()
        if want > backend.capacity or (not running and backend.capacity > 2 * want):
            kept = backend.read_slots(0, self.write_pos) if running else None
            backend.allocate(self.max_batch, want if not running else min(max(want, 2 * backend.capacity),
                                                                            self.capacity))
            if kept is not None:
                backend.write_slots(0, kept)

    def _compact(self) -> None:
        running = [row for row, r in enumerate(self.rows) if r is not None]
        if running:
            self._slide(-int(self.pads[running].min()))

    def _slide(self, delta: int) -> None:
        """Move every row's slots by ``delta`` (left: negative); pads follow, positions do not change."""
        if delta == 0:
            return
        used = self.write_pos
        if delta < 0:
            self.backend.write_slots(0, self.backend.read_slots(-delta, used))
        else:
            self.backend.write_slots(delta, self.backend.read_slots(0, used))
        self.write_pos += delta
        self.pads += delta

    def _prefill_into(self, row: int, request: Request) -> None:
        ids = np.asarray([request.prompt_ids], dtype=np.int64)
        prompt_len = ids.shape[1]
        engine = self.prefill_engine
        engine.prefill(ids, np.ones_like(ids))
        first = int(engine.generated()[0, -1])
        extra = engine.plan(prompt_len, 1).extra_pad  # the plan engine.prefill just ran (its max_tokens is 0)
        values = self.scratch.read_slots(extra, extra + prompt_len, row=0)
        if not self.running():
            self.write_pos = prompt_len
        elif prompt_len > self.write_pos:
            self._slide(prompt_len - self.write_pos)
        self.backend.write_slots(self.write_pos - prompt_len, values, row=row)
        self.pads[row] = self.write_pos - prompt_len
        self.rows[row] = request
        token = first
        if request.rng is not None:
            token = sample(self.scratch.last_logits()[0], request.sampling.temperature, request.sampling.top_p,
                           request.rng)
        self._deliver(row, request, token)

    # batches in turn (acl)

    def _admit_batch(self) -> None:
        batch: list[Request] = []
        with self._cond:
            while self.waiting and len(batch) < self.max_batch:
                candidate = self.waiting[0]
                longest = max([len(candidate.prompt_ids), *(len(r.prompt_ids) for r in batch)])
                most = max([candidate.sampling.max_tokens, *(r.sampling.max_tokens for r in batch)])
                if batch and self.slots_needed(longest, most) > self.capacity:
                    break
                batch.append(self.waiting.popleft())
        if not batch:
            return
        longest = max(len(r.prompt_ids) for r in batch)
        plan = self._plan(longest, max(r.sampling.max_tokens for r in batch))
        width = plan.padded_len
        ids = np.zeros((self.max_batch, width), dtype=np.int64)
        pads = np.full(self.max_batch, width - 1, dtype=np.int64)  # an idle row: one token 0 at the end
        for row, request in enumerate(batch):
            ids[row, width - len(request.prompt_ids):] = request.prompt_ids
            pads[row] = width - len(request.prompt_ids)
        written, token = 0, None
        for size in plan.chunks:
            token = self.backend.execute(ids[:, written:written + size], gc.positions(written, size, pads), written,
                                         pads if written == 0 else None)
            written += size
        self.write_pos, self.pads = written, pads
        firsts = self.backend.to_host(token)
        logits = self.backend.last_logits() if any(r.rng is not None for r in batch) else None
        for row, request in enumerate(batch):
            self.rows[row] = request
            self._deliver(row, request, self._pick(request, int(firsts[row]), logits, row))

    # both

    def _step(self) -> None:
        used = self.write_pos
        idle = np.array([r is None for r in self.rows])
        pads = np.where(idle, used, self.pads)
        tokens = np.where(idle, 0, self.last_tokens)
        out = self.backend.execute(tokens, gc.positions(used, 1, pads), used, pads)
        self.write_pos += 1
        self.steps += 1
        picks = self.backend.to_host(out)
        running = [(row, r) for row, r in enumerate(self.rows) if r is not None]
        logits = self.backend.last_logits() if any(r.rng is not None for _, r in running) else None
        for row, request in running:
            self._deliver(row, request, self._pick(request, int(picks[row]), logits, row))

    @staticmethod
    def _pick(request: Request, greedy: int, logits: np.ndarray | None, row: int) -> int:
        if request.rng is None or logits is None:
            return greedy
        return sample(logits[row], request.sampling.temperature, request.sampling.top_p, request.rng)

    def _deliver(self, row: int, request: Request, token: int) -> None:
        request.generated += 1
        now = time.perf_counter()
        if self.observer is not None:
            if request.last_token_at is None:
                self.observer.first_token(now - request.arrived)
            else:
                self.observer.inter_token(now - request.last_token_at)
        request.last_token_at = now
        sampling = request.sampling
        if (token in request.stop_token_ids and not sampling.ignore_eos
                and request.generated > sampling.min_tokens):
            finish, token = STOP, None
        elif request.generated >= sampling.max_tokens:
            finish = LENGTH
        else:
            finish = None
        if request.cancelled:
            finish, token = ABORT, None
        request.emit(token, finish)
        if finish is None:
            self.last_tokens[row] = token
        else:
            self.rows[row] = None

    def _observe_counts(self) -> None:
        if self.observer is not None:
            self.observer.counts(self.queued(), self.running())
