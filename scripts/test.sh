#!/usr/bin/env bash
# Set up and run every test from a fresh machine (the README's test command; CI runs it):
#   1. Debian packages the native build needs, when missing (as root; otherwise it says what to install)
#   2. the virtual environment with textcam and its export/dev extras
#   3. libtextcam (cpp/) and its GoogleTest suite, then again as a Debug build under ASan/UBSan
#   4. the Python bindings (pip install ./native), so pytest holds the C++ core to the numpy path
#   5. a second environment for the Triton tests: the PyTriton wheel's tritonserver (Python backend only;
#      it pins numpy<2) with textcam installed, as a server's Python would have it
#   6. pytest (arguments are passed on: scripts/test.sh -k native)
# Options, before pytest's arguments (docs/development.md, "Another machine profile"):
#   --portable     run pytest as on an AVX2-only x86-64 CPU (no AVX-512, VNNI, AMX or bfloat16): every
#                  library's CPUID is masked by scripts/portable/cpuid_avx2.c (LD_PRELOAD)
#   --under-load   run pytest with every core kept busy by a spinning process (stopped on exit)
# TEXTCAM_VENV names the environment (default .venv; the Triton one is its name + -triton);
# TEXTCAM_SKIP_NATIVE=1 skips steps 1, 3 and 4; TEXTCAM_SKIP_TRITON=1 skips step 5 (those tests skip).
set -euo pipefail
cd "$(dirname "$0")/.."
venv=${TEXTCAM_VENV:-.venv}
jobs=$(nproc 2>/dev/null || echo 2)
portable=0
under_load=0
while [ $# -gt 0 ]; do
    case "$1" in
        --portable) portable=1; shift ;;
        --under-load) under_load=1; shift ;;
        *) break ;;
    esac
done

if [ "${TEXTCAM_SKIP_NATIVE:-0}" != "1" ]; then
    packages=(cmake g++ ninja-build pkg-config nlohmann-json3-dev libgtest-dev libturbojpeg0-dev libpng-dev libssl-dev)
    missing=()
    for package in "${packages[@]}"; do
        dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
    done
    if [ ${#missing[@]} -gt 0 ]; then
        if [ "$(id -u)" -ne 0 ]; then
            echo "scripts/test.sh: the native build needs: sudo apt-get install -y ${missing[*]}" >&2
            exit 1
        fi
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
fi

python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
"$venv/bin/python" -m pip install --quiet -e '.[export,dev]'

if [ "${TEXTCAM_SKIP_NATIVE:-0}" != "1" ]; then
    python=$(cd "$(dirname "$venv/bin/python")" && pwd)/python
    cmake -S cpp -B build/cpp -G Ninja -DPython3_EXECUTABLE="$python" >/dev/null
    cmake --build build/cpp -j "$jobs"
    ctest --test-dir build/cpp --output-on-failure -j "$jobs"
    headers=$(pwd)/build/cpp/_deps/onnxruntime/include/onnxruntime
    cmake -S cpp -B build/cpp-sanitize -G Ninja -DCMAKE_BUILD_TYPE=Debug -DTEXTCAM_SANITIZE=ON \
        -DTEXTCAM_ONNXRUNTIME_INCLUDE_DIR="$headers" -DPython3_EXECUTABLE="$python" >/dev/null
    cmake --build build/cpp-sanitize -j "$jobs"
    ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
        ctest --test-dir build/cpp-sanitize --output-on-failure -j "$jobs"
    "$venv/bin/python" -m pip install --quiet ./native \
        --config-settings=cmake.define.TEXTCAM_ONNXRUNTIME_INCLUDE_DIR="$headers"
    export TEXTCAM_REQUIRE_NATIVE=1  # the native tests fail, not skip, if the core did not install
fi

if [ "${TEXTCAM_SKIP_TRITON:-0}" != "1" ]; then
    triton_venv="$venv-triton"
    python3 -m venv "$triton_venv"
    "$triton_venv/bin/python" -m pip install --quiet nvidia-pytriton 'tritonclient[grpc]' 'numpy<2' -e .
    TEXTCAM_TRITON_PYTHON="$(cd "$triton_venv/bin" && pwd)/python"
    export TEXTCAM_TRITON_PYTHON
    export TEXTCAM_REQUIRE_TRITON=1  # the server tests fail, not skip, if that environment is broken
fi

if [ "$portable" = 1 ]; then
    mkdir -p build/portable
    gcc -O2 -Wall -Wextra -shared -fPIC -o build/portable/libcpuid_avx2.so scripts/portable/cpuid_avx2.c -ldl -lpthread
    export LD_PRELOAD="$(pwd)/build/portable/libcpuid_avx2.so${LD_PRELOAD:+:$LD_PRELOAD}"
    export TEXTCAM_PORTABLE_REQUIRED=1  # the shim stops every process if this kernel cannot trap CPUID
    # the documented switches too, for the libraries that have one (oneDNN inside torch, ATen's kernels)
    export ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2
fi
if [ "$under_load" = 1 ]; then
    spinners=()
    for _ in $(seq "$jobs"); do
        nice -n 0 sh -c 'while :; do :; done' &
        spinners+=($!)
    done
    trap 'kill "${spinners[@]}" 2>/dev/null' EXIT
fi

"$venv/bin/python" -m pytest "$@"
