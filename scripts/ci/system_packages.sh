#!/usr/bin/env bash
# Install the Debian packages some tests need and otherwise skip: Slurm + munge and iproute2 (tests/launch/
# test_slurm.py; scripts/slurm/ray_node.sh finds the node's interface with `ip`), the ShellCheck linter
# (tests/launch/test_scripts.py), Chromium (tests/analysis/test_report.py renders the HTML report). Needs root and apt-get; installs only what is missing.
# Prints the SLIME_ENTROPY_REQUIRE_* variables (one `export` per line) for the tools that are now present, so a
# caller can `eval` them and turn those skips into failures.
set -euo pipefail

declare -A package_of=(
    [slurmctld]=slurm-wlm [slurmd]=slurm-wlm [sbatch]=slurm-wlm [munged]=munge
    [shellcheck]=shellcheck [ip]=iproute2 [chromium]=chromium
)
have() { PATH=$PATH:/usr/sbin:/sbin command -v "$1" >/dev/null; }

missing=()
for binary in "${!package_of[@]}"; do
    have "$binary" || missing+=("${package_of[$binary]}")
done
if ((${#missing[@]})); then
    mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
        echo "system_packages.sh: not root or no apt-get; not installing ${missing[*]} (their tests will skip)" >&2
    else
        echo "system_packages.sh: installing ${missing[*]}" >&2
        export DEBIAN_FRONTEND=noninteractive
        if ! { timeout 300 apt-get update -qq && timeout 600 apt-get install -y -qq --no-install-recommends \
            "${missing[@]}" >/dev/null; }; then
            echo "system_packages.sh: apt-get failed; the tests that need ${missing[*]} will skip" >&2
        fi
    fi
fi

if have slurmctld && have slurmd && have sbatch && have munged && have ip && [ "$(id -u)" = 0 ]; then
    echo "export SLIME_ENTROPY_REQUIRE_SLURM=1"
fi
have shellcheck && echo "export SLIME_ENTROPY_REQUIRE_SHELLCHECK=1"
have chromium && echo "export SLIME_ENTROPY_REQUIRE_CHROMIUM=1"
# SGLang (without its GPU stack) is installed by the README's test command that .ci/run runs next: its contract
# tests (tests/rollout/sglang_package.py) must not skip in CI.
echo "export SLIME_ENTROPY_REQUIRE_SGLANG=1"
# The slime / Megatron-LM source trees the compatibility tests run against (tests/slime_trees.py): beside the
# checkout in CI; required there, skipped with a reason in a checkout without them.
third_party=$(cd "$(dirname "$0")/../.." && pwd)/../shared/third_party
if [ -d "$third_party/slime" ]; then
    echo "export SLIME_ENTROPY_THIRD_PARTY=$(cd "$third_party" && pwd)"
    echo "export SLIME_ENTROPY_REQUIRE_THIRD_PARTY=1"
fi
exit 0
