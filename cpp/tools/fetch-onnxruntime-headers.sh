#!/usr/bin/env bash
# Fetch ONNX Runtime's C/C++ headers for the native build, without touching the system.
#
# The onnxruntime wheel ships libonnxruntime.so but no headers, and Debian 12 has no ONNX Runtime
# package. Debian 13's libonnxruntime-dev carries the headers: this downloads that one .deb through
# a private apt configuration (its own sources list, lists and cache under DEST) and unpacks it.
# Headers of C API level N work with any newer runtime library, so textcam needs onnxruntime >=
# the version fetched here (1.21).
#
# usage: fetch-onnxruntime-headers.sh DEST     -> DEST/include/onnxruntime/onnxruntime_c_api.h
set -euo pipefail
dest=${1:?usage: fetch-onnxruntime-headers.sh DEST}
mkdir -p "$dest"
dest=$(cd "$dest" && pwd)
if [ -f "$dest/include/onnxruntime/onnxruntime_c_api.h" ]; then
    exit 0
fi
mirror=${TEXTCAM_DEBIAN_MIRROR:-http://deb.debian.org/debian}
apt_root="$dest/apt"
mkdir -p "$apt_root/lists/partial" "$apt_root/cache/archives/partial" "$apt_root/etc/preferences.d" \
    "$apt_root/etc/sources.list.d"
echo "deb $mirror trixie main" > "$apt_root/etc/sources.list"
apt_options=(
    -o "Dir::Etc::SourceList=$apt_root/etc/sources.list"
    -o "Dir::Etc::SourceParts=$apt_root/etc/sources.list.d"
    -o "Dir::Etc::Preferences=$apt_root/etc/preferences"
    -o "Dir::Etc::PreferencesParts=$apt_root/etc/preferences.d"
    -o "Dir::State::Lists=$apt_root/lists"
    -o "Dir::Cache=$apt_root/cache"
    -o "Dir::State::status=/dev/null"
    -o "APT::Architecture=amd64"
    -o "Acquire::Languages=none"
    -o "APT::Sandbox::User=root"
)
apt-get "${apt_options[@]}" update -qq
(cd "$apt_root" && apt-get "${apt_options[@]}" download libonnxruntime-dev)
deb=$(ls "$apt_root"/libonnxruntime-dev_*.deb | head -n 1)
unpacked="$apt_root/unpacked"
rm -rf "$unpacked"
dpkg-deb -x "$deb" "$unpacked"
header=$(find "$unpacked" -name onnxruntime_c_api.h | head -n 1)
if [ -z "$header" ]; then
    echo "fetch-onnxruntime-headers: $deb holds no onnxruntime_c_api.h" >&2
    exit 1
fi
mkdir -p "$dest/include/onnxruntime"
cp "$(dirname "$header")"/*.h "$dest/include/onnxruntime/"
rm -rf "$apt_root"
echo "ONNX Runtime headers in $dest/include/onnxruntime ($(basename "$deb"))"
