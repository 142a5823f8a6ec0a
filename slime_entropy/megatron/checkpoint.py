"""torch_dist checkpoints (megatron-core ``dist_checkpointing``) laid out as Megatron and slime expect.

Layout of a checkpoint directory (``--save``, ``--load``, ``--ref-load``)::

    <dir>/latest_checkpointed_iteration.txt     "12" or "release"
    <dir>/iter_0000012/                         torch_dist shards (*.distcp, metadata, common.pt)
    <dir>/release/                              what the HF -> torch_dist converter writes (weights only)

Saving is atomic. The shards go to ``iter_0000012.tmp-<token>/``; after every rank has finished, global rank 0
fsyncs them, renames the directory to ``iter_0000012`` and then replaces the tracker file (write, fsync,
``os.replace``). A crash at any point leaves the previous ``iter_*`` directory and the tracker pointing at it;
leftover ``*.tmp-*`` directories are ignored by loads and removed by the next save.

Verified on resume. The last file written into a checkpoint directory, before the rename, is ``manifest.json``: every
other file's relative path and size, and the SHA-256 of the files up to 16 MiB (the metadata, the common state).
:func:`verify_checkpoint` checks a directory against it (a file missing, cut short, grown, or a small file changed
names the checkpoint as damaged) without reading the shards; the driver runs it before anything
starts and falls back to the newest complete checkpoint. Directories saved before the manifest existed are checked
for what a complete torch_dist save always has (``metadata.json``, ``common.pt``, non-empty ``*.distcp`` shards), so
they stay loadable. Corruption inside a shard that keeps its size is left to the loader, whose error names the
directory and the ``--ckpt-step`` to resume from instead.

Contents: ``model`` (megatron's sharded model state, TP/PP-reshardable; the local spec maps its norm names to TE's
so GPU and CPU checkpoints interchange), and unless weights-only, ``optimizer`` (the distributed optimizer's
``dp_reshardable`` format), ``opt_param_scheduler``, ``iteration`` and per-rank RNG states.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path

import torch
from megatron.core import dist_checkpointing, parallel_state, tensor_parallel
from megatron.core.dist_checkpointing.mapping import ShardedObject
from torch.distributed.checkpoint.api import CheckpointException as DcpCheckpointException  # a BaseException

from slime_entropy.megatron.groups import ActorGroups
from slime_entropy.megatron.hf_bridge import unwrap_model

__all__ = [
    "TRACKER_FILENAME",
    "CheckpointError",
    "read_tracker",
    "checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "MANIFEST_FILENAME",
    "verify_checkpoint",
    "list_iterations",
]

logger = logging.getLogger(__name__)

TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
CHECKPOINT_VERSION = 3.0
# The distributed optimizer's state format, as Megatron-LM's default: one shard per DP rank, saved and loaded in
# parallel without communication. megatron-core 0.16 rejects its "fully_sharded_model_space" default
# (flattened ShardedTensors); resuming the optimizer under a different TP/PP layout needs --no-load-optim.
OPTIMIZER_METADATA = {"distrib_optim_sharding_type": "dp_reshardable"}
_TMP = re.compile(r"^(iter_\d{7}|release)\.tmp-[0-9a-f]+$")
_ITER = re.compile(r"^iter_(\d{7})$")
MANIFEST_FILENAME = "manifest.json"
MANIFEST_VERSION = 1
HASHED_FILE_BYTES = 16 * 1024**2  # files up to this size (metadata, common state) also get a SHA-256 in the manifest


class CheckpointError(ValueError):
    """A checkpoint that is missing, incomplete or does not fit the model; the message says which and what to do."""


def iteration_dirname(iteration: int | str) -> str:
    return "release" if iteration == "release" else f"iter_{int(iteration):07d}"


def read_tracker(ckpt_dir: str | Path) -> int | str | None:
    """The iteration the tracker file names (an int or ``"release"``); None when there is no tracker file."""
    tracker = Path(ckpt_dir) / TRACKER_FILENAME
    if not tracker.is_file():
        return None
    text = tracker.read_text().strip()
    if text == "release":
        return "release"
    if not text.isdigit():
        raise CheckpointError(f"{tracker} holds {text!r}; expected an iteration number or 'release'")
    return int(text)


def checkpoint_path(ckpt_dir: str | Path, step: int | None = None) -> tuple[Path, int | str] | None:
    """The directory of the checkpoint to load: ``step`` if given, else the tracker's; None if there is no tracker.

    Raises :class:`CheckpointError` when the tracker or ``step`` names a directory that does not exist.
    """
    ckpt_dir = Path(ckpt_dir)
    iteration: int | str | None = step if step is not None else read_tracker(ckpt_dir)
    if iteration is None:
        return None
    path = ckpt_dir / iteration_dirname(iteration)
    if not path.is_dir():
        available = sorted(p.name for p in ckpt_dir.glob("iter_*") if p.is_dir() and not _TMP.match(p.name))
        source = f"--ckpt-step {step}" if step is not None else f"{ckpt_dir / TRACKER_FILENAME}"
        raise CheckpointError(
            f"{source} names {path}, which does not exist (available: {available or 'none'}); pass an existing "
            "step, or fix the tracker file"
        )
    return path, iteration


def list_iterations(ckpt_dir: str | Path) -> list[int]:
    """The iterations with an ``iter_*`` directory in ``ckpt_dir`` (crashed ``*.tmp-*`` saves excluded), ascending."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return []
    return sorted(int(m.group(1)) for p in ckpt_dir.iterdir() if (m := _ITER.match(p.name)) and p.is_dir())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(path: Path) -> None:
    """Record every file of the checkpoint directory ``path`` with its size, and the SHA-256 of the small ones (the
    metadata every load reads first), as the directory's last file."""
    files = {str(f.relative_to(path)): f.stat().st_size for f in sorted(path.rglob("*")) if f.is_file()}
    hashes = {name: _sha256(path / name) for name, size in files.items() if size <= HASHED_FILE_BYTES}
    manifest = path / MANIFEST_FILENAME
    with open(manifest, "w") as f:
        json.dump({"version": MANIFEST_VERSION, "files": files, "sha256": hashes}, f, indent=1, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def verify_checkpoint(path: str | Path) -> str | None:
    """Why the checkpoint directory ``path`` is not complete, or None when it is (see the module doc: against its
    manifest, or for older saves against what every torch_dist save holds). Reads sizes only, never the shards."""
    path = Path(path)
    if not path.is_dir():
        return f"{path} does not exist"
    manifest = path / MANIFEST_FILENAME
    if manifest.is_file():
        try:
            recorded = json.loads(manifest.read_text())
            files, hashes = recorded["files"], recorded.get("sha256", {})
        except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError):
            return f"{manifest} is unreadable"
        for name, size in sorted(files.items()):
            f = path / name
            if not f.is_file():
                return f"{f} is missing"
            actual = f.stat().st_size
            if actual != size:
                return f"{f} has {actual} bytes, the checkpoint's manifest says {size}"
            if name in hashes and _sha256(f) != hashes[name]:
                return f"{f} differs from the checkpoint's manifest (SHA-256)"
        return None
    if not (path / "metadata.json").is_file():
        return f"{path} has no metadata.json (a crashed save, or not a torch_dist checkpoint)"
    if not (path / "common.pt").is_file():
        return f"{path / 'common.pt'} is missing"
    shards = sorted(path.glob("*.distcp"))
    if not shards:
        return f"{path} holds no *.distcp shards"
    empty = [s for s in shards if s.stat().st_size == 0]
    if empty:
        return f"{empty[0]} is empty"
    return None


