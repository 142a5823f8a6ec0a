"""Child process for the crash-during-save test: saves iteration 0, then dies half-way through saving iteration 1.

Fault injection lives here, not in the library: ``dist_checkpointing.save`` is wrapped so that, after the shards of
iteration 1 are written into the temporary directory and before the actor can finalise the save, the process
prints ``SHARDS_WRITTEN`` and sleeps until the parent kills it with SIGKILL.

    python -m tests.megatron._save_crash_child HF_DIR SAVE_DIR
"""

from __future__ import annotations

import sys
import time

import torch.distributed as dist


def main(hf_dir: str, save_dir: str) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)

    from megatron.core import dist_checkpointing

    from slime_entropy.megatron import checkpoint
    from tests.megatron.helpers import build_actor, make_args

    args = make_args(["--hf-checkpoint", hf_dir, "--save", save_dir, "--global-batch-size", "2",
                      "--make-vocab-size-divisible-by", "1", "--logprob-entropy-backend", "eager"])  # fmt: skip
    actor = build_actor(args, num_total_steps=2)
    actor.save(0)
    print("SAVED0", flush=True)

    real_save = dist_checkpointing.save

    def save_then_hang(state, directory, *a, **kw):
        real_save(state, directory, *a, **kw)
        print("SHARDS_WRITTEN", flush=True)
        time.sleep(600)

    checkpoint.dist_checkpointing.save = save_then_hang
    actor.save(1)
    print("UNEXPECTED_FINISH", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
