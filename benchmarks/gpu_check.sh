#!/usr/bin/env bash
# gpu_check.sh: replay's measured path on a real GPU (vLLM in process, NVML energy), then the simulator fitted to
# those measurements and replayed beside them. benchmarks/README.md, "GPU check", says how vLLM gets onto the lent
# H200 (the gpu-kit's parts) and which device call runs this. It works in the project root (this file's ../),
# whatever the directory it is started from, and runs the project's CLI as a user types it: `$PY -m replay ...`.
#
# Steps (STEPS, in this order; every command under `timeout`, none stopping the others; each command's output in
# $WORK/logs/<name>.log and a line in summary.txt; `set -x` traces the rest):
#   env        nvidia-smi, the machine, pip list, benchmarks/gpu_env_check.py (versions, NVML's energy counter,
#              vLLM's engine-path imports: if they fail, the engine steps are skipped), replay --version
#   chat       replay run traces/chat.jsonl --online --duration-s CHAT_DURATION_S; replay report --html
#   code       replay run traces/code.jsonl --offline --limit CODE_LIMIT; replay report --html
#   grid       the [SS26] grid as ONE offline run: grid.jsonl holds GRID_REQUESTS requests per (n_in, n_out) point
#              of GRID_IN x GRID_OUT, points in order, run in static batches of GRID_REQUESTS (so each batch is one
#              point); replay report --html; replay calibrate --form all --folds 5 (E_tok per point, Eq. 5 and more)
#   calibrate  the simulator fitted to the measured runs (chat, code, grid): replay calibrate --perf and --power,
#              then the chat slice on the simulated engine with both files, set beside the measured chat run
# Then summary.txt and one tarball of $WORK, $OUT/results.tar.gz (at most 16 MiB, to come back from the device).
#
# Environment (defaults):
#   OUT (/tmp/gpu-out: summary.txt, env.json, results.tar.gz)    WORK (/tmp/work: runs, reports, fits, logs)
#   ENGINE (vllm; sim: a dry run on a machine without a GPU)      PY (python3)       MODEL (llama-3.1-8b)
#   GPU (unset: replay takes --gpu from NVML's device name for a real engine, h100-sxm for sim; set to override)
#   STEPS ("env chat code grid calibrate")   BUDGET_S (560: the script ends by then)   CHAT_DURATION_S (120)
#   CODE_LIMIT (300)   GRID_IN ("64 128 256 512 1024")   GRID_OUT (= GRID_IN)   GRID_REQUESTS (64)
#   GRID_NEED_S (190: the grid is not started with less time left)   FIT_NEED_S (40: kept for calibrate)
# If a vLLM run fails before it finishes (not by its timeout), the later runs add a recorded FALLBACK, --eager and
# VLLM_USE_V2_MODEL_RUNNER=0: one failure still localises the cause, and the rest may still measure.
#
# Dry run without a GPU (about 20 s on 2 cores):
#   OUT=/tmp/o WORK=/tmp/w ENGINE=sim PY=$PWD/.venv/bin/python CHAT_DURATION_S=30 CODE_LIMIT=50 \
#     GRID_IN="64 256" GRID_REQUESTS=8 bash benchmarks/gpu_check.sh
# Each step clears only what it writes, so STEPS=calibrate fits the runs already in WORK: an earlier call's, or
# the H200's in ../shared/data/gpu-h200-2026-12/ (copy chat/ code/ grid/ into WORK first).
set -ux
export PYTHONUNBUFFERED=1
T0_S=$(date +%s)
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=${OUT:-/tmp/gpu-out}
WORK=${WORK:-/tmp/work}
ENGINE=${ENGINE:-vllm}
PY=${PY:-python3}
MODEL=${MODEL:-llama-3.1-8b}
GPU=${GPU:-}
STEPS=${STEPS:-env chat code grid calibrate}
BUDGET_S=${BUDGET_S:-560}
RESERVE_S=${RESERVE_S:-25}           # kept back for the summary and the tarball
CHAT_DURATION_S=${CHAT_DURATION_S:-120}
CODE_LIMIT=${CODE_LIMIT:-300}
GRID_IN=${GRID_IN:-64 128 256 512 1024}
GRID_OUT=${GRID_OUT:-$GRID_IN}
GRID_REQUESTS=${GRID_REQUESTS:-64}
GRID_NEED_S=${GRID_NEED_S:-190}
FIT_NEED_S=${FIT_NEED_S:-40}
DEADLINE_S=$((T0_S + BUDGET_S))

