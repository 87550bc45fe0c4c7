"""A run's configuration: one frozen dataclass, validated, written to ``config.yaml`` fully resolved.

``RunConfig.from_dict`` reads the same keys from a YAML file (``replay run --config FILE``); an unknown key or a
bad value is an error naming the key. Defaults are vLLM's serving defaults where vLLM has one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

from replay.arrivals import OFFLINE, ONLINE, PROCESSES
from replay.files import read_yaml
from replay.server import ROUTERS

__all__ = ["ENGINES", "METER_CHOICES", "RunConfig", "load_config"]

ENGINES = ("auto", "sim", "vllm", "server")
METER_CHOICES = ("auto", "nvml", "rapl", "model", "none")
RATE_SCALE_HOW = ("compress", "thin-dup")
DEFAULT_GPU = "h100-sxm"  # the simulator's hardware, and a real engine's when NVML names none
# Bounds of the arrival options a user gives: wide enough for any real replay (a trace 1,000 times slower or a
# million times faster; from one request in 11 days to a million per second), narrow enough that the
# arrival times stay ordinary floats (--speedup 1e-300 put every arrival at infinity) and thin-dup's copies
# fit in memory (rate_scale).
RANGES = {"speedup": (1e-3, 1e6), "rate_per_s": (1e-6, 1e6), "rate_scale": (1e-3, 1e3)}
# The options that pick an arrival process, and the options each process uses (the others would be ignored)
_ARRIVAL_OPTIONS = {"rate_per_s": "--rate", "cv": "--cv", "concurrency": "--concurrency",
                    "batch_size": "--batch-size", "speedup": "--speedup"}
_USES = {"timed": {"speedup"}, "poisson": {"rate_per_s"}, "gamma": {"rate_per_s", "cv"}, "closed": {"concurrency"},
         "static": {"batch_size"}, "offline": set()}


@dataclass(frozen=True)
class RunConfig:
    """Everything one ``replay run`` needs; ``resolve()`` fills in the arrival process from the mode."""

    trace: str
    engine: str = "sim"                      # auto: vllm where installed and the options allow, else sim (the CLI default);
                                             # server: a running server over HTTP (targets / launch)
    mode: str = "online"                     # online | offline
    arrival: str | None = None               # a key of replay.arrivals.PROCESSES; None: chosen from the mode
    rate_per_s: float | None = None          # poisson / gamma
    cv: float | None = None                  # gamma burstiness
    concurrency: int | None = None           # closed loop
    batch_size: int | None = None            # static batches ([Na25])
    speedup: float = 1.0                     # timed
    seed: int = 0
    rate_scale: float = 1.0
    rate_scale_how: str = "compress"
    start_s: float | None = None             # window of the trace, seconds from its start
    duration_s: float | None = None
    limit: int | None = None                 # first N requests (after the window)
    model: str | None = None                # None: llama-3.1-8b (sim, or vllm on a GPU), tiny-llama (vllm on a CPU)
    gpu: str | None = None                   # None: NVML's name of this machine's GPU (real engines), else h100-sxm
    dtype: str | None = None                 # None: the model's torch_dtype
    tp: int = 1
    replicas: int = 1
    router: str = "round-robin"
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    block_size: int | None = None            # None: 16 (sim), vLLM's own choice (vllm; 128 on the CPU build)
    gpu_memory_utilization: float | None = None  # None: 0.9 (sim, vllm on a GPU), 0.3 of host memory (vllm CPU)
    kv_blocks: int | None = None             # None: sized from memory
    max_model_len: int | None = None         # None: the model's context length
    chunked_prefill: bool = True
    prefix_caching: bool = False
    fuse_decodes: bool = True               # simulate identical decode steps in one go (same records; faster)
    enforce_eager: bool | None = None        # real engine: eager mode; None: vLLM CPU eager, GPU CUDA graphs
    perf: str | None = None                  # sim: step-time parameters (replay calibrate --perf); none: defaults;
                                             # None: the calibration shipped for the GPU, where there is one
    power: str | None = None                 # sim: power parameters (replay calibrate --power); as perf
    slo: str | None = None                   # "ttft=2s,tpot=100ms"
    meter: str = "auto"                      # energy: auto | nvml | rapl | model | none
    meter_period_s: float = 0.1              # background sampling period of nvml / rapl
    idle_s: float = 3.0                      # idle power measured this long before a measured run (0: not)
    out: str | None = None
    targets: list[str] | None = None         # server: one OpenAI-compatible server URL per replica
    launch: str | None = None                # server: the command that starts it (replay starts and stops it)
    launch_timeout_s: float = 600.0          # server: how long --launch waits for /health
    target_gpus: str | None = None           # server: the GPUs it runs on (NVML indices or UUIDs, comma-separated)
    request_timeout_s: float = 3600.0        # server: one request's whole stream, at most

    def __post_init__(self) -> None:
        self._check_types()
        if self.engine not in ENGINES:
            raise ValueError(f"engine: unknown engine {self.engine!r}; expected one of {', '.join(ENGINES)}")
        if self.mode not in ("online", "offline"):
            raise ValueError(f"mode: expected 'online' or 'offline', got {self.mode!r}")
        if self.arrival is not None:
            if self.arrival not in PROCESSES:
                raise ValueError(f"arrival: unknown process {self.arrival!r}; expected one of {', '.join(PROCESSES)}")
            family = ONLINE if self.mode == "online" else OFFLINE
            if self.arrival not in family:
                raise ValueError(f"arrival: {self.arrival!r} is not an {self.mode} process "
                                 f"({self.mode}: {', '.join(sorted(family))})")
        if self.router not in ROUTERS:
            raise ValueError(f"router: expected one of {', '.join(ROUTERS)}, got {self.router!r}")
        if self.rate_scale_how not in RATE_SCALE_HOW:
            raise ValueError(f"rate_scale_how: expected one of {', '.join(RATE_SCALE_HOW)}, got {self.rate_scale_how!r}")
        for name in ("rate_per_s", "cv", "speedup", "rate_scale", "gpu_memory_utilization", "duration_s"):
            value = getattr(self, name)
            if value is not None and not (_number(value) and value > 0):
                raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
        if self.start_s is not None and not (_number(self.start_s) and self.start_s >= 0):
            raise ValueError(f"start_s: expected a finite number >= 0, got {self.start_s!r}")
        if self.meter not in METER_CHOICES:
            raise ValueError(f"meter: expected one of {', '.join(METER_CHOICES)}, got {self.meter!r}")
        if not (_number(self.meter_period_s) and self.meter_period_s > 0):
            raise ValueError(f"meter_period_s: expected a finite number > 0, got {self.meter_period_s!r}")
        if not (_number(self.idle_s) and self.idle_s >= 0):
            raise ValueError(f"idle_s: expected a finite number >= 0, got {self.idle_s!r}")
        if self.gpu_memory_utilization is not None and self.gpu_memory_utilization > 1:
            raise ValueError(f"gpu_memory_utilization: expected a fraction in (0, 1], got {self.gpu_memory_utilization}")
        for name in ("concurrency", "batch_size", "limit", "tp", "replicas", "max_num_seqs", "max_num_batched_tokens",
                     "block_size", "kv_blocks", "max_model_len"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
        for name in ("chunked_prefill", "prefix_caching", "fuse_decodes"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected true or false, got {getattr(self, name)!r}")
        if self.enforce_eager is not None and not isinstance(self.enforce_eager, bool):
            raise ValueError(f"enforce_eager: expected true, false or null, got {self.enforce_eager!r}")
        if self.targets is not None:
            if not isinstance(self.targets, list) or not self.targets or not all(
                    isinstance(t, str) and t for t in self.targets):
                raise ValueError(f"targets: expected a list of server URLs, got {self.targets!r}")
        if self.launch is not None and not (isinstance(self.launch, str) and self.launch.strip()):
            raise ValueError(f"launch: expected a command, got {self.launch!r}")
        if self.gpu is not None and not (isinstance(self.gpu, str) and self.gpu):
            raise ValueError(f"gpu: expected a hardware name from replay/specs/hardware.yaml, got {self.gpu!r}")
        if self.target_gpus is not None and not isinstance(self.target_gpus, str):
            raise ValueError(f"target_gpus: expected GPU indices or UUIDs, comma-separated, got {self.target_gpus!r}")
        for name in ("launch_timeout_s", "request_timeout_s"):
            if not (_number(getattr(self, name)) and getattr(self, name) > 0):
                raise ValueError(f"{name}: expected a finite number > 0, got {getattr(self, name)!r}")
        server = self.targets is not None or self.launch is not None
        if server and self.engine not in ("auto", "server"):
            raise ValueError(f"engine: {self.engine!r} runs in this process; --target and --launch drive a running "
                             "server (--engine server, or auto)")
        if self.engine == "server" and not server:
            raise ValueError("engine: 'server' needs the server's URL (--target URL) or its command (--launch)")
        if server and self.launch is not None and self.targets is not None and len(self.targets) > 1:
            raise ValueError("launch: replay starts one server; give one --target (or none: taken from the "
                             "command's --host and --port)")
        if not (isinstance(self.seed, int) and self.seed >= 0):
            raise ValueError(f"seed: expected an integer >= 0, got {self.seed!r}")
        for name, (low, high) in RANGES.items():
            value = getattr(self, name)
            if value is not None and not low <= value <= high:
                raise ValueError(f"{name}: expected a number from {low:g} to {high:,.0f}, got {value!r}")
        self._check_arrival_options()

    def _check_types(self) -> None:
        """Every key's type, from its annotation, before any value is looked at: a YAML config's ``model: 123`` or
        ``gpu: [a, b]`` is an error naming the key, not a TypeError deep in the run."""
        for f in fields(self):
            value = getattr(self, f.name)
            kinds = [k.strip() for k in str(f.type).split("|")]
            if value is None and "None" in kinds:
                continue
            kind = kinds[0]
            ok, expected = {
                "str": (isinstance(value, str), "a string"),
                "int": (isinstance(value, int) and not isinstance(value, bool), "an integer"),
                "float": (isinstance(value, (int, float)) and not isinstance(value, bool), "a number"),
                "bool": (isinstance(value, bool), "true or false"),
                "list[str]": (isinstance(value, list) and all(isinstance(v, str) for v in value), "a list of strings"),
            }[kind]
            if not ok:
                raise ValueError(f"key {f.name!r}: expected {expected}, got {value!r}")

    def _check_arrival_options(self) -> None:
        """An arrival option the chosen process would ignore is a contradiction (``--rate 5 --concurrency 8`` ran a
        closed loop and dropped the rate without a word): one line saying which option to drop."""
        name, chooser = self._arrival()
        for key, option in _ARRIVAL_OPTIONS.items():
            value = getattr(self, key)
            if value is None or key in _USES[name] or (key == "speedup" and value == 1.0):
                continue
            given = f"{option} {value:g}"
            if chooser is None and self.mode == "offline":
                raise ValueError(f"arrival: {given} is ignored offline (every request at t = 0): drop {option}, "
                                 "or run --online")
            if chooser is None:  # online, nothing given that picks a process: only --batch-size gets here
                raise ValueError(f"arrival: {given} is for offline static batches: drop {option}, or add --offline")
            raise ValueError(f"arrival: {given} is ignored by the {name} arrival process that {chooser} chooses: "
                             f"drop {option} or {chooser.split()[0]}")

    def _arrival(self) -> tuple[str, str | None]:
        """The arrival process this config runs, and the option (with its value) that chose it; None when the
        mode alone did (offline, or timed online)."""
        if self.arrival is not None:
            return self.arrival, f"--arrival {self.arrival}"
        if self.mode == "offline":
            return ("static", f"--batch-size {self.batch_size}") if self.batch_size is not None else ("offline", None)
        if self.concurrency is not None:
            return "closed", f"--concurrency {self.concurrency}"
        if self.cv is not None:
            return "gamma", f"--cv {self.cv:g}"
        if self.rate_per_s is not None:
            return "poisson", f"--rate {self.rate_per_s:g}"
        return "timed", None

    def resolve(self) -> "RunConfig":
        """Pick the arrival process from the mode and the options given, when not named; the simulated engine's
        defaults (model, block size, memory fraction) where not given. The real engine's are its own."""
        if self.engine == "sim" and None in (self.model, self.block_size, self.gpu_memory_utilization, self.gpu):
            return replace(self, model=self.model or "llama-3.1-8b", block_size=self.block_size or 16,
                           gpu_memory_utilization=self.gpu_memory_utilization or 0.9,
                           gpu=self.gpu or DEFAULT_GPU).resolve()
        if self.gpu is None:  # a real engine's, when choose_engine did not name it (library use): the default
            return replace(self, gpu=DEFAULT_GPU).resolve()
        if self.arrival is not None:
            return self
        return replace(self, arrival=self._arrival()[0])

    def arrival_params(self) -> dict[str, Any]:
        """The parameters the chosen arrival process takes (rate_per_s may still need the trace's rate)."""
        name = self.resolve().arrival
        if name == "timed":
            return {"speedup": self.speedup}
        if name == "poisson":
            return {"rate_per_s": self.rate_per_s, "seed": self.seed}
        if name == "gamma":
            return {"rate_per_s": self.rate_per_s, "cv": self.cv if self.cv is not None else 1.0, "seed": self.seed}
        if name == "closed":
            return {"concurrency": self.concurrency}
        if name == "static":
            return {"batch_size": self.batch_size}
        return {}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], where: str = "config") -> "RunConfig":
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a mapping of option: value")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise ValueError(f"{where}: unknown key {key!r}; known keys: {', '.join(sorted(known))}")
        if "trace" not in data:
            raise ValueError(f"{where}: missing key 'trace'")
        try:
            return cls(**data)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None


def load_config(path: str | Path) -> dict[str, Any]:
    """The mapping in a YAML run config (validated later, with the command line's options on top)."""
    data = read_yaml(path)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping of option: value at the top level")
    return data


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
