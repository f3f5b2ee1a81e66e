#!/usr/bin/env bash
# Issue 17, part 5: the group-mode SIGKILL loop with N kills (default 20;
# the test suite, and so CI, runs it with 3). Compares the settlement
# consumer's processed_events with the topic and prints what it found.
#
#   infra/kafka/group-kills.sh [kills]
set -euo pipefail
cd "$(dirname "$0")/../.."
PAYFN_GROUP_KILLS=${1:-20} cargo test -p payfn --test group_kills -- --nocapture
