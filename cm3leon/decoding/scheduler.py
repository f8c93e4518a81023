"""The scheduler: one per loaded model (`ModelBundle.decoder`), it owns the decode loop; job threads submit to it.

`submit` plans a request, rejects it at once if it can never fit (a clear ValueError), and queues it; the loop
admits queued requests in arrival order while rows and reserved tokens allow, and runs engine iterations (see
engine_core.py). The loop runs in a thread (`start()`) or is driven by the callers themselves: every caller
waiting in `run_batch` steps it in turn, so concurrent jobs share steps without a thread of their own. A handle
waits for, cancels and reads its request's result. `run_batch` is `generate`'s contract over this path: serving
jobs, policy stages, offline evaluations and benchmarks all decode through it.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from collections.abc import Callable, Sequence

import torch

from cm3leon.decoding.engine_core import (
    CancelCheck,
    EngineCore,
    ProgressCallback,
    SchedulerConfig,
    Unit,
    Work,
    plan_unit,
)

__all__ = ["BatchTick", "RequestHandle", "Scheduler", "SchedulerConfig", "Work"]
from cm3leon.decoding.generate import ImageDecoder, build_results, decode_images, until_stop
from cm3leon.decoding.params import DecodingConfig, GenerationCancelled, GenerationRequest, GenerationResult
from cm3leon.decoding.rerank import Scorer
from cm3leon.model.transformer import Transformer
from cm3leon.tokenizers.vocab import Vocabulary

BatchTick = Callable[[Sequence["RequestHandle"]], None]  # called in the caller's thread while a batch runs


class RequestHandle:
    """A submitted request: wait for its result, cancel it, or look at its progress."""

    def __init__(
        self,
        scheduler: Scheduler,
        unit: Unit,
        scorer: Scorer | None,
        image_decoder: ImageDecoder | None,
    ) -> None:
        self._scheduler = scheduler
        self._unit = unit
        self._scorer = scorer
        self._image_decoder = image_decoder
        self._done = threading.Event()
        self._error: BaseException | None = None
        self._result: GenerationResult | None = None
        self._result_lock = threading.Lock()

    @property
    def request(self) -> GenerationRequest:
        return self._unit.request

    @property
    def seed(self) -> int:
        return self._unit.plan.seeds[0]

    @property
    def steps_done(self) -> int:
        return self._unit.steps_taken

    @property
    def steps_reported(self) -> int:
        """Decode steps done, counting a request that stopped early (everything left was padding) as complete."""
        unit = self._unit
        return unit.num_steps if unit.finished else unit.steps_taken

    @property
    def total_steps(self) -> int:
        return self._unit.num_steps

    def tokens_so_far(self, group: int) -> list[int]:
        """The ids sampled so far for one group (candidate) of the request's plan."""
        return list(self._unit.generated[group])

    def wait_any_step(self, timeout: float) -> None:
        """Block until the loop thread finishes a step (or `timeout` seconds)."""
        self._scheduler._wait_step(timeout)

    def raise_if_failed(self) -> None:
        """Raise the error that ended the request (cancelled, or a failing step), if any."""
        if self._done.is_set() and self._error is not None:
            raise self._error

    @property
    def step_logits(self) -> list[torch.Tensor]:
        """Per decode step, the (rows, vocab) logits the request sampled from (only with `keep_logits=True`)."""
        return self._unit.logits

    def cancel(self) -> None:
        """Ask to stop; the request's rows are freed at the next iteration and `result()` raises."""
        self._unit.cancel_requested = True
        self._scheduler._wake()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self, timeout: float | None = None) -> GenerationResult:
        """The result (scored and decoded in the caller's thread); raises GenerationCancelled if cancelled."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"no result within {timeout} s")
        if self._error is not None:
            raise self._error
        with self._result_lock:
            if self._result is None:
                self._result = self._finish()
        return self._result

    def _finish(self) -> GenerationResult:
        unit = self._unit
        stop_ids = {self._scheduler.vocab.eos_id, self._scheduler.vocab.break_id}
        generated = [
            until_stop(ids[: group.max_new], stop_ids)
            for ids, group in zip(unit.generated, unit.plan.groups, strict=True)
        ]
        scheduler = self._scheduler
        return build_results(
            scheduler.model,
            scheduler.vocab,
            unit.plan,
            [unit.request],
            generated,
            image_decoder=self._image_decoder,
            scorer=self._scorer,
            config=scheduler.decoding,
        )[0]

    def _set_done(self, error: BaseException | None = None) -> None:
        self._error = error
        self._done.set()


class Scheduler:
    """Continuous batching over one model: thread-safe `submit`, one loop (a thread via `start`, or `step`)."""

    def __init__(
        self,
        model: Transformer,
        vocab: Vocabulary,
        config: SchedulerConfig | None = None,
        decoding: DecodingConfig | None = None,
    ) -> None:
        self.model = model.eval()
        self.vocab = vocab
        self.config = config or SchedulerConfig()
        self.decoding = decoding or DecodingConfig()
        self.core = EngineCore(model, vocab, self.config)
        self._waiting: deque[Unit] = deque()
        self._handles: dict[int, RequestHandle] = {}
        self._condition = threading.Condition()
        self._step_lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._stepped = threading.Condition()
        self.poll_s = 0.02  # how often a waiting caller looks at its requests while a loop thread runs

    # --- submission --------------------------------------------------------------------------------------------
    def submit(
        self,
        request: GenerationRequest,
        *,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        scorer: Scorer | None = None,
        image_decoder: ImageDecoder | None = None,
        keep_logits: bool = False,
    ) -> RequestHandle:
        """Queue one request; raises ValueError if it is invalid or can never fit the configured limits.

        `progress(steps done, steps in total)` and `should_cancel()` are called from the loop's thread between
        steps; keep them cheap. `scorer` defaults to the model's likelihood, as in `generate`.
        """
        unit = plan_unit(self.vocab, request, self.core.device)
        reason = self.core.never_fits(unit)
        if reason is not None:
            raise ValueError(f"request can never be scheduled: {reason}")
        unit.progress, unit.should_cancel, unit.keep_logits = progress, should_cancel, keep_logits
        handle = RequestHandle(self, unit, scorer, image_decoder)
        with self._condition:
            self._handles[id(unit)] = handle
            self._waiting.append(unit)
            self._condition.notify_all()
        return handle

    def run_batch(
        self,
        requests: Sequence[GenerationRequest],
        *,
        progress: ProgressCallback | None = None,
        should_cancel: CancelCheck | None = None,
        scorer: Scorer | None = None,
        image_decoder: ImageDecoder | None = None,
        on_tick: BatchTick | None = None,
    ) -> list[GenerationResult]:
        """Decode `requests` together and block until all are done: `generate`'s contract through the scheduler.

        Safe to call from several threads at once (each job thread of a worker). The callbacks run in the
        caller's thread, never in the loop's, so a slow one (a Redis write, a preview upload) stalls no other
        request: `should_cancel()`, `progress(steps, total)` (the least advanced request) and `on_tick(handles)`
        between steps when the caller drives the loop itself (no loop thread runs), else every `poll_s`.
        Images are decoded in one batch, as `generate` does. Raises GenerationCancelled if `should_cancel()` turns
        True; the batch's rows are then freed before it returns.
        """
        handles = [self.submit(request, scorer=scorer) for request in requests]
        try:
            self._follow(handles, progress, should_cancel, on_tick)
        except BaseException:
            self.cancel_now(handles)
            raise
        results = [handle.result() for handle in handles]
        if image_decoder is not None:
            decode_images(self.vocab, results, image_decoder)
        return results

    def cancel_now(self, handles: Sequence[RequestHandle]) -> None:
        """Cancel the handles and free their rows at once (not at the next step someone else drives)."""
        for handle in handles:
            handle.cancel()
        with self._step_lock:
            self._admit()  # drops the cancelled ones still waiting
            for unit in [unit for unit in self.core.prefilling + self.core.running if unit.wants_cancel()]:
                self.core._evict(unit)
                self._complete(unit)

    def _follow(
        self,
        handles: Sequence[RequestHandle],
        progress: ProgressCallback | None,
        should_cancel: CancelCheck | None,
        on_tick: BatchTick | None,
    ) -> None:
        """Wait for `handles`, driving the loop when no loop thread runs; callbacks in this thread."""
        reported = -1
        while True:
            finished = all(handle.done() for handle in handles)
            if not finished and should_cancel is not None and should_cancel():
                raise GenerationCancelled("generation cancelled by the caller")
            least = min(handle.steps_reported for handle in handles)
            if progress is not None and least > reported:
                reported = least
                progress(least, max(handle.total_steps for handle in handles))
            if on_tick is not None:
                on_tick(handles)
            if finished:
                for handle in handles:
                    handle.raise_if_failed()
                return
            if self._thread is None:
                self.step()
            else:
                handles[-1].wait_any_step(self.poll_s)

    # --- the loop ----------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """One iteration: admit what fits, then one engine iteration. False when there was nothing to do."""
        with self._step_lock:
            self._admit()
            if not self.core.busy:
                return False
            try:
                left = self.core.iterate()
            except Exception as error:  # a failing step fails the requests in it, not the loop
                self._fail_running(error)
                return True
            for unit in left:
                self._complete(unit)
        with self._stepped:
            self._stepped.notify_all()
        return True

    def start(self) -> None:
        """Run the loop in a daemon thread until `stop()`."""
        if self._thread is not None:
            return
        self._stopping = False
        self._thread = threading.Thread(target=self._loop, name="cm3leon-scheduler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _loop(self) -> None:
        while True:
            with self._condition:
                while not self._stopping and not self._waiting and not self.core.busy:
                    self._condition.wait()
                if self._stopping:
                    return
            self.step()

    def _wait_step(self, timeout: float) -> None:
        with self._stepped:
            self._stepped.wait(timeout)

    def _wake(self) -> None:
        with self._condition:
            self._condition.notify_all()

    # --- bookkeeping -------------------------------------------------------------------------------------------
    def _admit(self) -> None:
        with self._condition:
            for unit in [unit for unit in self._waiting if unit.wants_cancel()]:
                self._waiting.remove(unit)
                self._complete(unit)
            while self._waiting and self.core.fits_now(self._waiting[0]):
                self.core.admit(self._waiting.popleft())

    def _complete(self, unit: Unit) -> None:
        handle = self._handles.pop(id(unit))
        cancelled = None if unit.finished else GenerationCancelled("generation cancelled by the caller")
        handle._set_done(cancelled)

    def _fail_running(self, error: Exception) -> None:
        for unit in list(self.core.prefilling) + list(self.core.running):
            self.core._evict(unit)
            self._handles.pop(id(unit))._set_done(error)

    @property
    def stats(self) -> dict[str, int]:
        """Rows in use, requests waiting / prefilling / running, reserved cache positions, KV bytes per row."""
        core = self.core
        return {
            "rows_in_use": core.pool.capacity - core.pool.free_rows,
            "waiting": len(self._waiting),
            "prefilling": len(core.prefilling),
            "running": len(core.running),
            "tokens_in_flight": core.tokens_in_flight,
            "kv_bytes_per_row": core.pool.bytes_per_row,
        }

    @property
    def work(self) -> Work:
        """The prefill and decode work done so far (a copy)."""
        return dataclasses.replace(self.core.work)
