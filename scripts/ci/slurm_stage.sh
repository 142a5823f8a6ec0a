#!/usr/bin/env bash
# CI stage: install Debian's slurm-wlm, munge and shellcheck (root, apt-get), then run the tests that need them:
# the sbatch script on a private one-node Slurm cluster (tests/launch/test_slurm.py) and shellcheck over every
# launch script (tests/launch/test_scripts.py). Here a missing Slurm or shellcheck fails the stage instead of
# skipping. Called from .ci/run from the repository root; prints its timings. Budget: about 8 minutes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PYTHON=${PYTHON:-python}
stage_start=$SECONDS

if [ "$(id -u)" != 0 ]; then
    echo "slurm_stage.sh: needs root (it installs packages and runs the Slurm daemons)" >&2
    exit 1
fi
packages=(slurm-wlm munge shellcheck iproute2)
missing=()
for binary in slurmctld slurmd sbatch munged shellcheck ip; do
    if ! PATH=$PATH:/usr/sbin:/sbin command -v "$binary" >/dev/null; then
        missing+=("$binary")
    fi
done
if ((${#missing[@]})); then
    echo "slurm_stage.sh: installing ${packages[*]} (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    timeout 300 apt-get update -qq
    timeout 300 apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
fi
echo "slurm_stage.sh: packages ready after $((SECONDS - stage_start)) s"

test_start=$SECONDS
SLIME_ENTROPY_REQUIRE_SLURM=1 SLIME_ENTROPY_REQUIRE_SHELLCHECK=1 timeout 600 \
    "$PYTHON" -m pytest -q -p no:cacheprovider tests/launch/test_slurm.py tests/launch/test_scripts.py
echo "slurm_stage.sh: tests took $((SECONDS - test_start)) s; stage total $((SECONDS - stage_start)) s"
