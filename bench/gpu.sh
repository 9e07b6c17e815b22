#!/usr/bin/env bash
# GPU readiness benchmark: one prepared script for a lent GPU machine.
#
# Runs, in the repository root, each step under `timeout`:
#   1. environment: nvidia-smi, python, torch, CUDA, cuDNN, the GPU's name;
#   2. dependencies: the project's Python packages; any missing are installed
#      OFFLINE from carried wheels ($BENCH_WHEELS, default .cache/gpu-wheels,
#      made beforehand on a machine with a package index: --fetch-wheels);
#   3. python -m bench.analyze --device cuda,cpu: per pipeline cold and warm
#      seconds, peak GPU memory, and the CPU figures of the same run (ratio);
#   4. python -m bench.end_to_end --device cuda --runs 2, when DCMTK storescu,
#      Orthanc and the node's packages are there (else one SKIP line).
# Everything printed also goes to "$OUT/gpu-report.txt" when $OUT is set (and
# the analysis figures to "$OUT/analyze.json").  Installs nothing from the
# network.  See docs/benchmarks-gpu.md.
#
# Usage: bash bench/gpu.sh [--quick] [--cpu-only] [--no-e2e]
#        bash bench/gpu.sh --fetch-wheels      (on a machine with a package index)
# Environment: BENCH_CPU_ONLY=1 (as --cpu-only), PYTHON (the interpreter),
#   BENCH_WHEELS (wheel folder), BENCH_GPU_PY (python version of the GPU
#   machine for --fetch-wheels, default 3.12), BENCH_ANALYZE_TIMEOUT,
#   BENCH_E2E_TIMEOUT (seconds).
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1

QUICK=0
CPU_ONLY=${BENCH_CPU_ONLY:-0}
E2E=1
FETCH=0
for arg in "$@"; do
    case "$arg" in
        --quick) QUICK=1 ;;
        --cpu-only) CPU_ONLY=1 ;;
        --no-e2e) E2E=0 ;;
        --fetch-wheels) FETCH=1 ;;
        -h | --help)
            sed -n '2,/^set -u/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
            exit 0
            ;;
        *)
            echo "bench/gpu.sh: unknown argument $arg (try --help)" >&2
            exit 2
            ;;
    esac
done

WHEELS=${BENCH_WHEELS:-.cache/gpu-wheels}
# Distributions the analysis needs that a plain CUDA + PyTorch image lacks
# (torch, torchvision, numpy, scipy, pillow, rich, pytest are expected there).
WHEEL_DISTS="pydicom highdicom pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pyjpegls
monai jsonschema jsonschema-specifications referencing rpds-py"
# Import names checked before the analysis.
ANALYZE_MODULES="torch torchvision numpy scipy rich pydicom highdicom monai pylibjpeg
libjpeg openjpeg jpeg_ls"
# Import names the node itself needs for the end-to-end run.
NODE_MODULES="pynetdicom sqlalchemy pydantic pydantic_settings click"

if [ "$QUICK" = 1 ]; then
    SIZE=small WARM=1 RUNS=1
    ANALYZE_TIMEOUT=${BENCH_ANALYZE_TIMEOUT:-180} E2E_TIMEOUT=${BENCH_E2E_TIMEOUT:-150}
else
    SIZE=full WARM=3 RUNS=2
    ANALYZE_TIMEOUT=${BENCH_ANALYZE_TIMEOUT:-330} E2E_TIMEOUT=${BENCH_E2E_TIMEOUT:-200}
fi
if [ "$CPU_ONLY" = 1 ]; then
    DEVICES=cpu E2E_DEVICE=cpu
else
    DEVICES=cuda,cpu E2E_DEVICE=cuda
fi

pick_python() {
    if [ -n "${PYTHON:-}" ]; then
        echo "$PYTHON"
    elif [ -x .venv/bin/python ] && .venv/bin/python -c 'import torch' >/dev/null 2>&1; then
        echo .venv/bin/python
    else
        command -v python3 || command -v python
    fi
}
PY=$(pick_python)
if [ -z "$PY" ]; then
    echo "bench/gpu.sh: no python found" >&2
    exit 2
fi

missing_modules() {  # the names in "$@" that $PY cannot import
    timeout 120 "$PY" - "$@" <<'EOF'
import importlib.util
import sys

print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))
EOF
}

fetch_wheels() {
    # Run where pip reaches a package index: same versions as this environment.
    # The GPU machine's glibc is taken as 2.39 at most: manylinux 2.17 to 2.39.
    local py_version=${BENCH_GPU_PY:-3.12} dist version n platforms=()
    for n in $(seq 17 39); do
        platforms+=(--platform "manylinux_2_${n}_x86_64")
    done
    platforms+=(--platform manylinux2014_x86_64)
    mkdir -p "$WHEELS"
    for dist in $WHEEL_DISTS; do
        version=$("$PY" -c "import importlib.metadata as m; print(m.version('$dist'))") || return 1
        "$PY" -m pip download -q --no-deps --only-binary=:all: -d "$WHEELS" \
            --python-version "$py_version" --implementation cp "${platforms[@]}" \
            "$dist==$version" || return 1
    done
    ls -l "$WHEELS"
    du -sh "$WHEELS"
    echo "carry $WHEELS with the working tree; bench/gpu.sh installs them offline if needed"
}

