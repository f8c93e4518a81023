"""The scheduler's engine: one iteration = prefill chunks of joining requests, sample every running request, let
finished ones leave, one decode forward for the rest (iteration-level scheduling, Orca; vLLM's engine core).

A request is one *unit*: planned alone exactly as `generate([request])` plans it (left-padded to its own longest
stream, its own seed's uniforms), so its candidates' companion rows (CFG unconditional, three-stream, CD-K
amateur) are admitted, stepped and evicted together. Rows of different units sit at different positions; the
model's `forward_rows` gives each row its own positions and mask.

Batch invariance (CPU): a row's logits must not depend on its batch mates, not even in their last bits. The
model's `forward_rows` computes its matrix products row-invariantly (`rows_linear`) and attention over the pool's
fixed row length; each unit is prefilled on its own with chunk boundaries that depend only on the unit. A
request's logits are then bit-identical alone or with any others, whenever it joined.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from cm3leon.decoding.generate import left_pad
from cm3leon.decoding.params import GenerationRequest
from cm3leon.decoding.pipeline import StepPipeline, build_pipeline
from cm3leon.decoding.pipeline_merge import hand_back_state, merge_pipelines
from cm3leon.decoding.plan import BatchPlan, plan_batch
from cm3leon.decoding.row_pool import RowPool
from cm3leon.model.transformer import Transformer
from cm3leon.tokenizers.vocab import Vocabulary


@dataclass(frozen=True)
class SchedulerConfig:
    """Pool size and admission limits (a request that does not fit waits; one that never can is rejected)."""

    max_rows: int = 64  # cache rows in the pool: every stream row of every running request holds one
    row_length: int | None = None  # positions per row (prompt + new tokens); None: the model's max_seq_len
    max_tokens: int | None = None  # cache positions reserved by running requests; None: max_rows x row_length
    prefill_chunk_tokens: int = 512  # rows x positions per prefill chunk: bounds how long running rows wait
    # Bit-identical logits in any batch (row-invariant matrix products, see Transformer.forward_rows); about 2x
    # the cost of a step of one or two rows. None: on where it holds (CPU), off elsewhere (CUDA kernels are not).
    batch_invariant: bool | None = None
    # Decode steps through torch.compile (one dynamic-shape graph): fewer per-step fixed costs, after a one-off
    # compile of tens of seconds at the first step. Prefill stays eager, so a request's tokens remain the same
    # alone or batched; they are not the bits of the eager decode.
    compile_decode: bool = False

    def __post_init__(self) -> None:
        for name in ("max_rows", "prefill_chunk_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


ProgressCallback = Callable[[int, int], None]
CancelCheck = Callable[[], bool]


@dataclass(eq=False)
class Unit:
    """One request in the engine: its plan, pipeline, rows and progress."""

    request: GenerationRequest
    plan: BatchPlan
    pipeline: StepPipeline
    tokens: torch.Tensor  # (R, P) prompt rows left-padded to the unit's longest
    row_start: torch.Tensor  # (R,)
    num_steps: int
    keep_logits: bool = False
    progress: ProgressCallback | None = None
    should_cancel: CancelCheck | None = None
    cancel_requested: bool = False
    finished: bool = False  # left because every group stopped (not cancelled)
    rows: list[int] = field(default_factory=list)
    rows_tensor: torch.Tensor | None = None
    prefilled: int = 0
    steps_taken: int = 0
    generated: list[list[int]] = field(default_factory=list)  # per group
    logits: list[torch.Tensor] = field(default_factory=list)  # per step (keep_logits)

    @property
    def num_rows(self) -> int:
        return self.tokens.shape[0]

    @property
    def prompt_length(self) -> int:
        return self.tokens.shape[1]

    @property
    def num_groups(self) -> int:
        return len(self.plan.groups)

    @property
    def reserved_tokens(self) -> int:
        """Cache positions the unit may use: its prompt and every fed-back token, in each of its rows."""
        return self.num_rows * self.sequence_length

    @property
    def sequence_length(self) -> int:
        return self.prompt_length + self.num_steps - 1  # the last sampled token is never fed back

    def wants_cancel(self) -> bool:
        return self.cancel_requested or (self.should_cancel is not None and bool(self.should_cancel()))


@dataclass
class Work:
    """What the core has computed so far: prefill and decode forwards, their row counts and wall time. Prefill is
    each request's own work while decode steps are shared, so their split says what batching can gain."""

    prefill_forwards: int = 0
    prefill_token_rows: int = 0  # rows x positions prefilled
    prefill_s: float = 0.0
    decode_steps: int = 0
    decode_rows: int = 0  # rows stepped, summed over steps (padding rows of a short step included)
    decode_s: float = 0.0


