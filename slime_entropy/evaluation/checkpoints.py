"""Which weights to evaluate or score: an HF directory as is, or a torch_dist checkpoint converted to HF.

A torch_dist checkpoint is a ``--save`` root (``latest_checkpointed_iteration.txt`` naming ``iter_*`` or ``release``)
or one of its ``iter_*``/``release`` directories (``.metadata`` + ``*.distcp`` shards). It is converted with
``slime_entropy.megatron.convert torch-dist-to-hf`` in a child process (so this process never initialises
torch.distributed or Megatron's parallel state); the architecture, tokenizer and chat template come from the
``--hf-checkpoint`` it was trained from. Detection only looks at file names, it imports no Megatron code.
"""

from __future__ import annotations

import logging
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["is_torch_dist_checkpoint", "is_hf_checkpoint", "convert_torch_dist_to_hf", "TRACKER_FILENAME"]

logger = logging.getLogger(__name__)

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"  # the same name as slime_entropy.megatron.checkpoint's


def is_torch_dist_checkpoint(path: str | Path) -> bool:
    """A checkpoint root with a tracker file, or an ``iter_*``/``release`` directory with torch_dist shards."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / TRACKER_FILENAME).is_file():
        return True
    return (path / ".metadata").is_file() and any(path.glob("*.distcp"))


def is_hf_checkpoint(path: str | Path) -> bool:
    path = Path(path)
    return (path / "config.json").is_file() and (
        any(path.glob("*.safetensors")) or any(path.glob("*.bin")) or (path / "model.safetensors.index.json").is_file()
    )


def convert_torch_dist_to_hf(
    checkpoint: str | Path,
    *,
    origin_hf_dir: str | Path,
    output_dir: str | Path,
    extra_args: Sequence[str] = (),
    timeout: float = 3600.0,
) -> Path:
    """Convert ``checkpoint`` (torch_dist) into an HF directory at ``output_dir`` and return it.

    ``extra_args``: converter flags that must match training, e.g. ``--make-vocab-size-divisible-by 1``.
    Raises ``RuntimeError`` with the converter's output tail when it fails or exceeds ``timeout`` seconds.
    """
    from slime_entropy.rollout.engine_process import child_env

    if not is_torch_dist_checkpoint(checkpoint):
        raise ValueError(f"{checkpoint} is not a torch_dist checkpoint (no {TRACKER_FILENAME}, no .metadata/*.distcp)")
    if not is_hf_checkpoint(origin_hf_dir):
        raise ValueError(
            f"--hf-checkpoint {origin_hf_dir} must be the HF model the torch_dist checkpoint was trained from (its "
            "config.json, tokenizer and chat template are used)"
        )
    command = [
        sys.executable,
        "-m",
        "slime_entropy.megatron.convert",
        "torch-dist-to-hf",
        "--input-dir",
        str(checkpoint),
        "--output-dir",
        str(output_dir),
        "--origin-hf-dir",
        str(origin_hf_dir),
        *extra_args,
    ]
    logger.info("converting %s to HF: %s", checkpoint, shlex.join(command))
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=timeout, env=child_env(), stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:  # subprocess.run kills the child before raising
        raise RuntimeError(f"torch_dist -> HF conversion of {checkpoint} exceeded {timeout:.0f} s") from e
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-25:])
        raise RuntimeError(
            f"torch_dist -> HF conversion of {checkpoint} failed (exit {done.returncode}); converter flags that "
            f"differ from training (e.g. --make-vocab-size-divisible-by) go in --convert-args.\n{tail}"
        )
    return Path(output_dir)
