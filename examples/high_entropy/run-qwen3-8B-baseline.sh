#!/usr/bin/env bash
# The all-token baseline of run-qwen3-8B.sh: the same run without --high-entropy-token-filter and
# --entropy-percentile (and its own checkpoint directory, <model>_all-tokens). Arguments are passed on.
set -euo pipefail
BASELINE=1 exec bash "$(dirname "${BASH_SOURCE[0]}")/run-qwen3-8B.sh" "$@"
