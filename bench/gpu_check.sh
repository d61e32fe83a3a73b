#!/usr/bin/env bash
# One command for a lent GPU: bench/gpu_check.sh OUT_DIR
#
# 1. installs any carried wheels (xformers, DALI: .whl/ and /var/tmp/whl, as ../shared/tools/device-wheels
#    lays them out, split wheels reassembled) into a --target folder and fastdino itself (editable, no deps) when
#    it does not import; prints what is missing (no xformers / no DALI: those tests skip, the summary says so);
# 2. pytest tests -m cuda (no -x: one failure must not hide the rest)           -> OUT_DIR/tests.xml
# 3. the CUDA micro-benchmarks (loss, EMA, student, clip)                        -> OUT_DIR/bench.json, bench_rows.json
# 4. the whole training step, dino-mc-vits8 and dino-mc-vits16, batch 64, bf16, fed by the pipeline and on a
#    prefetched batch, fastdino and reference                                   -> OUT_DIR/step.json, step_rows.json
# 5. OUT_DIR/summary.md (one page, built by bench/gpu_summary.py from the files above), OUT_DIR/env.json, OUT_DIR/log.
# Eight files in all: what one call of the project's device tool brings back.
# Without a CUDA GPU it says so, writes a summary saying so, and exits 0. With one, it exits 1 if a phase failed.
#
# Time: the phases run under timeouts that add up to 7 min 50 s (SETUP_S + ENV_S + TESTS_S + BENCH_S + STEP_S), so
# the whole check ends within 8 minutes whatever happens; a phase cut short is marked "timeout" in the summary.
# Expected on one H100 (SXM, 989 dense bf16 TFLOP/s), about 5-6 minutes:
# - whole step: ViT-S/8 on DINO-MC views is 3323 tokens per image (2 x 785 + 530 + 401 + 325 + 226 + 170 + 101);
#   24 d^2 = 3.5 MFLOP per token per block for the linear layers and 4 d sum(T_v^2) = 2.9 GFLOP per image per block
#   for attention (d = 384, 12 blocks) give 175 GFLOP forward per image, 3x that forward+backward: 34 TFLOP for the
#   student at batch 64, plus 6 TFLOP for the teacher's forward on the two global views: ~40 TFLOP per step. At
#   ~35% of peak (ViT-S's narrow matrices) that is ~0.12 s per step; ViT-S/16 (812 tokens per image) ~8 TFLOP,
#   ~0.04 s. pytest-benchmark runs max(5, 1 s / step) rounds (--benchmark-max-time 1) plus a warm-up and a
#   peak-memory step: ~1.5 s of GPU work per row, 12 s for the 8 rows. Setup dominates: building the two models
#   and starting the DataLoader workers (~8 s a row) and the first compilations (~20 s): ~1.5-2 min.
# - micro-benchmarks: the student at B=64 is the same 34 TFLOP (~0.1 s a round), the loss, the EMA and the
#   gradient clip move under 1 GB a call (well under 1 ms): ~10 s of GPU work, ~1 min with model builds, imports
#   and Triton compilation.
# - tests: a few dozen small cases; Triton JIT compilation dominates: ~1-1.5 min.
# - install, machine description (python -m xformers.info) and imports: ~0.5 min.
set -uo pipefail

OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
PY=${PYTHON:-python3}
SETUP_S=${SETUP_S:-40} ENV_S=${ENV_S:-20} TESTS_S=${TESTS_S:-170} BENCH_S=${BENCH_S:-90} STEP_S=${STEP_S:-150}
export PYTHONUNBUFFERED=1
STATE=$(mktemp -d)
trap 'rm -rf "$STATE"' EXIT
: > "$STATE/phases.tsv"
exec > >(tee -a "$OUT/log") 2>&1

phase() {  # phase NAME TIMEOUT_S CMD...: run under a timeout, record (name, exit code, seconds)
  local name=$1 limit=$2; shift 2
  echo "== $name (at most ${limit} s): $*"
  local t0=$SECONDS
  timeout --kill-after=10 "$limit" "$@"
  local rc=$?
  printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" >> "$STATE/phases.tsv"
  echo "== $name: exit $rc after $((SECONDS - t0)) s"
  return 0
}

