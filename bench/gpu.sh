#!/usr/bin/env bash
# One call on a lent GPU machine (or any machine: DEVICE=cpu): eager against compiled decode steps
# in-process, then a short load test against a server on the same machine. Figures go to $OUT.
#
#   bash bench/gpu.sh                      # on the GPU machine, from the repository root
#   DEVICE=cpu QUICK=1 bash bench/gpu.sh   # the same plumbing on a CPU, in a minute or two
#
# The machine has torch and transformers but not the server's web stack: wheels for it travel in
# .whl/ (see docs/batch-tradeoffs.md, "GPU runs") and install into /tmp/site. The package itself
# needs no install: a link named specserve to this folder, on PYTHONPATH.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench_results/gpu}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-float32}
QUICK=${QUICK:-0}
PY=${PY:-python3}
COMPILE=(${COMPILE:-on off})  # the modes bench decode compares (COMPILE=off: plumbing only)
SERVE_COMPILE=${SERVE_COMPILE:-auto}
WHEELS=${WHEELS:-.whl}
mkdir -p "$OUT" /tmp/specserve-path
ln -sfn "$PWD" /tmp/specserve-path/specserve
if compgen -G "$WHEELS/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl
  export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=/tmp/specserve-path${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/specserve-inductor}
MODELS=(${MODELS:-})  # e.g. MODELS="--target PATH --draft PATH --medusa PATH"; default: the bundled suite
if [ "$QUICK" = 1 ]; then
  BATCHES=(1 2); METHODS=(none draft); TOKENS=16; REPEATS=1; CONC=(1 2); PER_CLIENT=2
  SERVED=(none draft:auto ngram:auto)
else
  BATCHES=(1 4 16 32); METHODS=(none draft ngram medusa eagle); TOKENS=64; REPEATS=3; CONC=(1 4 16); PER_CLIENT=8
  SERVED=(none draft:auto ngram:auto eagle:auto)
fi
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(),
torch.cuda.get_device_name() if torch.cuda.is_available() else '')" | tee "$OUT/device.txt"

# 1. in-process: eager and compiled in one interleaved run, every method, MBU per batch size
"$PY" -m specserve bench decode "${MODELS[@]}" --device "$DEVICE" --dtype "$DTYPE" --compile "${COMPILE[@]}" \
  --methods "${METHODS[@]}" --k 3 --batch-sizes "${BATCHES[@]}" --max-new-tokens "$TOKENS" \
  --repeats "$REPEATS" --no-hf --out "$OUT/decode.json" 2>&1 | tail -n 60

# 2. over HTTP: a server on this machine (compiled where its warm-up finds it faster; nothing at idle
# time: the other methods' graphs would cost minutes of a short lease, so they compile at first need)
PORT=${PORT:-8765}
"$PY" -m specserve serve "${MODELS[@]}" --device "$DEVICE" --dtype "$DTYPE" --port "$PORT" \
  --compile "$SERVE_COMPILE" --no-idle-warm-up --log-level WARNING > "$OUT/server.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
  kill -0 $SERVER 2>/dev/null || { tail -n 40 "$OUT/server.log"; exit 1; }
  sleep 1
done
"$PY" -m specserve bench serve --url "http://127.0.0.1:$PORT" --methods "${SERVED[@]}" \
  --concurrency "${CONC[@]}" --max-tokens "$TOKENS" --requests-per-client "$PER_CLIENT" --warmup 1 \
  --out-dir "$OUT/serve" 2>&1 | tail -n 30
kill $SERVER; wait $SERVER 2>/dev/null || true
echo "wrote $OUT"
