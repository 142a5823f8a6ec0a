"""slime_entropy's trainer: slime's RLVR loop on Ray (``train.py``), with the high-entropy token filter.

Modules: ``arguments`` (one parser for every provider's flags), ``config`` (validated frozen configs and the reusable
checks ``check_batch_arithmetic``/``resolve_layout``/``check_cluster_resources``), ``placement`` (Ray placement
groups), ``ray_actors`` (``TrainRank``, ``RolloutWorker``), ``handles`` (driver-side handles of the actors; calls that never hang),
``weights`` (weight pushes), ``resume`` (checkpoints, data position, run directory), ``metrics``/``report``/``plots``
(JSONL, W&B, console, PNGs), ``default_task`` (the built-in default task), ``session`` (Ray start/stop).
"""

__all__: list[str] = []
