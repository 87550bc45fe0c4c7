#!/usr/bin/env bash
# serve_smoke.sh: smoke-test vLLM 0.26.0's OpenAI-compatible server on the H200 device machine.
#
# Runs ON the device, after the gpu-kit's call-3-style install (vLLM and its 19 wheels already in $SITE, see
# ../shared/gpu-kit/README.md). It:
#   1. installs the server-stack wheels of .whl-serve/ (WHEELS.md beside this file) into $SITE, --no-deps;
#   2. starts `python3 -m vllm.entrypoints.openai.api_server` on a model directory holding only the
#      llama-3.1-8b config.json, with --load-format dummy --skip-tokenizer-init, log to $OUT/server.log;
#   3. waits for /health (HEALTH_WAIT_S, 240 s);
#   4. GET /v1/models; two streaming POST /v1/completions (token-id prompt, max_tokens 8, ignore_eos,
#      stream_options include_usage + continuous_usage_stats), the second also with "return_token_ids": true;
#      GET /metrics; the raw SSE lines are printed and saved;
#   5. stops the server (its whole process group) and writes $OUT/smoke_summary.txt.
# Files under $OUT (7): pip_serve.log server.log models.json sse_plain.txt sse_token_ids.txt metrics.txt
# smoke_summary.txt.  Exit: 0 all steps ok; 2 setup problem; 5 vLLM not installed in $SITE; 6 server never
# healthy; 7 a request failed.
#
# Environment: OUT (required there), SITE (/tmp/site), PORT (8011), HEALTH_WAIT_S (240), CONFIG (the config.json;
# default: replay/specs/models/llama-3.1-8b/config.json of this tree, else of /tmp/stage/p3/project),
# MAX_TOKENS (8), SERVER_ARGS (extra flags, e.g. "--enforce-eager" for a faster start without CUDA graphs).
set -uo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${OUT:?OUT must be set (the device tool sets it)}
SITE=${SITE:-/tmp/site}
PORT=${PORT:-8011}
HEALTH_WAIT_S=${HEALTH_WAIT_S:-240}
MAX_TOKENS=${MAX_TOKENS:-8}
SERVER_ARGS=${SERVER_ARGS:-}
WHL=${WHL_DIR:-$ROOT/.whl-serve}
URL=http://127.0.0.1:$PORT
SUMMARY=$OUT/smoke_summary.txt
T0=$(date +%s)

mkdir -p "$OUT"
: > "$SUMMARY"
note() { printf '[%4ss] %s\n' "$(( $(date +%s) - T0 ))" "$*" | tee -a "$SUMMARY"; }

