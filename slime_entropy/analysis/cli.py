"""``python -m slime_entropy.analysis``: entropy analysis of responses, with figures and an HTML page.

Inputs (one of):

* ``--responses FILE [FILE ...]``: JSON lines with ``tokens`` + ``response_length`` (``--eval-output-dir`` files,
  or this command's ``scored_responses.jsonl.gz``); lines that carry ``entropy`` need no model;
* ``--rollout-dump PATH [PATH ...]``: the trainer's saved rollouts (token ids, entropies, log-probs);
* ``--prompt-data FILE``: responses are generated first through the rollout engines (SGLang on GPUs, the built-in
  engine on CPUs; every rollout flag applies: ``--n-samples-per-prompt``, ``--rollout-temperature``,
  ``--rollout-max-response-len``, ``--apply-chat-template``, ``--rm-type``...).

Scoring (entropy of ``softmax(logits / --rollout-temperature)`` over the full vocabulary, the trainer's numbers):
``--hf-checkpoint`` (transformers) or ``--torch-dist-checkpoint`` (the Megatron model, as the trainer builds it;
``--hf-checkpoint`` gives its architecture and tokenizer). ``--compare-checkpoints`` scores the same responses with
more models or training checkpoints and reports the overlap of their top-rho positions (the paper's Table 1).

Examples::

    python -m slime_entropy.analysis --responses eval/eval_aime24_rollout0.jsonl --hf-checkpoint /models/Qwen3-8B \\
        --rollout-temperature 1.0 --out-dir analysis/qwen3-8b
    python -m slime_entropy.analysis --prompt-data aime.jsonl --input-key prompt --apply-chat-template \\
        --hf-checkpoint /models/Qwen3-14B-Base --n-samples-per-prompt 4 --rollout-max-response-len 8192 \\
        --compare-checkpoints step100=/ckpt/run/iter_0000099 step200=/ckpt/run/iter_0000199 \\
        --megatron-args "--tensor-model-parallel-size 1" --out-dir analysis/run
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from slime_entropy.analysis.records import AnalysisSample

__all__ = ["build_parser", "main", "run_analysis"]

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    from slime_entropy.analysis.arguments import add_analysis_arguments
    from slime_entropy.rollout.arguments import add_rollout_arguments
    from slime_entropy.trainer.arguments import ConciseParser

    parser = ConciseParser(
        prog="python -m slime_entropy.analysis",
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_analysis_arguments(parser)
    # The rollout flags: generation for --prompt-data, and --rollout-temperature (the entropy's temperature).
    add_rollout_arguments(parser)
    return parser


def _label_paths(specs: Sequence[str]) -> list[tuple[str, str]]:
    out, names = [], set()
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or "/" in name:
            name, path = Path(spec.rstrip("/")).name or spec, spec
        base, i = name, 2
        while name in names:
            name, i = f"{base}#{i}", i + 1
        names.add(name)
        out.append((name, path))
    return out


class _ScorerFactory:
    """Builds the scorer for a checkpoint path according to --scorer, converting torch_dist to HF when needed."""

    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.megatron_args = shlex.split(args.megatron_args)
        self._num_converted = 0

    def hf_for(self, checkpoint: str) -> str:
        from slime_entropy.evaluation.checkpoints import convert_torch_dist_to_hf

        self._num_converted += 1
        return str(
            convert_torch_dist_to_hf(
                checkpoint,
                origin_hf_dir=self.args.hf_checkpoint,
                output_dir=self.workdir / f"converted-{self._num_converted}",
                extra_args=self.megatron_args,
            )
        )

    def score(self, checkpoint: str, samples: Sequence[AnalysisSample]) -> list[AnalysisSample]:
        from slime_entropy.evaluation.checkpoints import is_hf_checkpoint, is_torch_dist_checkpoint

        args = self.args
        if is_torch_dist_checkpoint(checkpoint):
            if args.hf_checkpoint is None:
                raise ValueError(
                    f"scoring the torch_dist checkpoint {checkpoint} needs --hf-checkpoint (its HF origin)"
                )
            if args.scorer == "megatron":
                from slime_entropy.analysis.megatron_scoring import MegatronScorer

                scorer = MegatronScorer(
                    checkpoint,
                    hf_checkpoint=args.hf_checkpoint,
                    temperature=args.rollout_temperature,
                    megatron_args=self.megatron_args,
                )
                try:
                    return scorer.score(samples)
                finally:
                    scorer.close()
            checkpoint = self.hf_for(checkpoint)
        elif not is_hf_checkpoint(checkpoint):
            raise ValueError(f"{checkpoint} is neither an HF checkpoint (config.json + weights) nor a torch_dist one")
        from slime_entropy.analysis.scoring import TransformersScorer

        scorer = TransformersScorer(
            checkpoint,
            temperature=args.rollout_temperature,
            device=args.device,
            dtype=args.dtype,
            backend=args.logprob_entropy_backend,
        )
        try:
            return scorer.score(samples)
        finally:
            scorer.close()


def _generate(args: argparse.Namespace, tokenizer, hf_dir: str) -> list[AnalysisSample]:
    """Responses to ``--prompt-data`` from the rollout engines (engines stopped before returning)."""
    import copy

    from slime_entropy.analysis.records import from_rollout_sample
    from slime_entropy.evaluation.cli import engine_and_reward_configs
    from slime_entropy.evaluation.evaluator import EngineSession, generate_responses
    from slime_entropy.rollout.config import SamplingConfig
    from slime_entropy.rollout.data import PromptDataset, load_prompt_records

    if args.rollout_max_response_len is None:
        raise ValueError("--prompt-data needs --rollout-max-response-len (max new tokens per response)")
    records = load_prompt_records(
        args.prompt_data, input_key=args.input_key, label_key=args.label_key, metadata_key=args.metadata_key
    )
    if args.num_prompts is not None:
        records = records[: args.num_prompts]
    # As the rollout: drop prompts longer than --rollout-max-prompt-len or leaving no room for one new token.
    limits = [n for n in (args.rollout_max_prompt_len, args.rollout_max_context_len) if n is not None]
    if args.rollout_max_context_len is not None:
        limits[-1] -= 1
    items = list(
        PromptDataset(
            records,
            tokenizer,
            apply_chat_template=args.apply_chat_template,
            chat_template_kwargs=args.apply_chat_template_kwargs,
            max_prompt_len=min(limits) if limits else None,
        )
    )
    sampling = SamplingConfig.from_args(args)
    with_rewards = args.rm_type is not None or args.custom_rm_path is not None
    filled = copy.copy(args)
    filled.hf_checkpoint = hf_dir
    if not with_rewards:
        filled.rm_type = "math"  # only to build the engine config; no grading runs
    engine_config, reward_config = engine_and_reward_configs(filled)
    with EngineSession(engine_config, reward_config if with_rewards else None, hook_args=args) as engines:
        groups = engines.run(
            generate_responses(
                engines.pool,
                engines.rewards,
                items,
                n_samples_per_prompt=args.n_samples_per_prompt,
                sampling=sampling,
            )
        )
    reward_key = args.reward_key
    return [from_rollout_sample(s, reward_key=reward_key) for g in groups for s in g]


def _load_inputs(args: argparse.Namespace, dump_info) -> list[AnalysisSample]:
    from slime_entropy.analysis.records import load_responses

    if args.responses:
        samples: list[AnalysisSample] = []
        for path in args.responses:
            loaded = load_responses(path)
            if len(args.responses) > 1:  # keep ids unique across files
                stem = Path(path).name.split(".")[0]
                loaded = [s.replace(sample_id=f"{stem}:{s.sample_id}") for s in loaded]
            samples.extend(loaded)
        return samples
    from slime_entropy.analysis.dump_adapter import load_rollout_dumps

    return load_rollout_dumps(args.rollout_dump, dump_info)


def run_analysis(args: argparse.Namespace):
    """The whole command; returns the :class:`~slime_entropy.analysis.report.AnalysisResult`."""
    from slime_entropy.analysis.config import ReportOptions
    from slime_entropy.analysis.report import write_report

    inputs = [bool(args.responses), bool(args.rollout_dump), args.prompt_data is not None]
    if sum(inputs) != 1:
        raise ValueError("give exactly one input: --responses FILE..., --rollout-dump PATH... or --prompt-data FILE")
    if args.torch_dist_checkpoint is not None and args.hf_checkpoint is None:
        raise ValueError("--torch-dist-checkpoint needs --hf-checkpoint (its architecture and tokenizer)")
    options = ReportOptions.from_args(args)
    dump_info = None
    if args.rollout_dump:
        from slime_entropy.analysis.dump_adapter import DumpInfo

        dump_info = DumpInfo()
        preloaded = _load_inputs(args, dump_info)
    tokenizer = None
    tokenizer_dir = args.tokenizer or args.hf_checkpoint
    if tokenizer_dir is None and dump_info is not None and len(dump_info.hf_checkpoints) == 1:
        candidate = next(iter(dump_info.hf_checkpoints))  # the dumps' model, when it is on this machine
        tokenizer_dir = candidate if Path(candidate, "tokenizer_config.json").is_file() else None
    if tokenizer_dir is not None:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    reference = args.torch_dist_checkpoint or args.hf_checkpoint
    with tempfile.TemporaryDirectory(prefix="slime-entropy-analyze-") as workdir:
        factory = _ScorerFactory(args, Path(workdir))
        if args.prompt_data is not None:
            if reference is None:
                raise ValueError(
                    "--prompt-data needs a model: --hf-checkpoint (and optionally --torch-dist-checkpoint)"
                )
            if tokenizer is None:
                raise ValueError("--prompt-data needs a tokenizer (--hf-checkpoint or --tokenizer)")
            hf_dir = args.hf_checkpoint
            if args.torch_dist_checkpoint is not None:
                hf_dir = factory.hf_for(args.torch_dist_checkpoint)
            samples = _generate(args, tokenizer, hf_dir)
        elif dump_info is not None:
            samples = preloaded
            scored_at = sorted(dump_info.temperatures)
            if (args.rescore or args.compare_checkpoints) and scored_at != [args.rollout_temperature]:
                logger.warning(
                    "the dumps' entropies are at temperature %s, the models score at --rollout-temperature %s",
                    scored_at,
                    args.rollout_temperature,
                )
        else:
            samples = _load_inputs(args, None)
        if args.max_responses is not None:
            samples = samples[: args.max_responses]
        if not samples:
            raise ValueError("no response to analyse")
        needs_scoring = args.rescore or not all(s.is_scored for s in samples)
        model_name = "input entropies"
        if needs_scoring:
            if reference is None:
                raise ValueError(
                    "the input has no per-token entropies: give --hf-checkpoint (or --torch-dist-checkpoint) to "
                    "score it"
                )
            samples = factory.score(reference, samples)
            model_name = args.reference_name or Path(str(reference).rstrip("/")).name
        if not needs_scoring and dump_info is not None:
            model_name = "trainer entropies (rollout dumps)"
        comparisons = []
        for name, path in _label_paths(args.compare_checkpoints or ()):
            comparisons.append((name, factory.score(path, samples)))
        result = write_report(
            args.out_dir, samples, options, tokenizer=tokenizer, model_name=model_name, comparisons=comparisons
        )
    if args.save_scored:
        from slime_entropy.analysis.records import write_responses

        result.files["scored"] = write_responses(Path(args.out_dir) / "scored_responses.jsonl.gz", samples)
    return result


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = run_analysis(args)
    except ValueError as e:
        parser.error(str(e))
    print(Path(result.files["markdown"]).read_text(encoding="utf-8"))
    for key, path in result.files.items():
        print(f"{key}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
