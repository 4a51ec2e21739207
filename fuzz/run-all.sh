#!/usr/bin/env bash
# Builds every fuzz target (stable toolchain, no sanitizer) and runs each
# for SECONDS seconds, one process at a time. Exits non-zero if any target
# crashes, leaks memory past the RSS limit or times out; the reproducer is
# in fuzz/artifacts/<target>/ and the log in fuzz/logs/<target>.log.
# Each target starts from a copy of its committed corpus in
# fuzz/target/run-all-corpus/<target>/ (left there after the run); the
# committed corpus is only remade by refresh-corpora.sh.
#
#   fuzz/run-all.sh 60        # what CI runs
#   FUZZ_SEED=0 fuzz/run-all.sh 1800   # a random seed per target
#
# The seed is fixed (1) unless FUZZ_SEED says otherwise, so a smoke run
# explores the same inputs each time and a failure in CI reproduces.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${1:?usage: run-all.sh SECONDS}
seed=${FUZZ_SEED:-1}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "run-all.sh: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
[ -d seeds/fs_mount_read ] || ./gen-seeds.sh

cargo fuzz build -s none
mkdir -p logs
failed=()
for target in $(cargo fuzz list); do
  scratch=target/run-all-corpus/$target
  rm -rf "$scratch"
  mkdir -p "$scratch"
  if [ -d "corpus/$target" ]; then
    find "corpus/$target" -type f -exec cp -t "$scratch" {} +
  fi
  dirs=("$scratch")
  # fs_mount_read's seeds are the images its inputs patch, not inputs.
  [ -d "seeds/$target" ] && [ "$target" != fs_mount_read ] && dirs+=("seeds/$target")
  max_len=16384
  echo "== $target: ${seconds}s"
  if cargo fuzz run -s none "$target" "${dirs[@]}" -- \
      -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" -seed="$seed" \
      -max_total_time="$seconds" -print_final_stats=1 \
      >"logs/$target.log" 2>&1; then
    grep -E '^#[0-9]+[[:space:]]+DONE' "logs/$target.log" | tail -1 || true
    grep -E '^stat::number_of_executed_units' "logs/$target.log" || true
  else
    echo "!! $target failed; see fuzz/logs/$target.log and fuzz/artifacts/$target/"
    tail -30 "logs/$target.log"
    failed+=("$target")
  fi
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "failed targets: ${failed[*]}" >&2
  exit 1
fi
