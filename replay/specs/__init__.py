"""Hardware and model specs: the numbers every estimate and simulated engine starts from.

The specs are data, not code (DESIGN.md): ``hardware.yaml`` holds one entry per accelerator (peak FLOP/s per
dtype, memory, bandwidth, TDP, typical idle power, interconnect, and the datasheet they come from), and
``models/<name>/config.json`` holds Hugging Face style architecture configs. A config directory doubles as a
vLLM ``load_format="dummy"`` model: the real shapes with random weights, no download.

This module only loads, validates and names them:

- ``hardware(name) -> Hardware`` and ``hardware_names()``; ``load_hardware(path)`` for another YAML file.
- ``model(name_or_path) -> ModelSpec`` and ``model_names()``; a local directory holding ``config.json`` works too.

Every bad input raises ``ValueError`` naming the file, the entry and the field, and unknown names list the known
ones: a typo never becomes a silent default.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from replay.files import read_yaml


SPECS_DIR = Path(__file__).resolve().parent
HARDWARE_FILE = SPECS_DIR / "hardware.yaml"
MODELS_DIR = SPECS_DIR / "models"

__all__ = [
    "HARDWARE_FILE", "MODELS_DIR", "Hardware", "ModelSpec", "hardware", "hardware_names", "load_hardware",
    "load_model", "model", "model_names",
]

# --- hardware ------------------------------------------------------------------------------------------------

_HW_NUMBERS = ("memory_gb", "memory_bandwidth_gbs", "tdp_w", "idle_w", "interconnect_gbs")
_HW_FIELDS = ("name", *_HW_NUMBERS, "peak_tflops", "source")
_HW_OPTIONAL = ("note", "aliases")
# Spellings of a dtype that mean the same peak-FLOP/s row (torch_dtype strings included).
_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32",
                  "float8": "fp8", "float8_e4m3fn": "fp8", "float8_e5m2": "fp8", "e4m3": "fp8"}


@dataclass(frozen=True)
class Hardware:
    """One accelerator's datasheet numbers (see the header of hardware.yaml for units and conventions).

    ``peak_tflops`` maps dtype -> {"dense": TFLOP/s, "sparse": TFLOP/s (2:4 structured sparsity, optional)}.
    ``idle_w`` is a typical idle draw, not a datasheet figure: measure idle power before a run where possible.
    """

    key: str
    name: str
    memory_gb: float
    memory_bandwidth_gbs: float
    peak_tflops: dict[str, dict[str, float]]
    tdp_w: float
    idle_w: float
    interconnect_gbs: float
    source: str
    note: str = ""
    aliases: tuple[str, ...] = ()

    def peak_flops(self, dtype: str = "bf16", sparse: bool = False) -> float:
        """Peak FLOP/s for `dtype` (bf16, fp16, fp8, fp4, tf32, fp32 or a torch_dtype spelling), dense by default.

        [Na25]'s theoretical estimate uses the A6000's *sparse* fp16 peak (309.7 TFLOP/s); pass ``sparse=True``
        to reproduce it, and say which one a run uses. Raises ValueError (never KeyError) naming the device and
        the dtypes it has.
        """
        key = _DTYPE_ALIASES.get(dtype.lower(), dtype.lower())
        row = self.peak_tflops.get(key)
        if row is None:
            raise ValueError(f"hardware {self.key!r} has no peak for dtype {dtype!r}; "
                             f"it has: {', '.join(sorted(self.peak_tflops))}")
        kind = "sparse" if sparse else "dense"
        if kind not in row:
            with_sparse = sorted(d for d, r in self.peak_tflops.items() if "sparse" in r)
            raise ValueError(f"hardware {self.key!r} has no sparse peak for dtype {key!r}; dtypes with a sparse "
                             f"peak: {', '.join(with_sparse) or 'none'}")
        return row[kind] * 1e12

    @property
    def memory_bytes(self) -> float:
        return self.memory_gb * 1e9

    @property
    def memory_bandwidth_bps(self) -> float:
        """Memory bandwidth in bytes/s."""
        return self.memory_bandwidth_gbs * 1e9


def _positive(value: Any, where: str, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{where}: field {field!r}: expected a positive number, got {value!r}")
    return float(value)


def _hardware_entry(path: Path, key: str, raw: Any) -> Hardware:
    where = f"{path}: device {key!r}"
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: expected a mapping of fields, got {type(raw).__name__}")
    for field in _HW_FIELDS:
        if field not in raw:
            raise ValueError(f"{where}: missing field {field!r}")
    unknown = sorted(set(raw) - set(_HW_FIELDS) - set(_HW_OPTIONAL))
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}; expected fields: {', '.join(_HW_FIELDS + _HW_OPTIONAL)}")
    numbers = {f: _positive(raw[f], where, f) for f in _HW_NUMBERS}
    peaks_raw = raw["peak_tflops"]
    if not isinstance(peaks_raw, dict) or not peaks_raw:
        raise ValueError(f"{where}: field 'peak_tflops': expected a mapping dtype -> {{dense, sparse}}, got {peaks_raw!r}")
    peaks: dict[str, dict[str, float]] = {}
    for dtype, row in peaks_raw.items():
        field = f"peak_tflops.{dtype}"
        if not isinstance(row, dict) or "dense" not in row or set(row) - {"dense", "sparse"}:
            raise ValueError(f"{where}: field {field!r}: expected {{dense: N}} or {{dense: N, sparse: N}}, got {row!r}")
        peaks[str(dtype)] = {k: _positive(v, where, f"{field}.{k}") for k, v in row.items()}
    for field in ("name", "source"):
        if not isinstance(raw[field], str) or not raw[field].strip():
            raise ValueError(f"{where}: field {field!r}: expected non-empty text, got {raw[field]!r}")
    aliases = raw.get("aliases") or []
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise ValueError(f"{where}: field 'aliases': expected a list of names, got {aliases!r}")
    return Hardware(key=key, name=raw["name"], peak_tflops=peaks, source=" ".join(raw["source"].split()),
                    note=" ".join(str(raw.get("note") or "").split()), aliases=tuple(aliases), **numbers)


def load_hardware(path: str | Path = HARDWARE_FILE) -> dict[str, Hardware]:
    """Read and validate a hardware YAML file (top-level ``devices:`` mapping key -> fields)."""
    path = Path(path)
    doc = read_yaml(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("devices"), dict) or not doc["devices"]:
        raise ValueError(f"{path}: expected a top-level 'devices:' mapping of device entries")
    return {str(key).lower(): _hardware_entry(path, str(key), raw) for key, raw in doc["devices"].items()}


def _norm(name: str) -> str:
    """Lower case, with spaces and underscores as hyphens: 'H100_SXM' and 'h100 sxm' both give 'h100-sxm'."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


