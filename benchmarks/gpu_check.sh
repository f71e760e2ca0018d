#!/usr/bin/env bash
# The prepared device check: one command, about 8 minutes at most on one GPU (each step has its own timeout).
#
#   bash benchmarks/gpu_check.sh [--device cuda|cpu] [--quick] [--no-speed] [--out DIR]
#
# Defaults: --device cuda; --out $OUT when set (the device machine's result folder), else benchmarks/results/gpu_check.
# Steps: (a) set-up: when the package does not import and .whl/ exists (benchmarks/gpu_wheels.sh fills it on a
# machine with network), install those wheels and this tree, offline; print the versions; (b) correctness: the
# device_check tests (tests/test_on_device.py) on the device, as JUnit XML; (c) speed: benchmarks/gpu_speed.py when
# the tree has it; (d) gpu_check.json: versions, per-test outcomes and durations, step wall times, exit status.
# Exits non-zero when a test failed or a step failed or timed out; gpu_check.json is written first in any case.
# --quick: the speed step's short mode (the tests are the same). --no-speed: set-up and tests only (about 90 s on one
# H100: a re-check of fixes when little device time is left). CI runs `--device cpu --quick`
# (tests/test_gpu_check.py). Environment: PYTHON (default python3), GPU_CHECK_WORKERS (pytest-xdist workers:
# default 4 on CUDA, none on the CPU).
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."

DEVICE=cuda QUICK=0 SPEED=1 OUTDIR=${OUT:-benchmarks/results/gpu_check}
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=${2:-}; shift 2 ;;
    --device=*) DEVICE=${1#*=}; shift ;;
    --quick) QUICK=1; shift ;;
    --no-speed) SPEED=0; shift ;;
    --out) OUTDIR=${2:-}; shift 2 ;;
    --out=*) OUTDIR=${1#*=}; shift ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --device cuda|cpu, --quick, --no-speed, --out DIR)" >&2
       exit 2 ;;
  esac
done
case "$DEVICE" in cuda|cpu) ;; *) echo "gpu_check.sh: --device must be cuda or cpu, not '$DEVICE'" >&2; exit 2 ;; esac
if [ -z "$OUTDIR" ]; then echo "gpu_check.sh: --out needs a folder" >&2; exit 2; fi
mkdir -p "$OUTDIR" || exit 2
OUTDIR=$(cd "$OUTDIR" && pwd)
PYTHON=${PYTHON:-python3}
# Seconds per step: on one GPU 60 + 170 + 240 stays under 8 minutes (TOTAL_LIMIT); the CPU (CI) is slower and has
# more time. The speed step gets at least its own limit and at most what set-up and tests left of TOTAL_LIMIT (less
# REPORT_SECONDS for the report): on an H100 they took about 75 s of their 230, and the time they leave lets the
# compiled training cases run, which a fixed 240 s left out. gpu_speed.py gets a budget 40 s short of its limit, so
# it skips what does not fit and ends by itself (its imports and start-up come before its budget starts).
if [ "$DEVICE" = cuda ]; then SETUP_LIMIT=60 TESTS_LIMIT=170 SPEED_LIMIT=240 WORKERS=${GPU_CHECK_WORKERS:-4}
else SETUP_LIMIT=120 TESTS_LIMIT=900 SPEED_LIMIT=600 WORKERS=${GPU_CHECK_WORKERS:-0}; fi
TOTAL_LIMIT=$((SETUP_LIMIT + TESTS_LIMIT + SPEED_LIMIT)) REPORT_SECONDS=10

now() { date +%s%N; }  # nanoseconds
SCRIPT_START=$(now)
STEPS_FILE=$(mktemp)  # "name status seconds" lines, for the report
trap 'rm -f "$STEPS_FILE"' EXIT
record() { echo "$1 $2 $(( ($(now) - $3) / 1000000 ))" >> "$STEPS_FILE"; }  # milliseconds
status_of() {  # a command's exit code as a word: timeouts are named
  case "$1" in 0) echo ok ;; 124|137) echo timeout ;; *) echo "failed($1)" ;; esac
}

echo "== gpu_check: device $DEVICE, results in $OUTDIR"

# --- (a) set-up ---------------------------------------------------------------------------------------------------
start=$(now)
INSTALLED=false
if "$PYTHON" -c "import s3prl_distill, s3prl" >/dev/null 2>&1; then
  setup_status=ok
  echo "== set-up: s3prl_distill imports; nothing installed"
