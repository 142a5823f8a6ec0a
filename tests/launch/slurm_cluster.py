"""A private one-node Slurm cluster (Debian's slurm-wlm + munge) for the sbatch tests, started and stopped by us.

    with SlurmCluster(workdir) as cluster:          # munged, slurmctld, slurmd as child processes of this process
        job = cluster.submit(["scripts/slurm/slime_entropy.sbatch", ...], extra=["--gpus-per-node=0"])
        state = cluster.wait(job, timeout=300)       # ('COMPLETED', '0:0'), ...

Everything lives in ``workdir``: the munge key and socket, ``slurm.conf`` (free ports, ``SLURM_CONF`` for the
clients), state and spool directories, daemon logs. Nothing in /etc is touched and no system service is used, so it
coexists with a real Slurm on the machine. The node is this host (CPU only, its cores and memory), reached at
127.0.0.1. Daemons run in the foreground as our children and are terminated (then killed) on exit; jobs still in
the queue are cancelled first.

:func:`slurm_available` says whether the binaries are there, installing them with apt-get when allowed
(``SLIME_ENTROPY_SLURM_INSTALL=1``, root, apt-get present); tests skip with its reason otherwise.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo")
PACKAGES = ("slurm-wlm", "munge")


def _missing() -> list[str]:
    search = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    return [b for b in BINARIES if shutil.which(b, path=search) is None]


def slurm_available() -> tuple[bool, str]:
    """(usable, reason). Installs slurm-wlm and munge with apt-get when SLIME_ENTROPY_SLURM_INSTALL=1 and root."""
    missing = _missing()
    if not missing:
        if os.geteuid() != 0:
            return False, "the private Slurm cluster runs its daemons as root; run the tests as root"
        return True, ""
    if os.environ.get("SLIME_ENTROPY_SLURM_INSTALL") != "1":
        return False, (
            f"Slurm is not installed (missing {', '.join(missing)}); scripts/ci/slurm_stage.sh installs slurm-wlm and "
            "munge and runs these tests (or set SLIME_ENTROPY_SLURM_INSTALL=1 as root)"
        )
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False, "installing Slurm needs root and apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES]
    result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    if result.returncode:  # stale or missing package lists: refresh once
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, text=True, timeout=600)
        result = subprocess.run(install, env=env, capture_output=True, text=True, timeout=600)
    missing = _missing()
    if missing:
        return False, f"apt-get could not install Slurm (still missing {', '.join(missing)}): {result.stderr[-500:]}"
    return True, ""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    path = shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin:/sbin")
    assert path is not None, name
    return path


class SlurmError(RuntimeError):
    pass


class SlurmCluster:
    def __init__(self, workdir: Path, start_timeout: float = 60.0):
        self.dir = Path(workdir)
        self.start_timeout = start_timeout
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        self.jobs: list[str] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.dir / "slurm.conf")}

    # -- lifecycle ------------------------------------------------------------------------------------------------
    def __enter__(self) -> SlurmCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        socket_path = self.dir / "munge.sock"
        self._spawn(
            "munged",
            [
                _binary("munged"), "--foreground", "--force", f"--socket={socket_path}", f"--key-file={key}",
                f"--pid-file={self.dir / 'munged.pid'}", f"--seed-file={self.dir / 'munged.seed'}",
            ],
        )  # fmt: skip
        self._until(lambda: socket_path.exists(), "munged to create its socket")
        self._write_config(socket_path)
        self._spawn("slurmctld", [_binary("slurmctld"), "-D", "-i"])
        self._spawn("slurmd", [_binary("slurmd"), "-D", "-N", self.node])
        self._until(self._node_idle, "the Slurm node to become idle")

    def stop(self) -> None:
        if self.jobs and "slurmctld" in self.procs and self.procs["slurmctld"].poll() is None:
            subprocess.run(
                [_binary("scancel"), *self.jobs], env=self.env, capture_output=True, timeout=30, check=False
            )
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self._queued():
                time.sleep(1)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            proc.log.close()

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.dir / "log" / f"{name}.out", "wb")  # noqa: SIM115 - closed in stop()
        proc = subprocess.Popen(argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        proc.log = log
        self.procs[name] = proc

    def _until(self, condition, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not condition():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmError(f"{name} exited with {proc.returncode} while waiting for {what}:\n{self.logs()}")
            if time.monotonic() > deadline:
                raise SlurmError(f"timed out after {self.start_timeout:.0f} s waiting for {what}:\n{self.logs()}")
            time.sleep(0.5)

    def logs(self) -> str:
        parts = []
        for path in sorted((self.dir / "log").glob("*")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def _write_config(self, munge_socket: Path) -> None:
        cpus = os.cpu_count() or 1
        with open("/proc/meminfo") as f:
            mem_kib = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
        memory_mib = max(1024, mem_kib // 1024 - 1024)
        d = self.dir
        (d / "slurm.conf").write_text(f"""# private one-node test cluster (tests/launch/slurm_cluster.py)
ClusterName=slime-entropy-test
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={munge_socket}
SlurmUser=root
SlurmdUser=root
StateSaveLocation={d / 'state'}
SlurmdSpoolDir={d / 'spool'}
SlurmctldPidFile={d / 'slurmctld.pid'}
SlurmdPidFile={d / 'slurmd.pid'}
SlurmctldLogFile={d / 'log' / 'slurmctld.log'}
SlurmdLogFile={d / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=60
SlurmdTimeout=60
KillWait=15
InactiveLimit=0
MinJobAge=600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mib} State=UNKNOWN
PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    # -- queries --------------------------------------------------------------------------------------------------
    def run(self, *argv: str, timeout: float = 30) -> str:
        result = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=timeout)
        if result.returncode:
            raise SlurmError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr}")
        return result.stdout

    def _node_idle(self) -> bool:
        try:
            return self.run("sinfo", "-h", "-n", self.node, "-o", "%t").strip() == "idle"
        except (SlurmError, subprocess.TimeoutExpired):
            return False

    def _queued(self) -> bool:
        try:
            return bool(self.run("squeue", "-h", "-o", "%i").strip())
        except (SlurmError, subprocess.TimeoutExpired):
            return False

    def submit(self, argv: list[str], *, options: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
        result = subprocess.run(
            ["sbatch", "--parsable", *options, *argv],
            env={**self.env, **(env or {})},
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode:
            raise SlurmError(f"sbatch failed ({result.returncode}): {result.stderr}")
        job = result.stdout.strip().split(";")[0]
        self.jobs.append(job)
        return job

    def job_field(self, job: str, field: str) -> str:
        for token in self.run("scontrol", "show", "job", job).split():
            key, _, value = token.partition("=")
            if key == field:
                return value
        raise SlurmError(f"job {job} has no field {field}")

    def wait_state(self, job: str, states: set[str], timeout: float) -> str:
        """Poll until the job's state is one of ``states`` (e.g. RUNNING, or the final ones); return it."""
        deadline = time.monotonic() + timeout
        while True:
            state = self.job_field(job, "JobState")
            if state in states:
                return state
            if time.monotonic() > deadline:
                raise SlurmError(f"job {job} still {state} after {timeout:.0f} s\n{self.logs()}")
            time.sleep(1)

    def wait(self, job: str, timeout: float) -> tuple[str, str]:
        """Wait for the job to end; return (JobState, ExitCode)."""
        final = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}
        state = self.wait_state(job, final, timeout)
        return state, self.job_field(job, "ExitCode")
