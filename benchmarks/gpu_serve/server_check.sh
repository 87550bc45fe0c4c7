#!/usr/bin/env bash
# server_check.sh: replay against a real `vllm serve` on the GPU machine, with NVML energy split per request.
#
# Runs ON the device, from the project root of the working tree, after the gpu-kit's call-3-style install
# (vLLM 0.26.0 and its 19 wheels in $SITE; ../../../shared/gpu-kit/README.md). It installs the server wheels of
# .whl-serve/ (WHEELS.md), then, each step under `timeout` and none stopping the others:
#   chat: replay run traces/chat.jsonl --online --duration-s $CHAT_S --launch "<api_server ...>" (replay starts
#         the server, waits for /health, measures idle, replays, stops it), then replay report;
#   code: replay run traces/code.jsonl --offline --limit $CODE_N --launch "<api_server ...>", then replay report
#         (skipped when less than CODE_NEED_S of BUDGET_S is left).
# Results: $OUT/results.tar.gz (run directories, reports' text, logs) and $OUT/summary.txt.
# Environment: OUT, SITE (/tmp/site), PY (python3), GPU (h200), MODEL_CONFIG (llama-3.1-8b's config.json),
# CHAT_S (120), CODE_N (300), BUDGET_S (520), CODE_NEED_S (170), SERVER_ARGS (extra api_server flags),
# STEPS ("chat code"), WHL_DIR (.whl-serve), SKIP_ENV (set: no version check, which costs ~20 s of imports).
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:?OUT must be set}
SITE=${SITE:-/tmp/site}
PY=${PY:-python3}
GPU=${GPU:-h200}
CHAT_S=${CHAT_S:-120}
CODE_N=${CODE_N:-300}
BUDGET_S=${BUDGET_S:-520}
CODE_NEED_S=${CODE_NEED_S:-170}
STEPS=${STEPS:-chat code}
SERVER_ARGS=${SERVER_ARGS:-}
WHL=${WHL_DIR:-$ROOT/.whl-serve}
MODEL_CONFIG=${MODEL_CONFIG:-$ROOT/replay/specs/models/llama-3.1-8b/config.json}
WORK=/tmp/server-check
T0=$(date +%s)
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$OUT"
SUM=$WORK/summary.txt
note() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" | tee -a "$SUM"; }
note "project $(git rev-parse --short HEAD 2>/dev/null || echo '?') (working tree), $(date -u +%FT%TZ)"

if ls "$WHL"/*.whl > /dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHL"/*.whl \
    > "$WORK/logs/pip_serve.log" 2>&1
  note "server wheels rc=$?: $(ls "$WHL"/*.whl | wc -l) into $SITE"
fi
export PYTHONPATH=$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1 VLLM_USE_FLASHINFER_SAMPLER=0 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
export VLLM_HOST_IP=127.0.0.1 TOKENIZERS_PARALLELISM=false
unset VLLM_USE_RUST_FRONTEND VLLM_RUST_FRONTEND_PATH
nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv > "$WORK/logs/nvidia_smi.txt" 2>&1
[ -n "${SKIP_ENV:-}" ] || $PY - > "$WORK/env.json" 2>"$WORK/logs/env.err" <<'EOF'
import json, platform, importlib
out = {"python": platform.python_version()}
for m in ("torch", "vllm", "aiohttp", "simpy", "fastapi", "uvicorn", "pynvml"):
    try:
        out[m] = getattr(importlib.import_module(m), "__version__", "?")
    except Exception as e:
        out[m] = f"not importable: {e}"
try:
    import torch
    out["cuda"] = torch.version.cuda
    out["gpu"] = torch.cuda.get_device_name(0)
except Exception as e:
    out["gpu"] = str(e)
print(json.dumps(out, indent=1))
EOF
[ -f "$WORK/env.json" ] && note "env: $(tr -d '\n' < "$WORK/env.json" | cut -c1-300)"

MODEL_DIR=/tmp/models/$(basename "$(dirname "$MODEL_CONFIG")")
mkdir -p "$MODEL_DIR" && cp "$MODEL_CONFIG" "$MODEL_DIR/config.json"
SERVE="$PY -m vllm.entrypoints.openai.api_server --model $MODEL_DIR --load-format dummy --skip-tokenizer-init --port 8011 --max-num-batched-tokens 8192 $SERVER_ARGS"
note "server command: $SERVE"

left() { echo $(( BUDGET_S - ($(date +%s) - T0) )); }
run_step() {  # name, seconds, replay args...
  local name=$1 secs=$2; shift 2
  local t=$(date +%s)
  timeout --signal=INT --kill-after=30 "$secs" $PY -m replay run "$@" --gpu "$GPU" --quiet --out "$WORK/$name" \
    > "$WORK/logs/$name.log" 2>&1
  local rc=$?
  note "$name: rc=$rc in $(( $(date +%s) - t ))s"
  grep -E "^(requests|duration|throughput|  TTFT|  TPOT|  ITL|  E2E|energy|  total|  per request|  request energy|arrival lag|steps|launched|server ready|the run stopped)" \
    "$WORK/logs/$name.log" | tee -a "$SUM"
  if [ -f "$WORK/$name/summary.json" ]; then
    $PY -m replay report "$WORK/$name" > "$WORK/logs/${name}_report.txt" 2>&1
    note "$name report rc=$?"; head -40 "$WORK/logs/${name}_report.txt" >> "$SUM"
    $PY - "$WORK/$name/summary.json" <<'EOF' | tee -a "$SUM"
import json, sys
d = json.load(open(sys.argv[1]))
r, m = d.get("reconstruction") or {}, (d.get("server_metrics") or [{}])[0]
print(f"  reconstructed steps {r.get('steps')} (gap {r.get('gap_s')}, budget {r.get('token_budget')}); "
      f"server iterations {m.get('iterations')}; attribution {json.dumps((d.get('attribution') or {}).get('tokens'))}")
EOF
  fi
}

for step in $STEPS; do
  case $step in
    chat) run_step chat "$(( $(left) - 10 ))" traces/chat.jsonl --online --duration-s "$CHAT_S" --launch "$SERVE" ;;
    code) if [ "$(left)" -lt "$CODE_NEED_S" ]; then note "code: skipped, $(left)s left"; continue; fi
          run_step code "$(( $(left) - 10 ))" traces/code.jsonl --offline --limit "$CODE_N" --launch "$SERVE" ;;
  esac
done
pkill -f vllm.entrypoints.openai.api_server 2>/dev/null
note "done after $(( $(date +%s) - T0 ))s"
cp "$SUM" "$OUT/summary.txt"
find "$WORK" -name '*.jsonl' -size +10M -exec gzip -f {} \;
tar -C "$WORK" -czf "$OUT/results.tar.gz" . 2>/dev/null
ls -la "$OUT"