@cache
def _shipped_hardware() -> tuple[dict[str, Hardware], dict[str, str]]:
    devices = load_hardware()
    index: dict[str, str] = {}
    for key, hw in devices.items():
        for name in (key, *hw.aliases):
            other = index.setdefault(_norm(name), key)
            if other != key:
                raise ValueError(f"{HARDWARE_FILE}: alias {name!r} names both {other!r} and {key!r}")
    return devices, index


def hardware_names() -> list[str]:
    """Keys of the shipped hardware entries, in file order."""
    return list(_shipped_hardware()[0])


def hardware(name: str) -> Hardware:
    """A shipped hardware entry by key or alias, case-insensitive ('h100' -> h100-sxm, 'a100' -> a100-80gb)."""
    devices, index = _shipped_hardware()
    key = index.get(_norm(name))
    if key is None:
        raise ValueError(f"unknown hardware {name!r}; known: {', '.join(devices)}")
    return devices[key]


# --- models --------------------------------------------------------------------------------------------------

_MODEL_REQUIRED = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
# Families whose MLP is two plain matrices (up, activation, down); every other family is taken as gated
# (gate and up, then down: three matrices), as llama, qwen2, gemma2, granite and mistral are.
_UNGATED = {"opt", "falcon", "gpt2", "gpt_bigcode", "gpt_neox", "gptj", "bloom", "phi", "starcoder2"}
_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """A model architecture read from a Hugging Face style config.json.

    The properties normalise the families' different key names (OPT ``ffn_dim``, Falcon ``multi_query``...)
    so estimators read one vocabulary. ``params`` is computed from the shapes, not read from a model card.
    """

    key: str
    config: dict
    path: Path

    def _get(self, *names: str, default: Any = None) -> Any:
        for name in names:
            if self.config.get(name) is not None:
                return self.config[name]
        return default

    @property
    def model_type(self) -> str:
        return self.config["model_type"]

    @property
    def hidden_size(self) -> int:
        return int(self.config["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.config["num_hidden_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.config["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        """Key/value heads: GQA from num_key_value_heads; Falcon from num_kv_heads / multi_query; else MHA."""
        if self.model_type == "falcon":
            if self.config.get("new_decoder_architecture"):
                return int(self._get("num_kv_heads", default=self.num_heads))
            return 1 if self.config.get("multi_query", True) else self.num_heads
        return int(self._get("num_key_value_heads", default=self.num_heads))

    @property
    def head_dim(self) -> int:
        """Per-head width: the config's head_dim where it sets one (Gemma2-2B: 256, not 2304/8), else d / heads."""
        return int(self._get("head_dim", default=self.hidden_size // self.num_heads))

    @property
    def intermediate_size(self) -> int:
        """MLP inner width (OPT ffn_dim; Falcon ffn_hidden_size, default 4 d as in transformers)."""
        return int(self._get("intermediate_size", "ffn_dim", "ffn_hidden_size", "n_inner",
                             default=4 * self.hidden_size))

    @property
    def vocab_size(self) -> int:
        return int(self.config["vocab_size"])

    @property
    def max_context(self) -> int:
        """max_position_embeddings (the longest context the config allows; Falcon-RW: 2048, its training length)."""
        return int(self._get("max_position_embeddings", "n_positions", default=2048))

    @property
    def dtype(self) -> str:
        return str(self._get("torch_dtype", "dtype", default="bfloat16")).removeprefix("torch.")

    @property
    def dtype_bytes(self) -> int:
        try:
            return _DTYPE_BYTES[self.dtype]
        except KeyError:
            raise ValueError(f"{self.path / 'config.json'}: field 'torch_dtype': unsupported {self.dtype!r}; "
                             f"expected one of {', '.join(_DTYPE_BYTES)}") from None

    @property
    def gated_mlp(self) -> bool:
        """True for gated (SwiGLU/GeGLU) MLPs: llama, qwen2, gemma2, granite; False for opt, falcon."""
        return self.model_type not in _UNGATED

    @property
    def tied_embeddings(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", True))

    @property
    def params(self) -> int:
        """Approximate parameter count from the shapes (within about 1% of the published sizes).

        With d = hidden, L = layers, V = vocab, h = heads, k = kv heads, e = head_dim, f = intermediate:
          embeddings  V d, plus V d again for an untied LM head; OPT adds learned positions (max_pos + 2) d
          attention   d (h e) [Q] + 2 d (k e) [K, V] + (h e) d [O]; biases (h + 2k) e + d where the family has
                      them (Qwen2 Q/K/V only; OPT, Falcon-RW and attention_bias configs all four)
          MLP         gated: 3 d f (+ 2 f + d with mlp_bias); plain: 2 d f + f + d (OPT, Falcon, StarCoder2
                      biases; StarCoder2's attention has biases too, use_bias)
          norms       RMSNorm d per norm (2 a layer; Gemma2 4), LayerNorm 2 d per norm (OPT, Falcon, StarCoder2), plus
                      the final norm
        Rotary embeddings, ALiBi and softcapping have no parameters.
        """
        c, d, L, V = self.config, self.hidden_size, self.num_layers, self.vocab_size
        h, k, e, f = self.num_heads, self.num_kv_heads, self.head_dim, self.intermediate_size
        family = self.model_type
        embed = V * d * (1 if self.tied_embeddings else 2)
        attn = d * h * e + 2 * d * k * e + h * e * d
        if family == "opt":
            embed += (self.max_context + 2) * d
            proj = c.get("word_embed_proj_dim", d)
            if proj != d:  # project_in / project_out around the decoder (OPT-350m)
                embed += 2 * proj * d - V * d + V * proj
            attn += (h + 2 * k) * e + d
            mlp = 2 * d * f + f + d
            norms, norm_width = 2, 2 * d
        elif family == "falcon":
            attn += ((h + 2 * k) * e + d) if c.get("bias", False) else 0
            mlp = 2 * d * f + ((f + d) if c.get("bias", False) else 0)
            shared_ln = c.get("parallel_attn", True) and not c.get("new_decoder_architecture")
            norms, norm_width = (1 if shared_ln else 2), 2 * d
        elif family == "starcoder2":  # plain MLP (c_fc, c_proj), biases everywhere by default, LayerNorm
            bias = bool(c.get("use_bias", True))
            attn += ((h + 2 * k) * e + d) if bias else 0
            mlp = 2 * d * f + ((f + d) if bias else 0)
            norms, norm_width = 2, 2 * d
        else:
            if family == "qwen2":
                attn += (h + 2 * k) * e
            elif c.get("attention_bias"):
                attn += (h + 2 * k) * e + d
            mlp = 3 * d * f + ((2 * f + d) if c.get("mlp_bias") else 0)
            norms, norm_width = (4 if family == "gemma2" else 2), d
        return embed + L * (attn + mlp + norms * norm_width) + norm_width

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights at the config's dtype: params x dtype_bytes."""
        return self.params * self.dtype_bytes


def load_model(directory: str | Path, key: str | None = None) -> ModelSpec:
    """Read and validate ``<directory>/config.json`` (or a config.json path) into a ModelSpec."""
    directory = Path(directory)
    if directory.is_file():
        directory = directory.parent
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{directory}: no config.json there") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON: line {exc.lineno}: {exc.msg}") from None
    key = key or directory.name
    if not isinstance(config, dict):
        raise ValueError(f"{path}: model {key!r}: expected a JSON object")
    for field in _MODEL_REQUIRED:
        if field not in config:
            raise ValueError(f"{path}: model {key!r}: missing field {field!r}")
    for field in _MODEL_REQUIRED[1:]:
        value = config[field]
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{path}: model {key!r}: field {field!r}: expected a positive integer, got {value!r}")
    spec = ModelSpec(key=key, config=config, path=directory)
    if spec.num_heads % spec.num_kv_heads:
        raise ValueError(f"{path}: model {key!r}: field 'num_key_value_heads': {spec.num_kv_heads} does not divide "
                         f"num_attention_heads {spec.num_heads}")
    return spec


def _alias(name: str) -> str:
    """Loose form for matching names: lower case, only letters, digits and dots ('Llama3.1-8B' == 'llama-3.1-8b')."""
    return re.sub(r"[^a-z0-9.]", "", name.lower())


@cache
def _shipped_models() -> tuple[tuple[str, ...], dict[str, str]]:
    names = tuple(sorted(p.parent.name for p in MODELS_DIR.glob("*/config.json")))
    index: dict[str, str] = {}
    for name in names:
        hub = str(json.loads((MODELS_DIR / name / "config.json").read_text(encoding="utf-8")).get("_name_or_path", ""))
        for alias in filter(None, (name, hub, hub.rpartition("/")[2])):
            index.setdefault(_alias(alias), name)
    return names, index


def model_names() -> list[str]:
    """Names of the shipped model configs (directories under specs/models)."""
    return list(_shipped_models()[0])


def model(name_or_path: str | Path) -> ModelSpec:
    """A shipped model by name or alias, or a local directory holding config.json.

    Names are matched case-insensitively and loosely against the directory name and the hub id the config
    mirrors (``_name_or_path``): 'Llama-3.1-8B', 'meta-llama/Llama-3.1-8B', 'Llama3.1-8B' ([SS26]'s spelling) all
    give llama-3.1-8b. A path that exists is loaded as a directory; one that does not (a server's model path on
    another machine) is matched by its last part ('/models/Llama-3.1-8B' gives llama-3.1-8b).
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.exists():
        return load_model(candidate)
    names, index = _shipped_models()
    name = index.get(_alias(str(name_or_path)))
    if name is None and ("/" in str(name_or_path) or "\\" in str(name_or_path)):
        # a path from another machine (a server's served model, say): its last part may name a shipped model
        name = index.get(_alias(Path(str(name_or_path).rstrip("/\\")).name))
    if name is None:
        raise ValueError(f"unknown model {str(name_or_path)!r} (and no such directory); shipped: {', '.join(names)}")
    return load_model(MODELS_DIR / name, key=name)
