"""RLVR with the high-entropy ("forking") token filter, on Ray, with slime's flags.

    python train.py                                    # the built-in default task: tiny model, CPU, a few minutes
    python train.py --hf-checkpoint M --prompt-data D ... --high-entropy-token-filter --entropy-percentile 0.2

One rollout after another (slime's loop): the engines sample n responses per prompt, rewards become GRPO advantages,
the training ranks compute the old policy's log-probs and entropies and take one optimizer step per global batch with
the policy gradient on the top-rho tokens by entropy, a checkpoint is written, the new weights go to the engines.
Rerunning the same command resumes from the last checkpoint (see slime_entropy/trainer/resume.py); the data, the model
and the checkpoint are checked before anything starts (slime_entropy/trainer/preflight.py).
"""

from __future__ import annotations

import logging
import sys
import time

from slime_entropy.trainer.arguments import parse_args
from slime_entropy.trainer.config import TrainerConfig
from slime_entropy.trainer.fr3e import explore_fr3e
from slime_entropy.trainer.handles import RolloutWorkerHandle, TrainRankHandles
from slime_entropy.trainer.placement import create_placement
from slime_entropy.trainer.preflight import preflight
from slime_entropy.trainer.ray_actors import quiet_known_warnings
from slime_entropy.trainer.report import RunReport, report_finished_run
from slime_entropy.trainer.resume import Checkpointer, RunDirectory, expected_start
from slime_entropy.trainer.session import RaySession, TrainerFailure, was_interrupted
from slime_entropy.trainer.weights import WeightSync


def train(config: TrainerConfig) -> None:
    run_dir = RunDirectory(config.run.run_dir)
    checkpoints = Checkpointer(config.save_dir, config.load_dir, config.megatron.checkpoint.save_interval)
    if config.run.num_rollout is not None and expected_start(config.megatron.checkpoint) >= config.run.num_rollout:
        return report_finished_run(config)  # the checkpoint says there is nothing left to do
    with RaySession(log_level=config.run.log_level) as session:
        placement = session.track_placement(create_placement(config.layout))
        rollout = RolloutWorkerHandle(config, placement, session)  # engines, prompt data, graders
        rollout.offload()
        num_rollout = config.run.num_rollout or rollout.num_rollout()
        actors = TrainRankHandles(config, placement, session)  # Megatron ranks = one torch.distributed world
        start = actors.setup(num_total_steps=num_rollout * config.batch.num_steps_per_rollout)  # --load resumes
        run_dir.check_flags(config.slime_args, resuming=start > 0)
        run_dir.record_processes(actors, rollout)
        run_dir.forget_after(start - 1, checkpoints.checkpointed_metrics(start - 1))  # redone work is not kept
        checkpoints.restore(start, rollout, config.batch.rollout_batch_size)
        weights = WeightSync(config, actors, rollout)
        weights.push(version=start)  # the engines serve the trainer's weights, never the raw HF ones
        report = RunReport(config, run_dir.root, num_rollout, start)
        per_epoch = rollout.num_rollout_per_epoch()
        if config.eval is not None and config.eval.due_before_training(start):
            report.evaluation(-1, rollout.evaluate(-1))

        for rollout_id in report.progress():
            began = time.monotonic()
            batch = rollout.generate(rollout_id, weight_version=str(rollout_id), with_records=config.run.save_rollouts)
            if config.rollout.fr3e is not None:  # + partial rollouts from the base trajectories' anchors
                batch = explore_fr3e(config, rollout_id, batch, actors, rollout)
            rollout.offload()
            actors.onload()
            trained = actors.train(
                rollout_id, batch, with_fields=config.run.save_rollouts, progress=report.interactive
            )
            metrics = report.trained(rollout_id, batch, trained)  # and the rollout dump, before the commit
            saved = time.monotonic()
            checkpoints.save(rollout_id, num_rollout, actors, rollout, metrics)
            pushed = time.monotonic()
            weights.push(version=rollout_id + 1)
            evaluated = time.monotonic()
            due = config.eval is not None and config.eval.due_after(rollout_id, per_epoch)
            evaluation = rollout.evaluate(rollout_id) if due else {}
            timings = {
                "perf/save_time": pushed - saved,
                "perf/update_weights_time": evaluated - pushed,
                "perf/eval_time": time.monotonic() - evaluated,
                "perf/step_time": time.monotonic() - began,
            }
            report.rollout(rollout_id, metrics, timings, evaluation)

        report.finish()
        rollout.close()
        actors.shutdown()


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)  # one line per rollout, visible at once in logs and pipes too
    quiet_known_warnings()
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        if args.dry_run:
            from slime_entropy.launch.plan import plan_from_args
            from slime_entropy.trainer.default_task import planning_assets
            from slime_entropy.trainer.preflight import dry_run_findings

            plan = None
            try:
                with planning_assets(args) as planned:  # the default task's model before its first (warm-up) run
                    plan = plan_from_args(planned)
                print(plan.render())
            except ValueError as e:
                print(f"train.py --dry-run: {e}", file=sys.stderr)
                return 2
            finally:  # where the run would resume, and what would stop it
                for finding in dry_run_findings(args, plan.config if plan is not None else None):
                    print(finding)
            return 0
        if args.embedded:
            from slime_entropy.trainer.default_task import prepare_default_task

            prepare_default_task(args)  # the default task's tiny model gets its warm-up once, then it is cached
        try:
            config = TrainerConfig.from_args(args)
            config = preflight(config)  # data, model, checkpoint: before Ray or any process starts
        except ValueError as e:
            print(f"train.py: {e}", file=sys.stderr)
            return 2
        train(config)
        return 0
    except TrainerFailure as e:
        if not was_interrupted():
            print(f"train.py: FAILED: {e}" + (f"; {_rerun_hint(args)}" if e.rerun_helps else ""), file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        pass
    print(f"train.py: interrupted; nothing half-written is left behind. {_rerun_hint(args, capital=True)}.",
          file=sys.stderr)  # fmt: skip
    return 130


def _rerun_hint(args, capital: bool = False) -> str:
    """What a rerun does: resume where the run saves, or start again when it saves nothing."""
    if args.save is None:
        hint = "rerun the same command to start again (without --save nothing was checkpointed)"
    else:
        hint = "rerun the same command to resume from the last checkpoint"
    return hint[0].upper() + hint[1:] if capital else hint


if __name__ == "__main__":
    sys.exit(main())