def _rng_state_object() -> ShardedObject:
    state = {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() else None,
        "tracker": tensor_parallel.get_cuda_rng_tracker().get_states(),
    }
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pp_size = parallel_state.get_pipeline_model_parallel_world_size()
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    tp_size = parallel_state.get_tensor_model_parallel_world_size()
    return ShardedObject(
        "rng_state",
        [state],
        (pp_size, tp_size),
        (pp_rank, tp_rank),
        replica_id=parallel_state.get_data_parallel_rank(with_context_parallel=True),
    )


def _ensure_optimizer_state(optimizer) -> None:
    """Give every parameter without one a fresh Adam state (zero moments, ``step`` 0).

    Without apex/TE, megatron-core's ``DistributedOptimizer.state_dict`` reads ``state["step"]`` of every parameter,
    which torch's Adam creates only at its first step: a freshly built optimizer (a resume in a new process, or a
    save before the first step) has none. Zero moments and step 0 are exactly a fresh Adam; loading overwrites them.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        if inner.init_state_fn is not None:
            inner.init_state_fn(inner.optimizer, inner.config)
        for group in inner.optimizer.param_groups:
            for param in group["params"]:
                state = inner.optimizer.state[param]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)


def _restore_adam_steps(optimizer) -> None:
    """Give every parameter its own, correct Adam ``step`` after a load (megatron-core 0.16 without apex/TE).

    That path stores the step count in the param groups (``DistributedOptimizer.state_dict``) and on load puts *one*
    tensor into every parameter's state; the per-parameter copy of the ``dp_reshardable`` parameter state then
    overwrites that shared tensor with the placeholder step of the freshly built optimizer. torch's Adam also
    increments ``state["step"]`` in place per parameter, so a shared counter would advance once per parameter. The
    param groups hold the true count: give each parameter its own tensor with it.
    """
    for inner in getattr(optimizer, "chained_optimizers", [optimizer]):
        for group in inner.optimizer.param_groups:
            if "step" not in group:
                continue
            for param in group["params"]:
                state = inner.optimizer.state.get(param)
                if state and "step" in state:
                    state["step"] = torch.tensor(float(group["step"]), dtype=torch.float32)


def _sharded_state(model, optimizer, scheduler, iteration, *, is_loading: bool, weights_only: bool) -> dict:
    gpt = unwrap_model(model)
    state: dict = {"model": gpt.sharded_state_dict()}
    if weights_only:
        return state
    _ensure_optimizer_state(optimizer)
    state["optimizer"] = optimizer.sharded_state_dict(
        state["model"], is_loading=is_loading, metadata=OPTIMIZER_METADATA
    )
    state["opt_param_scheduler"] = scheduler.state_dict()
    state["iteration"] = iteration
    state["checkpoint_version"] = CHECKPOINT_VERSION
    state["rng_state"] = _rng_state_object()
    return state


def _fsync_tree(path: Path) -> None:
    for sub in sorted(path.rglob("*")):
        if sub.is_file():
            with open(sub, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tracker(ckpt_dir: Path, iteration: int | str) -> None:
    tmp = ckpt_dir / f".{TRACKER_FILENAME}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{iteration}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckpt_dir / TRACKER_FILENAME)
    _fsync_dir(ckpt_dir)


def save_checkpoint(
    ckpt_dir: str | Path,
    iteration: int | str,
    model,
    optimizer=None,
    scheduler=None,
    *,
    groups: ActorGroups,
    weights_only: bool = False,
) -> Path:
    """Save atomically to ``ckpt_dir/iter_<iteration>`` and point the tracker at it. Collective (all ranks)."""
    ckpt_dir = Path(ckpt_dir)
    final = ckpt_dir / iteration_dirname(iteration)
    tmp = ckpt_dir / f"{final.name}.tmp-{groups.shared_token()}"
    if groups.global_rank == 0:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        for stale in ckpt_dir.iterdir():
            if _TMP.match(stale.name) and stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
        tmp.mkdir()
    groups.barrier()
    state = _sharded_state(model, optimizer, scheduler, iteration, is_loading=False, weights_only=weights_only)
    dist_checkpointing.save(state, str(tmp))
    groups.barrier()
    if groups.global_rank == 0:
        _fsync_tree(tmp)
        _write_manifest(tmp)  # last: a directory with a manifest that matches it is complete
        old = None
        if final.exists():
            old = ckpt_dir / f"{final.name}.tmp-{os.urandom(6).hex()}"
            final.rename(old)
        tmp.rename(final)
        _fsync_dir(ckpt_dir)
        _write_tracker(ckpt_dir, iteration)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("saved torch_dist checkpoint %s", final)
    groups.barrier()
    return final


def load_checkpoint(
    path: str | Path,
    model,
    optimizer=None,
    scheduler=None,
    *,
    load_optimizer: bool = True,
    load_rng: bool = True,
) -> int | str:
    """Load ``path`` (an ``iter_*``/``release`` directory) into the model (and optimizer, scheduler, RNG).

    Weights only when ``optimizer`` is None or ``load_optimizer`` is False. Returns the stored iteration (or the
    directory's, for weights-only checkpoints). Raises :class:`CheckpointError` naming the path for incomplete,
    corrupt or mismatching checkpoints. Collective.
    """
    path = Path(path)
    if not dist_checkpointing.check_is_distributed_checkpoint(str(path)):
        raise CheckpointError(
            f"{path} is not a complete torch_dist checkpoint (no metadata.json): it may be a crashed save or a "
            "different format; pick another step with --ckpt-step/--ref-ckpt-step, or re-convert it"
        )
    weights_only = optimizer is None or not load_optimizer
    state = _sharded_state(model, optimizer, scheduler, None, is_loading=True, weights_only=weights_only)
    if weights_only or not load_rng:
        state.pop("rng_state", None)
    try:
        loaded = dist_checkpointing.load(state, str(path))
    except (Exception, DcpCheckpointException) as err:  # noqa: BLE001 - every failure here means "cannot load"
        older = [i for i in list_iterations(path.parent) if path.name != iteration_dirname(i)]
        hint = f"; or resume from an older step with --ckpt-step {older[-1]} (available: {older})" if older else ""
        raise CheckpointError(
            f"could not load torch_dist checkpoint {path}: {type(err).__name__}: {str(err)[:500]}. The checkpoint is "
            f"corrupt, incomplete, or was saved for a different model (check --hf-checkpoint / MODEL_ARGS){hint}"
        ) from err
    gpt = unwrap_model(model)
    missing, unexpected = gpt.load_state_dict(loaded["model"], strict=False)
    missing = [k for k in missing if not k.endswith("_extra_state")]
    if missing:
        raise CheckpointError(f"{path} lacks model tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
    if not weights_only:
        with torch.no_grad():  # the fp32 distributed optimizer's main params are views of the model's parameters
            optimizer.load_state_dict(loaded["optimizer"])
        _restore_adam_steps(optimizer)
        scheduler.load_state_dict(loaded["opt_param_scheduler"])
        if load_rng and "rng_state" in loaded:
            rng = loaded["rng_state"][0]
            torch.set_rng_state(rng["torch"])
            if rng["cuda"] is not None and torch.cuda.is_available():
                torch.cuda.set_rng_state(rng["cuda"])
            tensor_parallel.get_cuda_rng_tracker().set_states(rng["tracker"])
        return loaded["iteration"]
    if optimizer is not None:
        optimizer.reload_model_params()
    return "release" if path.name == "release" else int(path.name.split("_")[1])
