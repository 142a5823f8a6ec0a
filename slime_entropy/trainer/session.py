"""The driver's Ray session: start a local Ray (or join ``RAY_ADDRESS``) and always tear down what the run created.

    with RaySession(log_level="info") as session:
        actor = session.track(SomeActor.options(...).remote())
        ...
    # every tracked actor killed, placement groups removed, Ray shut down if this session started it

Failures the user should read as one message (an actor died, a call timed out, the cluster is too small) are
``TrainerFailure``; ``train.py`` prints them without a traceback and exits 1. A local Ray instance dies with the
driver even when the driver is SIGKILLed (see ``slime_entropy.trainer.ray_reaper``). SIGTERM (a batch scheduler
cancelling the job) is turned into ``KeyboardInterrupt`` so that it takes the same clean exit as Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import ray

from slime_entropy.trainer.ray_reaper import RayReaper

__all__ = ["TrainerFailure", "RaySession", "package_root", "was_interrupted"]

logger = logging.getLogger(__name__)

_interrupted = threading.Event()


def was_interrupted() -> bool:
    """Whether the run got Ctrl-C or SIGTERM. A terminal's Ctrl-C reaches the Ray workers too, so the failure the
    driver sees first may be a worker dying of it; the run still ended because the user asked."""
    return _interrupted.is_set()


class TrainerFailure(RuntimeError):
    """A failure of the run that is reported as its message (what failed, and what to do). ``rerun_helps``: the cause
    may be passing (a process killed, a node lost, a hang), so ``train.py`` adds how a rerun continues; a mistake a
    rerun would repeat says what to change instead."""

    def __init__(self, message: str, *, rerun_helps: bool = False):
        super().__init__(message)
        self.rerun_helps = rerun_helps


def package_root() -> Path:
    """The directory that holds the ``slime_entropy`` package (for the workers' ``PYTHONPATH``)."""
    return Path(__file__).resolve().parents[2]


class RaySession:
    def __init__(self, *, log_level: str = "info"):
        self.log_level = log_level
        self.started_ray = False
        self._actors: list[Any] = []
        self.watched: list[tuple[str, Any]] = []
        self._placements: list[Any] = []
        self._previous_sigterm = None
        self._previous_sigint = None
        self._reaper: RayReaper | None = None

    def __enter__(self) -> RaySession:
        self._previous_sigterm = signal.getsignal(signal.SIGTERM)
        self._previous_sigint = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGTERM, _interrupt)
        signal.signal(signal.SIGINT, _interrupt)
        # The driver fetches every result it needs (wait_all) and reports the first failure as one message; when all
        # ranks raise the same error, Ray would print the remote traceback of every result left unfetched on top.
        os.environ.setdefault("RAY_IGNORE_UNHANDLED_ERRORS", "1")
        if ray.is_initialized():
            logger.info("using the already initialised Ray connection")
            return self
        pythonpath = os.pathsep.join(p for p in (str(package_root()), os.environ.get("PYTHONPATH", "")) if p)
        runtime_env = {"env_vars": {"PYTHONPATH": pythonpath}}
        address = os.environ.get("RAY_ADDRESS")
        quiet = self.log_level != "debug"
        if address:
            logger.info("connecting to the Ray cluster at %s", address)
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=True, logging_level=logging.WARNING)
        else:
            ray.init(
                address="local",  # a new instance of our own, even if another cluster runs on this machine
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=True,
                logging_level=logging.WARNING if quiet else logging.INFO,
                configure_logging=True,
            )
            self.started_ray = True
            self._reaper = RayReaper.start()  # stops this instance if the driver dies without stopping it
            logger.info("started a local Ray instance: %s", _describe_resources(ray.cluster_resources()))
        return self

    def track(self, actor, name: str | None = None):
        """Register an actor to be killed at the end of the session (also on failure or Ctrl-C); with a ``name``, it
        is also watched (pinged) while the driver waits on other actors."""
        self._actors.append(actor)
        if name is not None:
            self.watched.append((name, actor))
        return actor

    def others(self, names: list[str]) -> list[tuple[str, Any]]:
        """The watched actors except those named."""
        return [(n, a) for n, a in self.watched if n not in names]

    def track_placement(self, placement):
        self._placements.append(placement)
        return placement

    def __exit__(self, *exc) -> None:
        signal.signal(signal.SIGINT, _record_only)  # the teardown itself must run to its end
        signal.signal(signal.SIGTERM, _record_only)
        try:
            for actor in reversed(self._actors):
                try:
                    ray.kill(actor, no_restart=True)
                except Exception:  # noqa: BLE001 - already dead, or the cluster is gone
                    pass
            self._actors.clear()
            self.watched.clear()
            for placement in self._placements:
                placement.remove()
            self._placements.clear()
            if self.started_ray:
                try:
                    ray.shutdown()
                finally:
                    self._reaper.release()
                    self._reaper = None
        finally:
            if self._previous_sigterm is not None:
                signal.signal(signal.SIGTERM, self._previous_sigterm)
                signal.signal(signal.SIGINT, self._previous_sigint)


def _record_only(signum, frame):
    _interrupted.set()


def _interrupt(signum, frame):
    first = not _interrupted.is_set()
    _interrupted.set()
    if first:  # the teardown that follows must not be interrupted by a second signal
        raise KeyboardInterrupt(signal.Signals(signum).name)


def _describe_resources(resources: dict[str, float]) -> str:
    keys = ("CPU", "GPU")
    return ", ".join(f"{resources[k]:g} {k}" for k in keys if k in resources) or str(resources)
