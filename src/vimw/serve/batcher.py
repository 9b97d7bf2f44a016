"""Cross-task batching: requests for any of the loaded models, run together.

One worker thread owns the compute. It takes the waiting requests in arrival order, up
to ``max_batch`` images, and runs them as one batch: the rows of each model together,
the models grouped by tap, one backbone pass per group (:func:`run_batch`); a model on
its own folded copy runs its rows on that copy. A batch closes when it holds
``max_batch`` images, when its first request has waited ``max_wait_ms``, or when no
other request is on its way (being received or decoded: waiting for nobody would only
add latency). While a batch runs, new requests queue and form the next one.

The counters (:meth:`Batcher.stats`) say how many requests, images, batches and backbone
passes there were and where the worker's time went.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from vimw.errors import VimwError
from vimw.serve.defaults import DEFAULT_MAX_BATCH, DEFAULT_MAX_WAIT_MS
from vimw.serve.mixed import mixed_features
from vimw.serve.registry import ServedModel



class BatchTooLargeError(VimwError):
    """A request holds more images than one batch may."""


@dataclass
class Job:
    """One request: its model, its images (uint8, 3 channels, at the model's size), its answer."""

    served: ServedModel
    images: torch.Tensor
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.perf_counter)


def run_batch(jobs: Sequence[Job]) -> tuple[list[torch.Tensor], int]:
    """Each job's ``N x C`` probabilities, and the number of backbone passes it took.

    Rows are ordered model by model; the models on the shared backbone are grouped by
    tap, one pass per group; a folded model's rows run on its own copy. Images go to the
    models' device, probabilities come back on the CPU.
    """
    by_model: dict[int, list[int]] = {}
    for i, job in enumerate(jobs):
        by_model.setdefault(id(job.served), []).append(i)
    passes: dict[object, list[list[int]]] = {}
    for indices in by_model.values():
        served = jobs[indices[0]].served
        key = ("folded", id(served)) if served.folded is not None else ("shared", served.tap)
        passes.setdefault(key, []).append(indices)
    if ("shared", None) in passes and len(passes) > 1:  # head-only models join any shared pass
        head_only = passes.pop(("shared", None))
        target = next((k for k in passes if k[0] == "shared"), None)
        passes.setdefault(target or ("shared", None), []).extend(head_only)
    results: list[torch.Tensor | None] = [None] * len(jobs)
    for groups in passes.values():
        _run_pass(jobs, groups, results)
    return results, len(passes)


def _run_pass(jobs: Sequence[Job], groups: list[list[int]], results: list) -> None:
    """One backbone pass over the jobs of ``groups`` (one list of job indices per model)."""
    served = [jobs[g[0]].served for g in groups]
    images = [torch.cat([jobs[i].images for i in g]) for g in groups]
    rows = [len(x) for x in images]
    first = served[0]
    network = first.folded if first.folded is not None else first.model
    pixels = network.backbone.preprocess(torch.cat(images).to(first.device, non_blocking=True))
    if first.folded is not None:
        features = network.backbone.forward_features(pixels)
    else:
        features = mixed_features(network.backbone, pixels, [s.model.bypass() for s in served], rows,
                                  [s.shared for s in served])
    start = 0
    for model, group, count in zip(served, groups, rows):
        head = (model.folded or model.model).head
        probabilities = head(features[start:start + count]).float().softmax(-1).cpu()  # answers are written here
        start += count
        offset = 0
        for i in group:
            n = len(jobs[i].images)
            results[i] = probabilities[offset:offset + n]
            offset += n


