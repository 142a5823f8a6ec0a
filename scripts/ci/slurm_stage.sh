#!/usr/bin/env bash
# The launch stage alone: install the missing Debian packages (scripts/ci/system_packages.sh; root, apt-get), then
# run the tests that need them: the sbatch script on a private one-node Slurm cluster (tests/launch/test_slurm.py)
# and shellcheck over every launch script (tests/launch/test_scripts.py). Here a missing Slurm or shellcheck fails
# instead of skipping. .ci/run does the same for the whole suite; use this to check the launch side quickly.
# Run from anywhere; prints its timings. Budget: about 8 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
stage_start=$SECONDS

if [ "$(id -u)" != 0 ]; then
    echo "slurm_stage.sh: needs root (it installs packages and runs the Slurm daemons)" >&2
    exit 1
fi
bash scripts/ci/system_packages.sh >/dev/null
echo "slurm_stage.sh: packages ready after $((SECONDS - stage_start)) s"

test_start=$SECONDS
SLIME_ENTROPY_REQUIRE_SLURM=1 SLIME_ENTROPY_REQUIRE_SHELLCHECK=1 timeout 600 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/launch/test_slurm.py tests/launch/test_scripts.py
echo "slurm_stage.sh: tests took $((SECONDS - test_start)) s; stage total $((SECONDS - stage_start)) s"
