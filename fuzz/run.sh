#!/usr/bin/env bash
# Builds and runs the cargo-fuzz (libFuzzer) targets of mpu-sweeper on the stable toolchain.
#
#   fuzz/run.sh [TARGET|all] [SECONDS]   fuzz TARGET (default: all, one after the other) for
#                                        SECONDS each (default 600); extra libFuzzer flags in
#                                        FUZZ_ARGS, e.g. FUZZ_ARGS="-jobs=2 -workers=2"
#   fuzz/run.sh build [TARGET]           build only
#   fuzz/run.sh replay TARGET FILE...    run the target on these inputs once (MPU_FUZZ_DEBUG=1
#                                        also prints what server_answers did)
#   fuzz/run.sh tmin TARGET FILE         minimize a crash input into fuzz/regressions/TARGET/
#   fuzz/run.sh cmin TARGET              minimize the grown corpus of TARGET
#
# Build output goes to ~/.cache/mpu-sweeper/fuzz-target/SANITIZER (FUZZ_TARGET_DIR), the grown
# corpus to ~/.cache/mpu-sweeper/fuzz-corpus/TARGET (FUZZ_CORPUS_DIR), seeded from
# fuzz/corpus/TARGET; crash inputs to fuzz/artifacts/TARGET, run logs to
# ~/.cache/mpu-sweeper/fuzz-logs.
set -euo pipefail

fuzz_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$fuzz_dir")
cache=${MPU_SWEEPER_CACHE:-$HOME/.cache/mpu-sweeper}
# FUZZ_SANITIZER=address|none for every target; by default AddressSanitizer for the parsers
# and none for server_answers, which spends its time in the (safe Rust) AWS SDK and runs five
# times faster without it.
case ${FUZZ_SANITIZER:-} in
    '' | address | none) ;;
    *) echo "FUZZ_SANITIZER must be address or none" >&2; exit 2 ;;
esac
sanitizer_for() {
    if [ -n "${FUZZ_SANITIZER:-}" ]; then
        echo "$FUZZ_SANITIZER"
    elif [ "$1" = server_answers ]; then
        echo none
    else
        echo address
    fi
}
corpus_root=${FUZZ_CORPUS_DIR:-$cache/fuzz-corpus}
log_dir=$cache/fuzz-logs
all_targets=(max_age schedule server_answers)
cargo_fuzz_version=0.13.2

export PATH=$HOME/.cargo/bin:$PATH
# cargo-fuzz passes nightly-only flags (-Zsanitizer, -Cpasses=sancov-module...); the stable
# compiler accepts them with RUSTC_BOOTSTRAP=1.
export RUSTC_BOOTSTRAP=1
# Whatever CARGO_TARGET_DIR the main build uses: instrumented builds need a directory of their own.
unset CARGO_TARGET_DIR

install_cargo_fuzz() {
    if cargo fuzz --version 2>/dev/null | grep -q "cargo-fuzz $cargo_fuzz_version\b"; then
        return
    fi
    echo "installing cargo-fuzz $cargo_fuzz_version" >&2
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked
}

# Flags shared by every cargo-fuzz command for TARGET: release with debug assertions and
# overflow checks, a build directory per sanitizer.
build_flags() {
    local sanitizer
    sanitizer=$(sanitizer_for "$1")
    echo --fuzz-dir "$fuzz_dir" -O -a --sanitizer "$sanitizer" \
        --target-dir "${FUZZ_TARGET_DIR:-$cache/fuzz-target/$sanitizer}"
}

# libFuzzer flags per target.
target_flags() {
    local target=$1
    case $target in
        # Whole HTTP answers with XML bodies need room; a run that takes seconds is stuck.
        server_answers) echo -max_len=16384 -timeout=30 -rss_limit_mb=4096 ;;
        *) echo -max_len=512 -timeout=10 ;;
    esac
    if [ -f "$fuzz_dir/dicts/$target.dict" ]; then
        echo "-dict=$fuzz_dir/dicts/$target.dict"
    fi
}