class Batcher:
    """The worker thread that turns queued requests into batches (see the module's notes)."""

    def __init__(self, *, max_batch: int = DEFAULT_MAX_BATCH, max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
                 runner: Callable[[Sequence[Job]], tuple[list[torch.Tensor], int]] = run_batch) -> None:
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise VimwError(f"max_batch must be a positive integer, got {max_batch!r}")
        if not max_wait_ms >= 0:
            raise VimwError(f"max_wait_ms must be >= 0, got {max_wait_ms!r}")
        self.max_batch, self.max_wait = max_batch, max_wait_ms / 1e3
        self._runner = runner
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._incoming = 0  # requests being received or decoded
        self._closed = False
        self._stats = {"requests": 0, "images": 0, "batches": 0, "backbone_passes": 0, "largest_batch": 0,
                       "failed_batches": 0, "compute_seconds": 0.0, "compute_cpu_seconds": 0.0}
        self._started = time.perf_counter()
        self._thread = threading.Thread(target=self._work, name="vimw-batcher", daemon=True)
        self._thread.start()

    # -- the request side -------------------------------------------------------------------
    @contextmanager
    def incoming(self):
        """Marks a request on its way (while its body is read and decoded): batches wait for it."""
        with self._cond:
            self._incoming += 1
        try:
            yield
        finally:
            with self._cond:
                self._incoming -= 1
                self._cond.notify()

    def submit(self, served: ServedModel, images: torch.Tensor) -> Future:
        """Queue one request's images; the future gives their ``N x C`` probabilities."""
        if len(images) > self.max_batch:
            raise BatchTooLargeError(f"the request holds {len(images)} images; one batch takes at most "
                                     f"{self.max_batch} (split the request, or start the server with a "
                                     "larger --max-batch)")
        job = Job(served, images)
        with self._cond:
            if self._closed:
                raise VimwError("the server is shutting down")
            self._queue.append(job)
            self._cond.notify()
        return job.future

    # -- the worker ---------------------------------------------------------------------------
    def _take(self) -> list[Job] | None:
        with self._cond:
            while not self._queue and not self._closed:
                self._cond.wait()
            if self._closed:
                return None
            deadline = self._queue[0].arrived + self.max_wait
            while (self._incoming and sum(len(j.images) for j in self._queue) < self.max_batch
                   and time.perf_counter() < deadline):
                self._cond.wait(deadline - time.perf_counter())
            batch, size = [], 0
            while self._queue and size + len(self._queue[0].images) <= self.max_batch:
                job = self._queue.popleft()
                batch.append(job)
                size += len(job.images)
            return batch

    def _work(self) -> None:
        torch.set_grad_enabled(False)
        while (batch := self._take()) is not None:
            started = (time.perf_counter(), time.thread_time())
            try:
                with torch.inference_mode():
                    results, passes = self._runner(batch)
            except Exception as exc:  # a bug must fail its requests, not stop the server
                self._count(batch, 0, started, failed=True)
                for job in batch:
                    job.future.set_exception(exc)
                continue
            self._count(batch, passes, started)  # first: an answered request is already counted
            for job, result in zip(batch, results):
                job.future.set_result(result)

    def _count(self, batch: list[Job], passes: int, started: tuple[float, float], failed: bool = False) -> None:
        images = sum(len(j.images) for j in batch)
        with self._cond:
            s = self._stats
            s["requests"] += len(batch)
            s["images"] += images
            s["batches"] += 1
            s["backbone_passes"] += passes
            s["failed_batches"] += int(failed)
            s["largest_batch"] = max(s["largest_batch"], images)
            s["compute_seconds"] += time.perf_counter() - started[0]  # wall clock
            s["compute_cpu_seconds"] += time.thread_time() - started[1]  # this thread's CPU

    def stats(self) -> dict:
        """Counters since start: requests, images, batches, backbone passes, time in forward passes
        (wall clock, and CPU time of the worker thread)."""
        with self._cond:
            stats = dict(self._stats)
            waiting = len(self._queue)
        uptime = time.perf_counter() - self._started
        stats.update(compute_seconds=round(stats["compute_seconds"], 4),
                     compute_cpu_seconds=round(stats["compute_cpu_seconds"], 4), uptime_seconds=round(uptime, 3),
                     waiting=waiting, max_batch=self.max_batch, max_wait_ms=self.max_wait * 1e3,
                     mean_batch=round(stats["images"] / stats["batches"], 3) if stats["batches"] else 0.0)
        return stats

    def close(self) -> None:
        """Stop the worker after the batch it is running; queued requests fail with an error."""
        with self._cond:
            self._closed = True
            pending = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for job in pending:
            job.future.set_exception(VimwError("the server is shutting down"))
        self._thread.join(timeout=10)


__all__ = ["Batcher", "BatchTooLargeError", "Job", "run_batch"]
