#!/usr/bin/env bash
# Everything that needs a GPU, in one call: every GPU test, then every GPU benchmark, with JSON results.
#   benchmarks/gpu_check.sh OUT_DIR [attention_gpu.py args...]
# Writes to OUT_DIR:
#   environment.json     commit, GPU, driver, CUDA, torch and triton versions
#   gpu_tests.xml/.log   the kernel tests compiled for the GPU (tests/kernels) and every test marked `gpu`
#   attention_gpu.json   dense baselines (cuDNN, flash) against VMoBA and FlexAttention (benchmarks/attention_gpu.py)
#   crisscross_gpu.json  the criss-cross Triton kernel against its PyTorch path and dense SDPA
#   parallel_gpu.json    VMoBA under context parallelism on every GPU of the machine (one GPU: single-GPU mode)
#   training_gpu.json    training throughput (benchmarks/training_cpu.py --device cuda; needs diffusers)
#   summary.json         exit status and duration of each step, the test counts, the files written
# Commit the JSON under benchmarks/results/ (named after the GPU). Needs torch and triton; a step that fails
# is recorded and the next one still runs.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
shift || true
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 VMOBA_TEST_GPU=1
unset TRITON_INTERPRET
STEPS="$OUT/steps.tsv"
: > "$STEPS"

step() {  # step NAME COMMAND...: run, tee the log, record the exit status and duration
    local name=$1 start rc
    shift
    start=$(date +%s)
    "$@" 2>&1 | tee "$OUT/$name.log" | tail -25
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - start))" >> "$STEPS"
}

python3 - "$OUT/environment.json" <<'PY'
import json, subprocess, sys
import torch
def run(*cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
env = dict(commit=run("git", "rev-parse", "HEAD"), dirty=bool(run("git", "status", "--porcelain", "--untracked-files=no")),
           torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
           gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else None,
           nvidia_smi=run("nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm",
                          "--format=csv,noheader"))
try:
    import triton
    env["triton"] = triton.__version__
except Exception as exc:
    env["triton"] = f"unavailable: {exc!r}"
for name in ("flash_attn", "flash_attn_interface", "diffusers"):
    try:
        env[name] = __import__(name).__version__
    except Exception:
        env[name] = None
json.dump(env, open(sys.argv[1], "w"), indent=1)
print(json.dumps(env, indent=1))
PY

step gpu_tests timeout 900 python3 -m pytest -q -p no:cacheprovider --junitxml="$OUT/gpu_tests.xml" \
    tests/kernels $(grep -rlE "mark\.gpu|pytest\.mark\.gpu" tests --include='test_*.py' | grep -v '^tests/kernels/' | sort -u)
step attention_gpu python3 benchmarks/attention_gpu.py --out "$OUT" "$@"
step crisscross_gpu timeout 300 python3 benchmarks/crisscross_gpu.py --out "$OUT"
step parallel_gpu timeout 300 python3 benchmarks/parallel_gpu.py --out "$OUT"
if python3 -c "import diffusers" 2>/dev/null; then
    step training_gpu timeout 600 python3 benchmarks/training_cpu.py --device cuda --out "$OUT"
fi

python3 - "$OUT" <<'PY'
import json, os, sys
import xml.etree.ElementTree as ET
out = sys.argv[1]
steps = [dict(name=n, rc=int(rc), seconds=int(s)) for n, rc, s in
         (line.rstrip("\n").split("\t") for line in open(os.path.join(out, "steps.tsv")))]
summary = dict(steps=steps, files=sorted(f for f in os.listdir(out) if f.endswith((".json", ".xml", ".log"))))
try:
    suite = ET.parse(os.path.join(out, "gpu_tests.xml")).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    summary["tests"] = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
except (OSError, ET.ParseError, AttributeError) as exc:
    summary["tests"] = f"no report: {exc!r}"
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
print(json.dumps(summary, indent=1))
PY
rm -f "$STEPS"
