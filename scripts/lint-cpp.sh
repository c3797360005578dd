#!/usr/bin/env bash
# C++ lint: clang-format (style in cpp/.clang-format) and clang-tidy (checks in cpp/.clang-tidy) over
# libtextcam, the bindings and the examples. Needs a configured build for compile_commands.json
# (scripts/test.sh makes build/cpp). Installs clang-format and clang-tidy when missing (as root).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build/cpp}
missing=()
for package in clang-format clang-tidy; do
    command -v "$package" >/dev/null || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "scripts/lint-cpp.sh: needs: sudo apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
mapfile -t sources < <(find cpp/src cpp/include cpp/tests examples native/src \
    \( -name '*.cpp' -o -name '*.hpp' -o -name '*.h' -o -name '*.c' \) | sort)
clang-format --dry-run --Werror "${sources[@]}"
mapfile -t units < <(printf '%s\n' "${sources[@]}" | grep -E '^(cpp/src|examples)/.*\.cpp$' | grep -v tensorrt_runner)
# tensorrt_runner.cpp needs TensorRT's headers; it is checked where they exist
clang-tidy -p "$build" --quiet --warnings-as-errors='*' "${units[@]}"
echo "C++ lint: clean (${#sources[@]} files formatted, ${#units[@]} units tidy)"
