#!/usr/bin/env bash
# Hostile clients at full scale: tests/hostile.rs against a release build of pgsluice with
# 2,000 slowloris clients, 500 clients that never read their 100 MB results and 1,000 wrong
# passwords a second beside 8 ordinary clients. Prints the ordinary clients' p50/p99 quiet and
# under attack (p99 may be at most twice the quiet run's), the pooler's peak RSS and open
# files, and how many lookups the wrong passwords cost. Bounded: 20 s quiet, 20 s under attack.
set -euo pipefail
cd "$(dirname "$0")/.."
# 2,500 sockets on each side, and the servers'.
ulimit -n "$(ulimit -Hn)"
PGSLUICE_HOSTILE_FULL=1 cargo test --release --test hostile -- --nocapture 2>&1 |
    grep -E "hostile clients|panicked|test result"
