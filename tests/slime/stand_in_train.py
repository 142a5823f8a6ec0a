"""A stand-in for slime's ``train.py``, run by the tests through ``python -m slime_entropy.slime``.

Like slime's script it imports ``parse_args`` from ``slime.utils.arguments`` at module level and calls it under
``__main__``; instead of training it writes what it saw to the JSON file named by ``$STAND_IN_REPORT``: the parsed
seed command line, then the outcome of further parses on variants of it (``$STAND_IN_VARIANTS``: JSON, name ->
[extra flags, flags to drop, provider]). Its last parse has a misspelt flag, which the launcher must refuse.
"""

import contextlib
import io
import json
import os
import sys

from slime.utils.arguments import parse_args

RECORDED = (
    "high_entropy_token_filter",
    "entropy_percentile",
    "entropy_threshold_scope",
    "policy_loss_mode",
    "loss_type",
    "custom_loss_function_path",
    "entropy_coef",
    "eps_clip",
    "eps_clip_high",
    "kl_loss_type",
    "use_kl_loss",
    "rollout_temperature",
    "n_samples_per_prompt",
    "global_batch_size",
    "tensor_model_parallel_size",
    "lr",
    "sglang_mem_fraction_static",
    "my_flag",
    "foo_bar",
)


def _user_provider(parser):
    parser.add_argument("--my-flag", type=int, default=0)
    return parser


def _old_recipe_provider(parser):
    import slime_entropy

    return slime_entropy.add_arguments(parser)


PROVIDERS = {"none": None, "user": _user_provider, "old_recipe": _old_recipe_provider}


def _record(args):
    return {key: getattr(args, key) for key in RECORDED if hasattr(args, key)}


def _outcome(parse, argv, provider):
    """Parse ``argv`` as slime's command line; the result or how it failed, with slime's console output kept."""
    sys.argv = [sys.argv[0], *argv]
    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            args = parse(PROVIDERS[provider])
    except SystemExit as exit_:
        return {"exit": exit_.code, "stderr": err.getvalue()[-2000:]}
    except Exception as error:  # noqa: B902 - the launcher's LaunchError and slime's own checks alike
        return {"error": type(error).__name__, "message": str(error)}
    return {"args": _record(args)}


def _without(argv, drop):
    """``argv`` less the flags in ``drop`` and their values."""
    kept, skipping = [], False
    for token in argv:
        if token.startswith("--"):
            skipping = token in drop
        if not skipping:
            kept.append(token)
    return kept


if __name__ == "__main__":
    seed_argv = sys.argv[1:]
    args = parse_args()
    report = {
        "wrapped": bool(getattr(parse_args, "slime_entropy_wrapped", False)),
        "argv0": sys.argv[0],
        "sys_path": sys.path,
        "seed": _record(args),
        "variants": {},
    }
    original = parse_args.__wrapped__  # slime's own parse_args, for behaviour the launcher must not change
    for name, (extra, drop, provider, which) in json.loads(os.environ["STAND_IN_VARIANTS"]).items():
        parse = original if which == "slime" else parse_args
        report["variants"][name] = _outcome(parse, _without(seed_argv, drop) + extra, provider)
    with open(os.environ["STAND_IN_REPORT"], "w") as file:
        json.dump(report, file, default=repr)
    sys.argv = [sys.argv[0], *seed_argv, "--entropy-percentil", "0.5"]
    parse_args()  # refused: the launcher prints the error and exits with status 2
    raise AssertionError("the misspelt --entropy-percentil was accepted")
