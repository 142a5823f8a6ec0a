"""The driver's FR3E step between generation and training (``--fr3e``; ``docs/fr3e.md``).

    batch = rollout.generate(rollout_id, ...)                      # the base rollout
    batch = explore_fr3e(config, rollout_id, batch, actors, rollout)  # + the partial rollouts, FR3E advantages

With ``--fr3e-anchor-score entropy`` the training ranks first run the old-policy pass over the base rollout (the same
pass, at ``--rollout-temperature``, that training runs) and report each response token's full-distribution entropy;
the rollout worker picks the anchors from them and generates the partial rollouts on the same engines and weights.
With ``surprisal`` the engine's log-probs suffice and the extra pass is skipped. Colocated runs keep slime's memory
order: the engines release their memory while the ranks score, and take it back to explore.
"""

from __future__ import annotations

import time

from slime_entropy.trainer.config import TrainerConfig
from slime_entropy.trainer.handles import RolloutBatch, RolloutWorkerHandle, TrainRankHandles

__all__ = ["explore_fr3e", "response_entropies"]


def response_entropies(actors: TrainRankHandles, rollout_id: int, batch: RolloutBatch) -> dict[int, list[float]]:
    """Global sample position -> the old policy's entropy per response token (the ranks' log-prob pass)."""
    refs = [
        actor.prepare_rollout.remote(rollout_id, batch.data_refs[info["dp_rank"]], True)
        for actor, info in zip(actors.actors, actors.infos, strict=True)
    ]
    prepared = actors._wait(refs, f"rollout {rollout_id}: FR3E entropy pass")
    entropies: dict[int, list[float]] = {}
    for p in prepared:
        if "fields" in p:
            for i, position in enumerate(p["fields"]["partition"]):
                entropies[position] = p["fields"]["entropy"][i]
    return entropies


def explore_fr3e(
    config: TrainerConfig, rollout_id: int, batch: RolloutBatch, actors: TrainRankHandles, rollout: RolloutWorkerHandle
) -> RolloutBatch:
    """The base rollout ``batch`` -> the training batch with FR3E's partial rollouts (see module doc)."""
    entropies = None
    started = time.monotonic()
    if config.rollout.fr3e.anchor_score == "entropy":
        rollout.offload()
        actors.onload()
        entropies = response_entropies(actors, rollout_id, batch)
        actors.offload()
        rollout.onload(["weights", "kv_cache"])
    entropy_time = time.monotonic() - started
    dp_size = config.layout.dp_size
    refs = rollout.actor.explore.options(num_returns=2 + dp_size).remote(
        rollout_id, dp_size, str(rollout_id), config.run.save_rollouts, entropies
    )
    metrics = rollout._get(refs[0], f"rollout {rollout_id}: FR3E partial rollouts", rollout.generate_timeout_s)
    records = (
        rollout._get(refs[1], f"rollout {rollout_id}: FR3E partial rollouts") if config.run.save_rollouts else None
    )
    metrics["perf/fr3e_entropy_time"] = entropy_time  # the extra old-policy pass over the base rollout
    return RolloutBatch(rollout_id, metrics, records, list(refs[2:]))
