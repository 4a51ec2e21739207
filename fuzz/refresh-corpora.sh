#!/usr/bin/env bash
# Remakes the committed corpora, fuzz/corpus/<target>/, which the main test
# suite replays (fuzz/harness/tests/replay_corpora.rs). For each target, one
# at a time: copy what is committed into a scratch directory, fuzz it for
# FUZZ_SECONDS (stable toolchain, no sanitizer, libFuzzer seed 1), minimise
# it with `cargo fuzz cmin` (set-cover merge: the fewest inputs keeping
# every feature), and commit the result if it fits the cap (MAX_FILES files
# and MAX_KIB KiB per target). A corpus over the byte cap is minimised again
# with a smaller -max_len (inputs longer than that are cut); one still over
# the cap keeps only its smallest inputs.
#
#   fuzz/refresh-corpora.sh                  # every target, 240 s each
#   fuzz/refresh-corpora.sh ring_reader      # one target
#   FUZZ_SECONDS=60 fuzz/refresh-corpora.sh  # shorter runs
#   FUZZ_SECONDS=0 fuzz/refresh-corpora.sh   # no fuzzing: minimise again
#                                            # what the last refresh found
#
# Logs go to fuzz/logs/refresh-<target>.log; the scratch corpora stay in
# fuzz/target/refresh-corpus/ until the next refresh.
set -euo pipefail
cd "$(dirname "$0")"

seconds=${FUZZ_SECONDS:-240}
max_files=${MAX_FILES:-400}
max_kib=${MAX_KIB:-512}
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "refresh-corpora.sh: cargo-fuzz is missing (cargo install cargo-fuzz --locked)" >&2
  exit 2
fi
[ -d seeds/fs_mount_read ] || ./gen-seeds.sh

cargo fuzz build -s none
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo fuzz list)
mkdir -p logs

files() { find "$1" -type f | wc -l; }
bytes() { find "$1" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }'; }
small() { [ "$(bytes "$1")" -le $((max_kib * 1024)) ]; }
fits() { [ "$(files "$1")" -le "$max_files" ] && small "$1"; }

for target in "${targets[@]}"; do
  scratch=target/refresh-corpus/$target
  log=logs/refresh-$target.log
  echo "== $target: ${seconds}s"
  if [ "$seconds" -gt 0 ] || [ ! -d "$scratch/fuzzed" ]; then
    rm -rf "$scratch"
    mkdir -p "$scratch/fuzzed"
    if [ -d "corpus/$target" ]; then
      find "corpus/$target" -type f -exec cp -t "$scratch/fuzzed" {} +
    fi
  fi
  : >"$log"
  if [ "$seconds" -gt 0 ] && ! cargo fuzz run -s none "$target" "$scratch/fuzzed" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -seed=1 -max_len=16384 \
      >>"$log" 2>&1; then
    tail -30 "$log"
    echo "refresh-corpora.sh: $target failed; see fuzz/$log and fuzz/artifacts/$target/" >&2
    exit 1
  fi
  for max_len in 16384 4096 1024 256; do
    rm -rf "$scratch/min"
    cp -r "$scratch/fuzzed" "$scratch/min"
    cargo fuzz cmin -s none "$target" "$scratch/min" -- \
      -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" -set_cover_merge=1 >>"$log" 2>&1
    # A shorter -max_len only makes inputs smaller; too many inputs are
    # trimmed below.
    small "$scratch/min" && break
  done
  # Still over the cap: keep the smallest inputs.
  find "$scratch/min" -type f -printf '%s %p\n' | sort -n | tail -n +"$((max_files + 1))" \
    | cut -d' ' -f2- | xargs -r rm -f
  while ! fits "$scratch/min"; do
    find "$scratch/min" -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2- \
      | xargs -r rm -f
  done
  rm -rf "corpus/$target"
  mkdir -p "corpus/$target"
  find "$scratch/min" -type f -exec cp -t "corpus/$target" {} +
  echo "   corpus/$target: $(files "corpus/$target") files, $(bytes "corpus/$target") bytes"
done
