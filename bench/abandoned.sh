#!/usr/bin/env bash
# Abandoned clients at scale: tests/abandoned.rs with TRIALS trials (default 10,000) against a
# release build of pgsluice, printing how long they took, the servers probed and the RSS
# before and after. Bounded: each trial waits at most a minute for any answer.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${TRIALS:-10000}
PGSLUICE_ABANDON_TRIALS=$TRIALS cargo test --release --test abandoned -- --nocapture 2>&1 |
    grep -E "abandoned clients|panicked|test result"
