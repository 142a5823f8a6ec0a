"""Launching runs: the dry-run planner (``plan``), its checks (``checks``) and memory model (``memory``), and the
Ray-cluster helper of the Slurm job (``ray_cluster``). See docs/launch.md."""

__all__: list[str] = []