# --- 0. preconditions ---------------------------------------------------------------------------------------
[ -d "$SITE/vllm" ] || { note "FAIL: no vllm in $SITE: run the kit's calls 1-3 (or its staging + pip part) first"; exit 5; }
ls "$WHL"/*.whl > /dev/null 2>&1 || { note "FAIL: no wheels in $WHL (carry .whl-serve)"; exit 2; }
if [ -z "${CONFIG:-}" ]; then
  for c in "$ROOT/replay/specs/models/llama-3.1-8b/config.json" \
           /tmp/stage/p3/project/replay/specs/models/llama-3.1-8b/config.json; do
    [ -f "$c" ] && { CONFIG=$c; break; }
  done
fi
[ -f "${CONFIG:-}" ] || { note "FAIL: llama-3.1-8b config.json not found (set CONFIG)"; exit 2; }
command -v curl > /dev/null || { note "FAIL: curl not found"; exit 2; }

# --- 1. the server stack ------------------------------------------------------------------------------------
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$WHL"/*.whl > "$OUT/pip_serve.log" 2>&1
note "pip (server wheels) rc=$? : $(ls "$WHL"/*.whl | wc -l) wheels into $SITE, $(ls "$SITE" | grep -c dist-info) dists there"

export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
export VLLM_USE_FLASHINFER_SAMPLER=0                 # required: flashinfer is not shipped
export VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1          # no network there
export VLLM_HOST_IP=127.0.0.1 TOKENIZERS_PARALLELISM=false
export VLLM_LOGGING_LEVEL=${VLLM_LOGGING_LEVEL:-INFO}
unset VLLM_USE_RUST_FRONTEND VLLM_RUST_FRONTEND_PATH  # the vllm-rs binary is trimmed out of the wheel

python3 -W ignore - <<'EOF' 2>&1 | tee -a "$SUMMARY"
import importlib
for m in ["fastapi", "starlette", "uvicorn", "prometheus_fastapi_instrumentator", "partial_json_parser",
          "watchfiles", "model_hosting_container_standards", "jmespath", "anyio", "h11", "click", "uvloop",
          "prometheus_client", "pydantic"]:
    try:
        mod = importlib.import_module(m)
        print(f"  import {m:34s} ok {getattr(mod, '__version__', '')}")
    except Exception as e:
        print(f"  import {m:34s} FAILED {type(e).__name__}: {e}")
EOF

# --- 2. the server ------------------------------------------------------------------------------------------
MODEL_DIR=$(mktemp -d /tmp/serve-model.XXXXXX)
cp "$CONFIG" "$MODEL_DIR/config.json"
note "model dir $MODEL_DIR (config.json from $CONFIG); port $PORT; extra args: ${SERVER_ARGS:-none}"
# setsid: the server and its engine-core/worker processes get a process group of their own, stopped as one below.
# shellcheck disable=SC2086
setsid python3 -m vllm.entrypoints.openai.api_server \
  --model "$MODEL_DIR" --served-model-name llama-3.1-8b \
  --load-format dummy --skip-tokenizer-init \
  --host 127.0.0.1 --port "$PORT" \
  --max-model-len 8192 --gpu-memory-utilization 0.90 --seed 0 \
  $SERVER_ARGS > "$OUT/server.log" 2>&1 < /dev/null &
SPID=$!
note "server pid $SPID"

stop_server() {
  kill -0 "$SPID" 2> /dev/null || return 0
  kill -TERM -- "-$SPID" 2> /dev/null || kill -TERM "$SPID" 2> /dev/null
  for _ in $(seq 30); do kill -0 "$SPID" 2> /dev/null || break; sleep 1; done
  if kill -0 "$SPID" 2> /dev/null; then
    kill -KILL -- "-$SPID" 2> /dev/null || kill -KILL "$SPID" 2> /dev/null
    note "server killed (SIGKILL after 30 s)"
  fi
  wait "$SPID" 2> /dev/null
  note "server stopped"
}
trap stop_server EXIT
trap 'exit 143' TERM INT                              # so that a timeout's SIGTERM still stops the server

# --- 3. /health ---------------------------------------------------------------------------------------------
UP=0
for _ in $(seq "$HEALTH_WAIT_S"); do
  if curl -sf -m 2 "$URL/health" > /dev/null 2>&1; then UP=1; break; fi
  kill -0 "$SPID" 2> /dev/null || break
  sleep 1
done
if [ $UP = 0 ]; then
  if kill -0 "$SPID" 2> /dev/null; then note "FAIL: /health not up after ${HEALTH_WAIT_S}s"
  else wait "$SPID"; note "FAIL: server exited rc=$? before /health answered"; fi
  echo "---- server.log (tail)"; tail -40 "$OUT/server.log"
  exit 6
fi
note "/health up"

# --- 4. requests --------------------------------------------------------------------------------------------
FAIL=0
code=$(curl -s -m 30 -o "$OUT/models.json" -w '%{http_code}' "$URL/v1/models")
note "GET /v1/models -> HTTP $code"; cat "$OUT/models.json"; echo
[ "$code" = 200 ] || FAIL=1

stream() {  # stream FILE EXTRA_JSON: one streaming completion, raw SSE lines to FILE and stdout
  local file=$1 extra=$2 body code
  body="{\"model\": \"llama-3.1-8b\", \"prompt\": [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16],
         \"max_tokens\": $MAX_TOKENS, \"ignore_eos\": true, \"temperature\": 0, \"stream\": true,
         \"stream_options\": {\"include_usage\": true, \"continuous_usage_stats\": true}$extra}"
  code=$(curl -sN -m 120 -o "$file" -w '%{http_code}' -H 'Content-Type: application/json' -d "$body" \
         "$URL/v1/completions")
  note "POST /v1/completions stream${extra:+ (${extra#, })} -> HTTP $code, $(grep -c '^data: ' "$file") data lines, [DONE]: $(grep -c '^data: \[DONE\]' "$file")"
  cat "$file"; echo
  [ "$code" = 200 ] && grep -q '^data: \[DONE\]' "$file"
}
stream "$OUT/sse_plain.txt" "" || FAIL=1
stream "$OUT/sse_token_ids.txt" ', "return_token_ids": true' || FAIL=1
grep -q '"token_ids":\[' "$OUT/sse_token_ids.txt" && note "return_token_ids: token_ids present in the chunks" \
  || note "return_token_ids: NO token_ids field in the chunks"

code=$(curl -s -m 30 -o "$OUT/metrics.txt" -w '%{http_code}' "$URL/metrics")
note "GET /metrics -> HTTP $code, $(grep -c '^vllm:' "$OUT/metrics.txt") vllm: sample lines"
grep -E '^vllm:(num_requests_running|generation_tokens_total|prompt_tokens_total|request_success_total|e2e_request_latency_seconds_count)' \
  "$OUT/metrics.txt" | head -12
[ "$code" = 200 ] || FAIL=1

# --- 5. stop ------------------------------------------------------------------------------------------------
stop_server
trap - EXIT
grep -E 'ERROR|Traceback' "$OUT/server.log" | grep -v 'WARNING' | head -5 | sed 's/^/  server.log: /' | tee -a "$SUMMARY"
note "done: $([ $FAIL = 0 ] && echo 'ALL OK' || echo 'SOME REQUEST FAILED')"
[ $FAIL = 0 ] || exit 7
exit 0
