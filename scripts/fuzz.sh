#!/usr/bin/env bash
# Runs every cargo-fuzz target for SECONDS each (default 30), on stable Rust
# (`-s none`: no sanitizer, so no nightly needed). New inputs that grow coverage
# go to a scratch corpus dir (fuzz/target/corpus-work/<target>), seeded from the
# committed fuzz/corpus/<target>; crashes land in fuzz/artifacts/<target>/ and
# fail the script. Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."

secs="${1:-30}"
shift || true
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install --locked cargo-fuzz
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
# The fuzz crate builds into its own target dir (fuzz/target), never the main one.
unset CARGO_TARGET_DIR
echo "== building fuzz targets"
cargo fuzz build -s none --fuzz-dir fuzz
for t in "${targets[@]}"; do
  work="fuzz/target/corpus-work/$t"
  mkdir -p "$work"
  echo "== fuzz $t for ${secs}s"
  cargo fuzz run -s none --fuzz-dir fuzz "$t" "$work" "fuzz/corpus/$t" -- \
    -max_total_time="$secs" -print_final_stats=1 -max_len=8192 2>&1 | tail -n 12
done
echo "== fuzz: no crashes"
