"""megatron-core actor: CPU shim, models from HF checkpoints, training steps, torch_dist checkpoints.

Importing this package does not import megatron-core; import the submodules you need:

- :mod:`~slime_entropy.megatron.cpu_shim`: run megatron-core on a CPU-only torch (gloo);
- :mod:`~slime_entropy.megatron.architecture`: HF ``config.json`` -> architecture, MODEL_ARGS check;
- :mod:`~slime_entropy.megatron.model`: the megatron-core ``GPTModel`` (TE or local spec, THD packing);
- :mod:`~slime_entropy.megatron.hf_bridge`: HF <-> Megatron weights at any TP/PP/EP;
- :mod:`~slime_entropy.megatron.arguments` / :mod:`~slime_entropy.megatron.config`: the Megatron/slime training flags
  and the frozen configs built from them;
- :mod:`~slime_entropy.megatron.batching`, :mod:`~slime_entropy.megatron.optimizer`,
  :mod:`~slime_entropy.megatron.train_step`, :mod:`~slime_entropy.megatron.checkpoint`,
  :mod:`~slime_entropy.megatron.actor`, :mod:`~slime_entropy.megatron.convert`.
"""

__all__: list[str] = []