"$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)"
case $? in
  0) ;;
  3) echo "gpu_check: no CUDA GPU is visible (torch.cuda.is_available() is False): nothing to check here; exit 0"
     "$PY" bench/gpu_summary.py "$OUT" --no-gpu
     exit 0 ;;
  *) echo "gpu_check: '$PY' cannot import torch; set PYTHON to the interpreter of the project's environment" >&2
     exit 2 ;;
esac

# --- 1. carried wheels, then fastdino itself --------------------------------------------------------------------
install() {
  local site=${FASTDINO_SITE:-/tmp/fastdino-site} dirs=() wheels=()
  for d in ${FASTDINO_WHEELS:-.whl /var/tmp/whl}; do [ -d "$d" ] && dirs+=("$d"); done
  if [ ${#dirs[@]} -gt 0 ]; then
    mkdir -p "$STATE/wheels"
    # device-wheels splits big wheels into NAME.whl.piece-00, -01, ... (possibly in several part folders)
    while IFS= read -r base; do
      find "${dirs[@]}" -name "$base.piece-*" -printf '%f %p\n' | sort | cut -d' ' -f2- | xargs cat > "$STATE/wheels/$base"
    done < <(find "${dirs[@]}" -name '*.whl.piece-00' -printf '%f\n' | sed 's/\.piece-00$//' | sort -u)
    while IFS= read -r w; do wheels+=("$w"); done < <(find "${dirs[@]}" "$STATE/wheels" -name '*.whl')
  fi
  if [ ${#wheels[@]} -gt 0 ]; then
    echo "installing ${#wheels[@]} carried wheel(s) into $site: ${wheels[*]##*/}"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$site" "${wheels[@]}" || return 1
  else
    echo "no carried wheels (.whl/ or /var/tmp/whl); README 'On a GPU' says how to bring xformers or DALI"
  fi
  if ! "$PY" -c "import fastdino.kernels, fastdino.dataloading" 2>/dev/null; then
    "$PY" -m pip install -q --no-deps --no-build-isolation -e . || return 1
  fi
}
SITE=${FASTDINO_SITE:-/tmp/fastdino-site}
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
phase setup "$SETUP_S" bash -c "$(declare -f install); STATE='$STATE' PY='$PY' install"
phase env "$ENV_S" "$PY" bench/gpu_summary.py "$OUT" --write-env  # OUT_DIR/env.json: device, versions, operators

# --- 2-4. tests, micro-benchmarks, whole step --------------------------------------------------------------------
stamp="$STATE/stamp" && touch "$stamp"
copy_rows() {  # bench/conftest.py writes bench/results/last_run.json; copy it only if this run wrote it
  if [ bench/results/last_run.json -nt "$stamp" ]; then cp bench/results/last_run.json "$OUT/$1"; fi
  touch "$stamp"
}
phase tests "$TESTS_S" "$PY" -m pytest tests -m cuda -q -rfEs -p no:cacheprovider --junitxml "$OUT/tests.xml"
phase bench "$BENCH_S" "$PY" -m pytest bench -k "cuda and not train_step" --benchmark-only -q -p no:cacheprovider \
  --benchmark-max-time=0.5 --benchmark-min-rounds=5 --benchmark-json "$OUT/bench.json"
copy_rows bench_rows.json
phase step "$STEP_S" "$PY" -m pytest bench/test_train_step.py -k cuda --benchmark-only -q -p no:cacheprovider \
  --benchmark-max-time=1 --benchmark-min-rounds=5 --benchmark-json "$OUT/step.json"
copy_rows step_rows.json

# --- 5. the one-page summary -------------------------------------------------------------------------------------
"$PY" bench/gpu_summary.py "$OUT" --phases "$STATE/phases.tsv"
awk -F'\t' '$2 != 0 { bad = 1 } END { exit bad }' "$STATE/phases.tsv"
