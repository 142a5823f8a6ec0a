"""slime_entropy's trainer: slime's RLVR loop on Ray (``train.py``), with the high-entropy token filter.

Modules: ``arguments`` (one parser for every provider's flags), ``config`` (``TrainerConfig``, the one resolver of
the flags, and its checks ``resolve_layout``/``check_batch_arithmetic``/``check_cluster_resources``), ``preflight``
(inputs and resume point, before anything starts), ``placement`` (Ray placement groups), ``ray_actors``
(``TrainRank``, ``RolloutWorker``), ``handles`` (driver-side handles of the actors; calls that never hang),
``weights`` (weight pushes), ``resume`` (checkpoints, data position, run directory), ``metrics``/``report``/``plots``
(JSONL, W&B, console, PNGs), ``fr3e`` (FR3E's exploration step), ``default_task`` (the built-in default task),
``session`` (Ray start/stop).
"""

__all__: list[str] = []