def plan_unit(vocab: Vocabulary, request: GenerationRequest, device: torch.device) -> Unit:
    """A request planned alone, as `generate` would plan a batch of just this request."""
    plan = plan_batch(vocab, [request])
    tokens, row_start = left_pad(plan.rows, vocab.pad_id, device)
    pipeline = build_pipeline(vocab, plan, [request], device)
    unit = Unit(request, plan, pipeline, tokens, row_start, plan.num_steps)
    unit.generated = [[] for _ in plan.groups]
    return unit


class EngineCore:
    """Owns the row pool and the running units; `iterate()` runs one scheduling iteration. Not thread-safe."""

    def __init__(self, model: Transformer, vocab: Vocabulary, config: SchedulerConfig) -> None:
        self.model = model
        self.vocab = vocab
        self.config = config
        self.device = model.token_embedding.weight.device
        row_length = config.row_length or model.config.max_seq_len
        capacity = config.max_rows
        self.pool = RowPool(model, capacity, row_length)
        invariant = config.batch_invariant
        self.batch_invariant = self.device.type == "cpu" if invariant is None else invariant
        self._decode_forward = model.forward_rows
        if config.compile_decode:
            self._decode_forward = torch.compile(model.forward_rows, dynamic=True)  # type: ignore[assignment]
        self.max_tokens = config.max_tokens or config.max_rows * row_length
        self.prefilling: list[Unit] = []
        self.running: list[Unit] = []
        self.tokens_in_flight = 0
        long = dict(dtype=torch.long, device=self.device)
        self.step_tokens = torch.full((capacity, 1), vocab.pad_id, **long)
        self.step_positions = torch.full((capacity, 1), self.pool.scratch_position, **long)
        self.step_row_start = torch.zeros(capacity, **long)
        self.logits = torch.zeros((capacity, vocab.size), dtype=torch.float32, device=self.device)
        self._merged: StepPipeline | None = None
        self._merged_units: list[Unit] = []
        self._group_steps = torch.zeros(0, **long)
        self._decode_rows = torch.zeros(0, **long)  # cache rows of the running units
        self._decode_row_groups = torch.zeros(0, **long)  # their group in the merged pipeline
        self._step_rows = 0  # decode steps run cache rows 0..this-1 (the running units' rows are packed low)
        self.work = Work()

    # --- admission ---------------------------------------------------------------------------------------------
    def never_fits(self, unit: Unit) -> str | None:
        """Why the unit can never run with this configuration, or None."""
        if unit.num_rows > self.config.max_rows:
            return f"the request needs {unit.num_rows} cache rows, the scheduler has {self.config.max_rows} (max_rows)"
        if unit.sequence_length > self.pool.row_length:
            return (
                f"prompt ({unit.prompt_length}) + {unit.num_steps} new tokens need {unit.sequence_length} positions,"
                f" a row holds {self.pool.row_length} (row_length)"
            )
        if unit.reserved_tokens > self.max_tokens:
            return f"the request reserves {unit.reserved_tokens} cache positions, max_tokens is {self.max_tokens}"
        return None

    def fits_now(self, unit: Unit) -> bool:
        rows_in_use = self.pool.capacity - self.pool.free_rows
        return (
            rows_in_use + unit.num_rows <= self.config.max_rows
            and self.tokens_in_flight + unit.reserved_tokens <= self.max_tokens
        )

    def admit(self, unit: Unit) -> None:
        unit.rows = self.pool.allocate(unit.num_rows)
        unit.rows_tensor = torch.tensor(unit.rows, dtype=torch.long, device=self.device)
        self.tokens_in_flight += unit.reserved_tokens
        self.prefilling.append(unit)

    @property
    def busy(self) -> bool:
        return bool(self.prefilling or self.running)

    # --- one iteration -----------------------------------------------------------------------------------------
    @torch.inference_mode()
    def iterate(self) -> list[Unit]:
        """Prefill, sample, evict, decode; returns the units that left (finished or cancelled) this iteration."""
        left = [unit for unit in self.prefilling + self.running if unit.wants_cancel()]
        for unit in left:
            self._evict(unit)
        joined = self._prefill()
        if joined:
            self._rebuild()
        if self.running:
            left += self._sample()
        if self.running:
            self._decode()
        return left

    def _prefill(self) -> bool:
        """Prefill chunks in arrival order; while units are running, about one chunk budget per iteration."""
        spent, joined = 0, False
        budget = self.config.prefill_chunk_tokens
        while self.prefilling and (spent < budget or not self.running):
            unit = self.prefilling[0]
            chunk = max(1, budget // unit.num_rows)
            start, end = unit.prefilled, min(unit.prompt_length, unit.prefilled + chunk)
            positions = torch.arange(start, end, device=self.device).expand(unit.num_rows, -1)
            began = time.perf_counter()
            logits = self.model.forward_rows(
                unit.tokens[:, start:end],
                positions,
                unit.row_start,
                self.pool.caches,
                unit.rows_tensor,
                batch_invariant=self.batch_invariant,
            )
            unit.prefilled, spent = end, spent + unit.num_rows * (end - start)
            self.work.prefill_forwards += 1
            self.work.prefill_token_rows += unit.num_rows * (end - start)
            self.work.prefill_s += time.perf_counter() - began
            if end == unit.prompt_length:
                assert unit.rows_tensor is not None
                self.logits[unit.rows_tensor] = logits[:, -1].float()
                self.step_positions[unit.rows_tensor, 0] = unit.prompt_length
                self.step_row_start[unit.rows_tensor] = unit.row_start
                self.prefilling.pop(0)
                self.running.append(unit)
                joined = True
        return joined

    def _sample(self) -> list[Unit]:
        merged = self._merged
        assert merged is not None
        for unit in self.running:
            if unit.keep_logits:
                unit.logits.append(self.logits[unit.rows_tensor].clone())
        tokens = merged.next_tokens(self.logits, self._group_steps)
        self._group_steps += 1
        self.step_tokens[self._decode_rows, 0] = tokens[self._decode_row_groups]
        host_tokens, host_finished = torch.stack([tokens, merged.stop.finished.long()]).tolist()
        left, start = [], 0
        for unit in self.running:
            end = start + unit.num_groups
            for ids, token in zip(unit.generated, host_tokens[start:end], strict=True):
                ids.append(token)
            unit.steps_taken += 1
            if unit.progress is not None:
                unit.progress(unit.steps_taken, unit.num_steps)
            if unit.steps_taken == unit.num_steps or all(host_finished[start:end]):
                unit.finished = True
                left.append(unit)
            start = end
        for unit in left:
            if unit.steps_taken < unit.num_steps and unit.progress is not None:
                unit.progress(unit.num_steps, unit.num_steps)  # stopped early: everything left was padding
            self._evict(unit)
        return left

    def _decode(self) -> None:
        rows = self._step_rows
        began = time.perf_counter()
        logits = self._decode_forward(
            self.step_tokens[:rows],
            self.step_positions[:rows],
            self.step_row_start[:rows],
            self.pool.caches,
            batch_invariant=self.batch_invariant,
        )
        self.logits[:rows] = logits[:, -1].float()
        self.step_positions[self._decode_rows] += 1
        self.work.decode_steps += 1
        self.work.decode_rows += rows
        self.work.decode_s += time.perf_counter() - began

    # --- membership --------------------------------------------------------------------------------------------
    def _evict(self, unit: Unit) -> None:
        """Free the unit's rows at once (they become padding of the next steps)."""
        if unit in self.prefilling:
            self.prefilling.remove(unit)
        elif unit in self.running:
            self.running.remove(unit)
            self._rebuild()
        else:
            return
        assert unit.rows_tensor is not None
        self.step_tokens[unit.rows_tensor] = self.vocab.pad_id
        self.step_positions[unit.rows_tensor] = self.pool.scratch_position
        self.step_row_start[unit.rows_tensor] = 0
        self.pool.release(unit.rows)
        self.tokens_in_flight -= unit.reserved_tokens

    def _rebuild(self) -> None:
        """Merge the running units' pipelines (after handing the previous merge's state back to its units)."""
        if self._merged is not None:
            hand_back_state(self._merged, [unit.pipeline for unit in self._merged_units])
        self._merged_units = list(self.running)
        if not self.running:
            self._merged = None
            return
        long = dict(dtype=torch.long, device=self.device)
        row_maps = [unit.rows_tensor for unit in self.running]
        self._merged = merge_pipelines([unit.pipeline for unit in self.running], row_maps)  # type: ignore[arg-type]
        group_offsets, steps, row_groups = 0, [], []
        for unit in self.running:
            steps += [unit.steps_taken] * unit.num_groups
            row_groups += [group_offsets + group for group in unit.plan.row_group]
            group_offsets += unit.num_groups
        self._group_steps = torch.tensor(steps, **long)
        self._decode_rows = torch.cat(row_maps)  # type: ignore[arg-type]
        self._decode_row_groups = torch.tensor(row_groups, **long)
        highest = max(max(unit.rows) for unit in self.running)
        # At least two rows: a compiled graph would otherwise specialise (and recompile) for one.
        self._step_rows = min(self.pool.capacity, max(2, highest + 1))