# vLLM 0.26's sampler imports flashinfer (the kit does not ship it) unless told not to: the engine fails at start.
export VLLM_USE_FLASHINFER_SAMPLER=0
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1             # no usage-stats thread (no network there)
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1          # the shipped config.json only; never the hub
export VLLM_HOST_IP=127.0.0.1 TOKENIZERS_PARALLELISM=false MPLBACKEND=Agg
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-INFO}   # replay's default is ERROR; INFO logs backend, runner, compile
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}      # this project's replay, whatever else is installed

mkdir -p "$OUT" "$WORK/logs" || exit 2
SUM=$OUT/summary.txt
: > "$SUM"
# Start clean for the steps to run (a rerun on the still-warm machine finds the last run's files), removing only
# what they write: so STEPS=calibrate fits the runs already in WORK (an earlier call's, or ../shared/data's).
rm -f "$WORK/summary.txt"
for name in $STEPS; do
  case $name in
    env) rm -f "$WORK"/logs/{nvidia_smi,nvidia_smi_q,machine,pip_list,env_check,replay_version}.log ;;
    chat|code) rm -rf "${WORK:?}/$name" "$WORK/$name-report" "$WORK/logs/${name}"_*.log ;;
    grid) rm -rf "$WORK"/{grid,grid-report,grid.jsonl} "$WORK"/logs/grid_*.log ;;
    calibrate) rm -rf "$WORK"/{calibrated,chat-sim,chat-sim-report} "$WORK"/logs/{calibrate,chat-sim}_*.log ;;
    *) echo "unknown step '$name' in STEPS (env chat code grid calibrate)" | tee -a "$SUM" ;;
  esac
done

note() { echo "$*" | tee -a "$SUM"; }
left_s() { echo $(( DEADLINE_S - $(date +%s) )); }
has() { [[ " $STEPS " == *" $1 "* ]]; }

# step NAME CAP_S [KEEP_S] -- COMMAND...: COMMAND under timeout min(CAP_S, time left - RESERVE_S - KEEP_S), its output
# in $WORK/logs/NAME.log, its tail printed, its rc and seconds in summary.txt. Returns the rc (99: skipped).
step() {
  local name=$1 cap_s=$2 keep_s=0
  shift 2
  if [ "$1" != "--" ]; then keep_s=$1; shift; fi
  shift
  local budget_s=$(( $(left_s) - RESERVE_S - keep_s ))
  local limit_s=$(( cap_s < budget_s ? cap_s : budget_s ))
  if (( limit_s < 20 )); then
    note "STEP $name: skipped, ${budget_s}s left"
    return 99
  fi
  local start_s rc
  start_s=$(date +%s)
  timeout -k 15 "$limit_s" "$@" > "$WORK/logs/$name.log" 2>&1
  rc=$?
  note "STEP $name: rc=$rc in $(( $(date +%s) - start_s ))s (limit ${limit_s}s)$( ((rc == 124 || rc == 137)) &&
    echo ' TIMED OUT')"
  tail -n 30 "$WORK/logs/$name.log"
  return $rc
}

# run_and_report NAME CAP_S [KEEP_S] -- RUN_ARGS...: replay run into $WORK/NAME, then replay report --html into
# $WORK/NAME-report. Returns 0 when the run wrote its summary.json.
run_and_report() {
  local name=$1 cap_s=$2 keep=()
  shift 2
  if [ "$1" != "--" ]; then keep=("$1"); shift; fi
  shift
  step "${name}_run" "$cap_s" "${keep[@]}" -- "$PY" -m replay run "$@" --out "$WORK/$name" --quiet
  local rc=$?
  [ -f "$WORK/$name/summary.json" ] || return $rc
  step "${name}_report" 60 -- "$PY" -m replay report "$WORK/$name" --html --out "$WORK/$name-report"
  return 0
}