if [ "$FETCH" = 1 ]; then
    fetch_wheels
    exit $?
fi

step() { printf '\n=== %s ===\n' "$*"; }

main() {
    local rc=0 step_rc missing site
    echo "bench/gpu.sh $(date -u +%Y-%m-%dT%H:%M:%SZ): devices $DEVICES, size $SIZE," \
        "1 cold + $WARM warm runs, end-to-end runs $RUNS"

    step "environment"
    if command -v nvidia-smi >/dev/null 2>&1; then
        timeout 30 nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap \
            --format=csv || echo "nvidia-smi failed"
    elif [ "$CPU_ONLY" = 1 ]; then
        echo "nvidia-smi: not found (--cpu-only: not needed)"
    else
        echo "FAIL: nvidia-smi not found: no NVIDIA driver on this machine (--cpu-only to run without)"
        return 2
    fi
    echo "python: $PY ($("$PY" -c 'import sys; print(sys.version.split()[0])'))"
    echo "CPU cores: $(nproc)"

    step "dependencies"
    missing=$(missing_modules $ANALYZE_MODULES) || return 2
    if [ -n "$missing" ] && compgen -G "$WHEELS/*.whl" >/dev/null; then
        site="${TMPDIR:-/tmp}/dicom-node-gpu-site"
        echo "missing: $missing; installing offline from $WHEELS into $site"
        timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-compile \
            --no-cache-dir --upgrade --target "$site" "$WHEELS"/*.whl || return 2
        export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
        missing=$(missing_modules $ANALYZE_MODULES) || return 2
    fi
    if [ -n "$missing" ]; then
        echo "FAIL: python modules missing: $missing"
        echo "  prepare them where a package index is reachable: bash bench/gpu.sh --fetch-wheels"
        echo "  then carry $WHEELS with the working tree"
        return 3
    fi
    echo "analysis modules: all present"

    timeout 60 "$PY" - "$CPU_ONLY" <<'EOF' || return 2
import sys

import torch

cpu_only = sys.argv[1] == "1"
cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(f"torch {torch.__version__}, built with CUDA {torch.version.cuda}, cuDNN {cudnn}, "
      f"{torch.get_num_threads()} CPU threads")
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print(f"CUDA available: {torch.cuda.device_count()} device(s); cuda:0 {p.name}, "
          f"{p.total_memory / 2**30:.0f} GiB, compute capability {p.major}.{p.minor}, "
          f"{p.multi_processor_count} SMs")
elif cpu_only:
    print("CUDA not available (--cpu-only: not needed)")
else:
    print("FAIL: torch.cuda.is_available() is False: this torch cannot use the GPU")
    sys.exit(1)
EOF

    step "bench.analyze --device $DEVICES (timeout ${ANALYZE_TIMEOUT} s)"
    local json=()
    if [ -n "${OUT:-}" ]; then
        json=(--json "$OUT/analyze.json")
    fi
    local t0=$SECONDS
    timeout -k 10 "$ANALYZE_TIMEOUT" "$PY" -m bench.analyze --pipeline all \
        --device "$DEVICES" --warm "$WARM" --size "$SIZE" "${json[@]}"
    step_rc=$?
    echo "bench.analyze: exit $step_rc$([ $step_rc = 124 ] && echo ' (timed out)')" \
        "after $((SECONDS - t0)) s"
    [ $step_rc = 0 ] || rc=$step_rc

    step "bench.end_to_end --device $E2E_DEVICE --runs $RUNS (timeout ${E2E_TIMEOUT} s)"
    local tools="" tool
    for tool in storescu Orthanc; do
        command -v "$tool" >/dev/null 2>&1 || tools="$tools $tool"
    done
    missing=$(missing_modules $NODE_MODULES) || missing="?"
    if [ "$E2E" = 0 ]; then
        echo "SKIP end_to_end: --no-e2e"
    elif [ -n "$tools" ] || [ -n "$missing" ]; then
        echo "SKIP end_to_end: not on this machine:${tools:+ programs$tools}" \
            "${missing:+python modules $missing}"
    else
        t0=$SECONDS
        timeout -k 10 "$E2E_TIMEOUT" "$PY" -m bench.end_to_end --device "$E2E_DEVICE" \
            --runs "$RUNS"
        step_rc=$?
        echo "bench.end_to_end: exit $step_rc$([ $step_rc = 124 ] && echo ' (timed out)')" \
            "after $((SECONDS - t0)) s"
        [ $step_rc = 0 ] || rc=$step_rc
    fi

    step "done: exit $rc after $SECONDS s"
    return $rc
}

export PYTHONUNBUFFERED=1
if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    main 2>&1 | tee "$OUT/gpu-report.txt"
    exit "${PIPESTATUS[0]}"
fi
main