elif [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  echo "== set-up: installing $(ls .whl/*.whl | wc -l) wheels from .whl/ and this tree (offline, into site-packages)"
  timeout -k 10 "$SETUP_LIMIT" bash -c "
    '$PYTHON' -m pip install -q --no-index --no-deps --no-compile .whl/*.whl &&
    '$PYTHON' -m pip install -q --no-index --no-deps --no-build-isolation -e ." > "$OUTDIR/install.log" 2>&1
  setup_status=$(status_of $?)
  INSTALLED=true
  tail -5 "$OUTDIR/install.log"
else
  setup_status="failed(no-package)"
  echo "gpu_check.sh: s3prl_distill does not import with $PYTHON and there is no .whl/ folder: run" \
       "benchmarks/gpu_wheels.sh on a machine with network and carry .whl, or install the package" >&2
fi
VERSIONS=$(timeout 60 "$PYTHON" - <<'PY' 2>/dev/null
import importlib.metadata as metadata, json, platform
import torch

def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"

print(json.dumps({
    "python": platform.python_version(), "torch": torch.__version__,
    "cuda": torch.version.cuda or "none (CPU build)",
    "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none",
    "torchaudio": version("torchaudio"), "s3prl": version("s3prl"), "transformers": version("transformers"),
    "s3prl_distill": version("s3prl-distill"),
}))
PY
) || VERSIONS='{}'
echo "== versions: $VERSIONS"
record setup "$setup_status" "$start"

# --- (b) correctness --------------------------------------------------------------------------------------------
start=$(now)
JUNIT="$OUTDIR/device_tests.xml"
rm -f "$JUNIT"
if [ "$setup_status" = ok ]; then
  echo "== correctness: device_check tests on $DEVICE (limit ${TESTS_LIMIT} s)"
  parallel=()
  if [ "$WORKERS" != 0 ]; then parallel=(-n "$WORKERS"); fi
  S3PRL_DISTILL_TEST_DEVICE=$DEVICE CUBLAS_WORKSPACE_CONFIG=:4096:8 timeout -k 10 "$TESTS_LIMIT" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -m device_check -rs "${parallel[@]}" --junitxml "$JUNIT" \
    tests/test_on_device.py 2>&1 | tee "$OUTDIR/device_tests.log" | tail -25
  tests_status=$(status_of $?)
else
  tests_status="not-run(set-up)"
fi
record tests "$tests_status" "$start"

# --- (c) speed ----------------------------------------------------------------------------------------------------
start=$(now)
if [ "$SPEED" = 0 ]; then
  speed_status="skipped"
  echo "== speed: skipped (--no-speed)"
elif [ ! -f benchmarks/gpu_speed.py ]; then
  speed_status="absent"
  echo "== speed: benchmarks/gpu_speed.py is not in this tree: no speed figures this time"
elif [ "$setup_status" != ok ]; then
  speed_status="not-run(set-up)"
else
  left=$((TOTAL_LIMIT - REPORT_SECONDS - (start - SCRIPT_START) / 1000000000))
  if [ "$left" -gt "$SPEED_LIMIT" ]; then SPEED_LIMIT=$left; fi
  echo "== speed: benchmarks/gpu_speed.py (limit ${SPEED_LIMIT} s of the ${TOTAL_LIMIT} s in all)"
  speed_args=()
  if [ "$QUICK" = 1 ]; then speed_args=(--quick); else speed_args=(--budget-s $((SPEED_LIMIT - 40))); fi
  timeout -k 10 "$SPEED_LIMIT" "$PYTHON" benchmarks/gpu_speed.py --device "$DEVICE" "${speed_args[@]}" \
    --out "$OUTDIR/gpu_speed.json" 2>&1 | tee "$OUTDIR/gpu_speed.log" | tail -15
  speed_status=$(status_of $?)
fi
record speed "$speed_status" "$start"

# --- (d) the report -----------------------------------------------------------------------------------------------
exit_status=0
for status in "$setup_status" "$tests_status" "$speed_status"; do
  case "$status" in ok|absent|skipped) ;; *) exit_status=1 ;; esac
done
DEVICE=$DEVICE QUICK=$QUICK INSTALLED=$INSTALLED VERSIONS=$VERSIONS STEPS_FILE=$STEPS_FILE EXIT_STATUS=$exit_status \
  JUNIT=$JUNIT REPORT="$OUTDIR/gpu_check.json" LIMITS="$SETUP_LIMIT $TESTS_LIMIT $SPEED_LIMIT $TOTAL_LIMIT" \
  "$PYTHON" - <<'PY'
import json, os
import xml.etree.ElementTree as ElementTree

tests = []
if os.path.exists(os.environ["JUNIT"]):
    for case in ElementTree.parse(os.environ["JUNIT"]).iter("testcase"):
        outcome, reason = "passed", ""
        for kind in ("failure", "error", "skipped"):
            found = case.find(kind)
            if found is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[kind]
                reason = (found.get("message") or "").strip()[:500]
        tests.append({"name": case.get("name"), "outcome": outcome, "seconds": round(float(case.get("time", 0)), 3),
                      **({"reason": reason} if reason else {})})
steps = {}
with open(os.environ["STEPS_FILE"]) as lines:
    for line in lines:
        name, status, seconds = line.split()
        steps[name] = {"status": status, "seconds": round(int(seconds) / 1000, 2)}
counts = {outcome: sum(t["outcome"] == outcome for t in tests) for outcome in ("passed", "skipped", "failed", "error")}
report = {
    "device": os.environ["DEVICE"], "quick": os.environ["QUICK"] == "1",
    "installed_wheels": os.environ["INSTALLED"] == "true", "versions": json.loads(os.environ["VERSIONS"] or "{}"),
    "steps": steps, "test_counts": counts, "tests": tests, "exit_status": int(os.environ["EXIT_STATUS"]),
    "limits_s": dict(zip(("setup", "tests", "speed", "total"), map(int, os.environ["LIMITS"].split()))),
}
with open(os.environ["REPORT"], "w") as file:
    json.dump(report, file, indent=1)
print(f"== gpu_check: {counts['passed']} passed, {counts['skipped']} skipped, {counts['failed']} failed, "
      f"{counts['error']} errors; steps: " + ", ".join(f"{k} {v['status']} {v['seconds']:.0f} s" for k, v in steps.items()))
PY
echo "== gpu_check.json written to $OUTDIR (exit status $exit_status)"
exit "$exit_status"