# measure NAME CAP_S [KEEP_S] -- RUN_ARGS...: run_and_report on the engine under test. After a vLLM run that failed
# by itself (not by timeout or skip), the later runs use the FALLBACK, recorded in summary.txt.
FALLBACK=()
ENGINE_FAILS=0
measure() {
  local name=$1
  run_and_report "$@" --engine "$ENGINE" --model "$MODEL" ${GPU:+--gpu "$GPU"} "${FALLBACK[@]}" && return 0
  local rc=$?
  ENGINE_FAILS=$((ENGINE_FAILS + 1))
  grep -E "Error|error:|Traceback" "$WORK/logs/${name}_run.log" 2>/dev/null | tail -n 5 | tee -a "$SUM"
  if [ $rc -ne 124 ] && [ $rc -ne 137 ] && [ $rc -ne 99 ] && [ ${#FALLBACK[@]} -eq 0 ] && [ "$ENGINE" = vllm ]; then
    export VLLM_USE_V2_MODEL_RUNNER=0
    FALLBACK=(--eager)
    note "FALLBACK for the later runs: VLLM_USE_V2_MODEL_RUNNER=0 --eager ($name ended rc=$rc without summary.json)"
  fi
  return 1
}

cd "$ROOT" || exit 2
COMMIT=$(cat COMMIT 2>/dev/null || git rev-parse --short HEAD 2>/dev/null || echo '?')   # COMMIT: prepare.sh's
note "gpu_check start $(date -u +%FT%TZ) engine=$ENGINE model=$MODEL gpu=${GPU:-default} steps='$STEPS'" \
     "budget=${BUDGET_S}s host=$(hostname) project=$ROOT commit=$COMMIT"

# --- env: the machine, versions, NVML, vLLM's import path --------------------------------------------------------
VLLM_OK=1
if has env; then
  step nvidia_smi 20 -- nvidia-smi
  step nvidia_smi_q 20 -- nvidia-smi --format=csv --query-gpu=name,driver_version,pstate,power.draw,power.limit,\
clocks.sm,clocks.mem,temperature.gpu,memory.used,memory.total,persistence_mode,compute_mode
  step machine 20 -- bash -c 'uname -a; nproc; free -g; df -h /tmp; command -v "$0"' "$PY"
  step pip_list 40 -- "$PY" -m pip list --disable-pip-version-check
  ENV_ARGS=(--json "$OUT/env.json")
  [ "$ENGINE" = vllm ] || ENV_ARGS+=(--no-vllm)
  step env_check 90 -- "$PY" "$ROOT/benchmarks/gpu_env_check.py" "${ENV_ARGS[@]}"
  rc=$?
  if [ "$ENGINE" = vllm ] && { [ $rc -eq 3 ] || [ $rc -eq 99 ]; }; then
    VLLM_OK=0
    note "vLLM does not import (logs/env_check.log): engine steps skipped"
  fi
  grep -E "^(python|env|torch|transformers|triton|numpy|pandas|pydantic|typing_extensions) |torch cuda:|nvml:|^vllm:|\
^WARNING|^import .*FAILED" "$WORK/logs/env_check.log" | tee -a "$SUM"
  step replay_version 30 -- "$PY" -m replay --version
fi

# --- chat: online, as timed ---------------------------------------------------------------------------------------
if [ $VLLM_OK = 1 ] && has chat; then
  measure chat 300 -- traces/chat.jsonl --online --duration-s "$CHAT_DURATION_S"
fi

# --- code: offline (all at once; continuous batching drains the queue) ---------------------------------------------
if [ $VLLM_OK = 1 ] && has code; then
  measure code 180 -- traces/code.jsonl --offline --limit "$CODE_LIMIT"
fi

# --- grid: the [SS26] grid as one offline run of static batches, one point per batch -------------------------------
if [ $VLLM_OK = 1 ] && has grid; then
  if [ $ENGINE_FAILS -ge 2 ]; then
    note "STEP grid: skipped, the two engine runs before it failed"
  elif (( $(left_s) - RESERVE_S < GRID_NEED_S )); then
    note "STEP grid: skipped, $(( $(left_s) - RESERVE_S ))s left of the ${GRID_NEED_S}s it needs" \
         "(rerun with STEPS='grid calibrate')"
  else
    step grid_trace 20 -- "$PY" - "$WORK/grid.jsonl" "$GRID_IN" "$GRID_OUT" "$GRID_REQUESTS" <<'EOF'
import json, sys
path, ins, outs, per = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), int(sys.argv[4])
index = 0
with open(path, "w", encoding="utf-8") as f:
    for n_in in map(int, ins):          # points in order: each static batch of `per` requests is one point
        for n_out in map(int, outs):
            for _ in range(per):
                f.write(json.dumps({"id": str(index), "arrival_s": None, "input_tokens": n_in,
                                    "output_tokens": n_out}) + "\n")
                index += 1
print(f"{path}: {len(ins)} x {len(outs)} points (n_in {ins}, n_out {outs}), {per} requests each, {index} in all")
EOF
    # The run leaves FIT_NEED_S for the fits after it: a grid cut by its timeout is worth less than the fits.
    [ -s "$WORK/grid.jsonl" ] && measure grid 300 "$FIT_NEED_S" -- "$WORK/grid.jsonl" --offline \
      --batch-size "$GRID_REQUESTS"
    if [ -f "$WORK/grid/summary.json" ]; then
      step grid_calibrate 60 -- "$PY" -m replay calibrate "$WORK/grid" --form all --folds 5
      cp "$WORK/logs/grid_calibrate.log" "$WORK/grid/calibrate.txt"
    fi
  fi
fi

# --- calibrate: the simulator fitted to the measured runs, and the chat slice simulated with the fit ---------------
SIM_FILES=""
if has calibrate; then
  MEASURED=()
  for name in chat code grid; do [ -f "$WORK/$name/summary.json" ] && MEASURED+=("$WORK/$name"); done
  if [ ${#MEASURED[@]} -eq 0 ]; then
    note "STEP calibrate: skipped, no measured run"
  else
    RUN_GPU=$(sed -n 's/^gpu: *//p' "${MEASURED[0]}/config.yaml")   # the hardware replay resolved for the runs
    FIT=$WORK/calibrated
    mkdir -p "$FIT"
    step calibrate_perf 60 -- "$PY" -m replay calibrate "${MEASURED[@]}" --perf --out "$FIT/perf-$RUN_GPU.yaml"
    step calibrate_power 60 -- "$PY" -m replay calibrate "${MEASURED[@]}" --power --out "$FIT/power-$RUN_GPU.yaml"
    # Whatever was fitted is used (its printout kept beside it); a fit that failed leaves the simulator's default
    # for that part, and says so.
    SIM_ARGS=()
    for part in perf power; do
      if [ -f "$FIT/$part-$RUN_GPU.yaml" ]; then
        SIM_ARGS+=("--$part" "$FIT/$part-$RUN_GPU.yaml")
        cp "$WORK/logs/calibrate_$part.log" "$FIT/$part-$RUN_GPU.txt"
      else
        note "calibrate: no $part-$RUN_GPU.yaml (logs/calibrate_$part.log):" \
             "the simulated chat uses the default $part model"
      fi
    done
    SIM_FILES="${SIM_ARGS[*]}"
    run_and_report chat-sim 120 -- traces/chat.jsonl --online --duration-s "$CHAT_DURATION_S" --engine sim \
      --model "$MODEL" --gpu "$RUN_GPU" "${SIM_ARGS[@]}"
  fi
fi

# --- summary: each run, then the chat slice measured and simulated side by side ------------------------------------
"$PY" - "$WORK" "${SIM_FILES:-the defaults}" <<'EOF' 2>&1 | tee -a "$SUM"
import json, os, sys
work, sim_files = sys.argv[1], sys.argv[2]

def load(name):
    path = os.path.join(work, name, "summary.json")
    return json.load(open(path, encoding="utf-8")) if os.path.exists(path) else None

def number(x, spec):
    return "n/a" if x is None else format(x, spec)

def short(x):  # 3 significant digits, whole numbers from 1,000 on
    return number(x, ",.0f" if x is not None and abs(x) >= 1000 else ".3g")

def gpu(name):  # the hardware replay resolved (--gpu, else NVML's name for a real engine), from config.yaml
    with open(os.path.join(work, name, "config.yaml"), encoding="utf-8") as f:
        return next((line.split(":", 1)[1].strip() for line in f if line.startswith("gpu:")), "?")

def show(name):
    d = load(name)
    if d is None:
        print(f"{name}: no summary.json"); return
    s, e = d["summary"], d.get("engine") or {}

    def ms(key):
        return short(None if s.get(key) is None else s[key] * 1e3)

    print(f"{name} on {gpu(name)}: {s['requests']} requests, {s['finished']} finished, {s['rejected']} rejected | "
          f"{number(s['request_throughput'], '.3g')} req/s, {number(s['output_throughput'], ',.0f')} out tok/s | "
          f"TTFT p50 {ms('median_ttft_s')} ms, TPOT p50 {ms('median_tpot_s')} ms, E2E p50 {ms('median_e2el_s')} ms | "
          f"{s['steps']:,} steps")
    print(f"  energy {s['energy_source']}: {number(s['energy_total_j'], ',.0f')} J, idle "
          f"{number(s['energy_idle_j'], ',.0f')} J, {number(s['energy_per_output_token_j'], '.3g')} J per output token"
          f"{'; not measured: ' + s['energy_not_measured_reason'] if s.get('energy_not_measured_reason') else ''}")
    keys = ("engine", "platform", "kv_blocks_total", "enforce_eager", "startup_s")
    print(f"  engine {json.dumps({k: e.get(k) for k in keys})}; adapter cross-check "
          f"{json.dumps(d.get('engine_check'))[:200] if 'engine_check' in d else 'not in summary.json'}")
    report = os.path.join(work, f"{name}-report", "report.json")
    if os.path.exists(report):
        for t in json.load(open(report, encoding="utf-8")).get("comparison", {}).get("totals", []):
            print(f"  {str(t.get('estimator')):10s} estimate {number(t.get('estimated_j'), ',.0f')} J, gap "
                  f"{t.get('gap_text')}, per-request MAPE {number(t.get('mape'), '.1%')} {t.get('reason') or ''}")

for name in ("chat", "code", "grid", "chat-sim"):
    try:
        show(name)
    except Exception as exc:
        print(f"{name}: summary not readable: {exc!r}")

measured, simulated = load("chat"), load("chat-sim")
if measured and simulated:
    print(f"chat slice, measured (chat/) and simulated (chat-sim/, {sim_files}); error = sim / measured - 1")
    rows = [("TTFT p50 (ms)", "median_ttft_s", 1e3), ("TTFT p99 (ms)", "p99_ttft_s", 1e3),
            ("TPOT p50 (ms)", "median_tpot_s", 1e3), ("E2E p50 (ms)", "median_e2el_s", 1e3),
            ("E2E p99 (ms)", "p99_e2el_s", 1e3), ("output tok/s", "output_throughput", 1), ("steps", "steps", 1),
            ("energy total (J)", "energy_total_j", 1), ("energy idle (J)", "energy_idle_j", 1),
            ("energy above idle (J)", "energy_above_idle_j", 1), ("J per output token", "energy_per_output_token_j", 1)]
    print(f"  {'metric':22s} {'measured':>12s} {'simulated':>12s} {'error':>8s}")
    for label, key, scale in rows:
        m, s = measured["summary"].get(key), simulated["summary"].get(key)
        if m is None or s is None:
            print(f"  {label:22s} {str(m):>12s} {str(s):>12s}"); continue
        error = f"{s / m - 1:+.1%}" if m else ""
        print(f"  {label:22s} {short(m * scale):>12s} {short(s * scale):>12s} {error:>8s}")
EOF
# What vLLM resolved in each run: model runner, attention backend, FlashAttention version, compile, CUDA graphs.
[ "$ENGINE" = vllm ] && for name in chat code grid; do
  [ -f "$WORK/logs/${name}_run.log" ] && { echo "--- vLLM in ${name}_run"; grep -oE "(Using V[12] Model Runner|\
Using [A-Z_]+ attention backend|Using FlashAttention version [0-9]|torch.compile took [0-9.]+ s|\
Graph capturing finished in [0-9]+ secs|init engine .* took [0-9.]+ s).*" "$WORK/logs/${name}_run.log" \
    | cut -c1-160 | head -8; } | tee -a "$SUM"
done
for name in grid_calibrate calibrate_perf calibrate_power; do   # the fits' tables and errors
  [ -f "$WORK/logs/$name.log" ] && { echo "--- $name"; grep -vE "^(INFO|WARNING|DEBUG)" "$WORK/logs/$name.log" \
    | head -25; } | tee -a "$SUM"
done
note "elapsed $(( $(date +%s) - T0_S ))s of ${BUDGET_S}s"

# Large step records are compressed; the tarball must stay under 16 MiB to come back from the device.
find "$WORK" -name '*.jsonl' -size +10M -exec gzip -f {} \;
cp "$SUM" "$WORK/summary.txt"
tar -C "$WORK" -czf "$OUT/results.tar.gz" . 2>/dev/null
if [ "$(stat -c %s "$OUT/results.tar.gz" 2>/dev/null || echo 0)" -gt 16000000 ]; then
  note "results.tar.gz too large: packed without steps.jsonl and logs"
  tar -C "$WORK" -czf "$OUT/results.tar.gz" --exclude='steps.jsonl*' --exclude='logs' . 2>/dev/null
fi
ls -la "$OUT" | tee -a "$SUM"
note "gpu_check done $(date -u +%FT%TZ) after $(( $(date +%s) - T0_S ))s"
