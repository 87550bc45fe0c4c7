"""The GPU check's env step: versions, NVML's energy counter, vLLM's engine path: a missing piece shows by name."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import platform
import sys
import time
import traceback
import warnings

# What replay and vLLM import, in the order a failure is most telling (torch last: it is the slowest).
PACKAGES = ("numpy", "pandas", "pyarrow", "simpy", "click", "yaml", "matplotlib", "tqdm", "aiohttp", "pynvml",
            "pydantic", "typing_extensions", "transformers", "tokenizers", "huggingface_hub", "triton", "torch")
# The modules replay's in-process vLLM adapter reaches (V1 engine core, the GPU worker and both model runners,
# Llama, dummy weights, FlashAttention): the first that fails names the missing wheel.
VLLM_PATH = ("vllm", "vllm.engine.arg_utils", "vllm.v1.engine.llm_engine", "vllm.v1.engine.core",
             "vllm.v1.executor.uniproc_executor", "vllm.v1.worker.gpu_worker", "vllm.v1.worker.gpu_model_runner",
             "vllm.v1.worker.gpu.model_runner", "vllm.model_executor.models.llama",
             "vllm.model_executor.model_loader.dummy_loader", "vllm.v1.attention.backends.flash_attn",
             "vllm.v1.structured_output", "vllm.v1.core.sched.scheduler", "vllm.platforms.cuda",
             "vllm.vllm_flash_attn.flash_attn_interface")

OK, NO_VLLM, NO_GPU = 0, 3, 4  # exit statuses


def versions() -> dict:
    """Each package's version, file and import time in seconds; a failed import is recorded, not raised."""
    found = {}
    for name in PACKAGES:
        start_s = time.perf_counter()
        try:
            module = importlib.import_module(name)
        except Exception as exc:
            found[name] = {"error": repr(exc)}
            print(f"{name:18s} IMPORT FAILED: {exc!r}")
            continue
        with warnings.catch_warnings():  # click 8.2+ warns that __version__ is deprecated: still the version
            warnings.simplefilter("ignore")
            version = getattr(module, "__version__", "?")
        import_s = time.perf_counter() - start_s
        found[name] = {"version": version, "file": getattr(module, "__file__", None), "import_s": round(import_s, 2)}
        print(f"{name:18s} {version:14s} {import_s:5.2f}s {getattr(module, '__file__', '')}")
    return found


def torch_cuda() -> dict:
    """What torch sees: CUDA version, and the first GPU's name, capability and memory."""
    try:
        import torch
    except Exception as exc:
        return {"error": repr(exc)}
    info = {"cuda": torch.version.cuda, "available": torch.cuda.is_available()}
    if info["available"]:
        info.update(name=torch.cuda.get_device_name(0), capability=torch.cuda.get_device_capability(0),
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return info


def nvml(interval_s: float = 1.0) -> dict:
    """The meter replay uses on a real engine: NVML's total-energy counter (mJ) read twice, interval_s apart."""
    try:
        import pynvml
        pynvml.nvmlInit()
    except Exception as exc:
        return {"error": repr(exc)}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(0)
        info: dict = {"driver": pynvml.nvmlSystemGetDriverVersion(), "name": pynvml.nvmlDeviceGetName(handle)}
        readings = {"power_w": lambda: pynvml.nvmlDeviceGetPowerUsage(handle) / 1000,
                    "power_limit_w": lambda: pynvml.nvmlDeviceGetEnforcedPowerLimit(handle) / 1000,
                    "sm_clock_mhz": lambda: pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM),
                    "temperature_c": lambda: pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)}
        for key, read in readings.items():
            try:
                info[key] = read()
            except Exception as exc:
                info[key] = f"unsupported: {exc!r}"
        try:
            t1_s, e1_mj = time.monotonic(), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            time.sleep(interval_s)
            t2_s, e2_mj = time.monotonic(), pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            info.update(energy_mj_1=e1_mj, energy_mj_2=e2_mj, energy_delta_j=(e2_mj - e1_mj) / 1000,
                        mean_power_w=(e2_mj - e1_mj) / 1000 / (t2_s - t1_s), energy_counter="supported")
        except Exception as exc:
            info["energy_counter"] = f"NOT supported: {exc!r}"
        return info
    except Exception as exc:
        return {"error": repr(exc)}
    finally:
        pynvml.nvmlShutdown()


def vllm_path() -> tuple[dict, bool]:
    """Import vLLM's engine path as replay's adapter does, then its facts (platform, FA3); True if all is well."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    if importlib.util.find_spec("flashinfer") is None and os.environ.get("VLLM_USE_FLASHINFER_SAMPLER") != "0":
        print("WARNING: flashinfer is not installed and VLLM_USE_FLASHINFER_SAMPLER is not 0: the engine will fail "
              "at start with ModuleNotFoundError: No module named 'flashinfer'")
    found: dict = {"imports": {}}
    ok = True
    for name in VLLM_PATH:
        start_s = time.perf_counter()
        try:
            importlib.import_module(name)
            found["imports"][name] = f"ok {time.perf_counter() - start_s:.2f}s"
        except BaseException as exc:  # vLLM raises SystemExit and the like from deep inside: report, go on
            found["imports"][name] = f"FAILED {type(exc).__name__}: {exc}"
            traceback.print_exc()
            ok = False
        print(f"import {name}: {found['imports'][name]}")
    try:
        import vllm
        from vllm.platforms import current_platform
        from vllm.vllm_flash_attn import flash_attn_interface as fa
        found["facts"] = {"vllm": vllm.__version__, "vllm_file": vllm.__file__,
                          "platform": type(current_platform).__name__, "device": current_platform.get_device_name(),
                          "capability": str(current_platform.get_device_capability()),
                          "FA2_AVAILABLE": fa.FA2_AVAILABLE, "FA3_AVAILABLE": fa.FA3_AVAILABLE,
                          "FA3_UNAVAILABLE_REASON": fa.FA3_UNAVAILABLE_REASON}
        print("vllm:", json.dumps(found["facts"], default=str))
        ok = ok and bool(fa.FA3_AVAILABLE)  # on Hopper vLLM runs FlashAttention 3 (the kit trims FA2 away)
    except BaseException as exc:
        print("vllm facts failed:", repr(exc))
        ok = False
    return found, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-vllm", action="store_true", help="skip vLLM and the GPU requirement (ENGINE=sim)")
    parser.add_argument("--json", metavar="FILE", help="also write everything found to FILE")
    args = parser.parse_args()

    report: dict = {"python": sys.version, "executable": sys.executable, "platform": platform.platform(),
                    "PYTHONPATH": os.environ.get("PYTHONPATH"),
                    "env": {k: v for k, v in os.environ.items() if k.startswith(("VLLM_", "HF_", "CUDA_"))}}
    print("python", sys.version.replace("\n", " "), sys.executable)
    print("env", json.dumps(report["env"], sort_keys=True))
    report["packages"] = versions()
    report["torch_cuda"] = torch_cuda()
    print("torch cuda:", report["torch_cuda"])
    report["nvml"] = nvml()
    print("nvml:", json.dumps(report["nvml"], default=str))

    status = OK
    if not args.no_vllm:
        if not report["torch_cuda"].get("available"):
            status = NO_GPU
        report["vllm"], vllm_ok = vllm_path()
        if not vllm_ok:
            status = NO_VLLM
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=1, default=str)
    print("env check status", status)
    return status


if __name__ == "__main__":
    sys.exit(main())
