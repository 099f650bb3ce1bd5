#!/usr/bin/env bash
# Long churn: tests/churn.rs for CHURN_SECONDS (default 600) with a reload every RELOAD
# seconds (default 30) against a release build of pgsluice: a primary and two replicas,
# clients that connect per transaction, simple, extended and prepared queries, COPY in and
# out, cancels, a replica restarted halfway. Prints the work done, the errors (none may be
# unexpected, and those there are listed), the RSS after the warm-up and at the end (at most
# 10 % more) and the open files (no more). The whole output is kept in target/churn.log.
set -euo pipefail
cd "$(dirname "$0")/.."
PGSLUICE_CHURN_SECONDS=${CHURN_SECONDS:-600} PGSLUICE_CHURN_RELOAD=${RELOAD:-30} \
    cargo test --release --test churn -- --nocapture >target/churn.log 2>&1 || true
grep -E "^churn:|test result" target/churn.log
sed -n '/unexpected errors: \[/,/^\]/p' target/churn.log