check_target() {
    local target
    for target in "${all_targets[@]}"; do
        [ "$1" = "$target" ] && return
    done
    echo "unknown target '$1'; targets: ${all_targets[*]}" >&2
    exit 2
}

build() {
    local target=$1
    install_cargo_fuzz
    cd "$repo"
    # shellcheck disable=SC2046
    cargo fuzz build $(build_flags "$target") "$target"
}

fuzz() {
    local target=$1 seconds=$2
    local corpus=$corpus_root/$target artifacts=$fuzz_dir/artifacts/$target
    mkdir -p "$corpus" "$artifacts" "$log_dir"
    # The grown corpus lives outside the repository; the committed seeds are merged into it.
    cp -f "$fuzz_dir/corpus/$target"/* "$corpus/"
    local log start
    log=$log_dir/$target-$(date -u +%Y%m%dT%H%M%SZ).log
    start=$log.start
    touch "$start"
    echo "fuzzing $target for ${seconds}s; corpus $corpus, log $log" >&2
    cd "$repo"
    local status=0
    # shellcheck disable=SC2046,SC2086
    cargo fuzz run $(build_flags "$target") "$target" "$corpus" -- \
        -max_total_time="$seconds" -print_final_stats=1 \
        $(target_flags "$target") ${FUZZ_ARGS:-} 2>&1 | tee "$log" || status=$?
    local last
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    echo "== $target: ${last:-no status line}"
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" || true
    echo "corpus: $(find "$corpus" -type f | wc -l) files in $corpus"
    echo "new artifacts (crashes, timeouts, leaks): $(find "$artifacts" -type f -newer "$start" | wc -l) in $artifacts"
    rm -f "$start"
    return "$status"
}

# Absolute paths of the given files (the cargo-fuzz commands run from the repository root).
absolute() {
    local file
    for file in "$@"; do
        [ -f "$file" ] || { echo "no such file: $file" >&2; exit 2; }
        realpath "$file"
    done
}

command=${1:-all}
case $command in
    build)
        if [ $# -ge 2 ]; then
            check_target "$2"
            build "$2"
        else
            for target in "${all_targets[@]}"; do build "$target"; done
        fi
        ;;
    replay)
        [ $# -ge 3 ] || { echo "usage: $0 replay TARGET FILE..." >&2; exit 2; }
        check_target "$2"
        mapfile -t files < <(absolute "${@:3}")
        [ ${#files[@]} -eq $(($# - 2)) ] || exit 2
        build "$2"
        # shellcheck disable=SC2046
        cargo fuzz run $(build_flags "$2") "$2" "${files[@]}" -- -runs=1
        ;;
    tmin)
        [ $# -eq 3 ] || { echo "usage: $0 tmin TARGET FILE" >&2; exit 2; }
        check_target "$2"
        input=$(absolute "$3")
        build "$2"
        mkdir -p "$fuzz_dir/regressions/$2"
        out=$fuzz_dir/regressions/$2/$(basename "$3")
        # shellcheck disable=SC2046
        cargo fuzz tmin $(build_flags "$2") "$2" "$input" -- -exact_artifact_path="$out"
        echo "minimized input: $out"
        ;;
    cmin)
        [ $# -eq 2 ] || { echo "usage: $0 cmin TARGET" >&2; exit 2; }
        check_target "$2"
        build "$2"
        # shellcheck disable=SC2046
        cargo fuzz cmin $(build_flags "$2") "$2" "$corpus_root/$2"
        ;;
    all)
        seconds=${2:-600}
        failed=()
        for target in "${all_targets[@]}"; do
            build "$target"
            fuzz "$target" "$seconds" || failed+=("$target")
        done
        if [ ${#failed[@]} -gt 0 ]; then
            echo "failed: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
            exit 1
        fi
        ;;
    *)
        check_target "$command"
        seconds=${2:-600}
        build "$command"
        fuzz "$command" "$seconds"
        ;;
esac
