"""Entropy analysis: where the forking tokens are, in numbers, figures and an HTML page.

    python -m slime_entropy.analysis --responses eval.jsonl --hf-checkpoint MODEL --out-dir analysis/

Module map:

- ``records``: :class:`AnalysisSample` (token ids, response mask, entropy, log-probs, text pieces) and the responses
  file reader/writer; ``dump_adapter``: the trainer's rollout dumps -> ``AnalysisSample`` (the only module that
  knows their format);
- ``scoring`` (transformers) and ``megatron_scoring`` (torch_dist, the trainer's model): per-token entropy and
  log-probs with the trainer's fused op;
- ``statistics``: percentiles, the share below 0.01, the exact top-rho / bottom-rho selection (training's rule),
  per-response numbers; ``tokens``: text pieces, token labels, frequency tables; ``overlap``: top-rho position
  overlap between models or checkpoints;
- ``plots`` (histogram, word cloud, per-group trends; matplotlib), ``html_report`` (the page), ``report`` (all
  files of one analysis), ``cli`` (the command);
- ``ablation``: the rho ablation runner (``python -m slime_entropy.analysis.ablation``): train.py per (rho, seed),
  a table with 95% intervals and reward curves with bands.

Names are imported lazily: importing the package pulls in neither torch models nor matplotlib.
"""

from __future__ import annotations

from slime_entropy._lazy import lazy_exports

__all__ = [
    "AnalysisSample",
    "load_responses",
    "write_responses",
    "TransformersScorer",
    "select_top",
    "select_bottom",
    "summarize",
    "compare_models",
    "write_report",
    "ReportOptions",
]

_HOMES = {
    "AnalysisSample": "records",
    "load_responses": "records",
    "write_responses": "records",
    "TransformersScorer": "scoring",
    "select_top": "statistics",
    "select_bottom": "statistics",
    "summarize": "statistics",
    "compare_models": "overlap",
    "write_report": "report",
    "ReportOptions": "config",
}


__getattr__, __dir__ = lazy_exports(__name__, _HOMES)
