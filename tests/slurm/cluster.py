"""A one-node Slurm cluster on localhost for the tests: munge, slurmctld and slurmd from Debian's
packages, started directly (no systemd), one fake GPU, stopped by PID.

The configuration must sit at /etc/slurm/slurm.conf: the job step's srun does not see SLURM_CONF.
Without slurmdbd, sacct has no records: jobs are polled with squeue, and MinJobAge keeps finished
jobs visible to it for ten minutes.
"""

import contextlib
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

SLURM_DIR = Path("/etc/slurm")
STATE = Path("/var/spool/rdiunet-test-slurm")
MUNGE_RUN = Path("/run/munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


def missing_requirements() -> str | None:
    """Why a test cluster cannot start here, or None."""
    if os.geteuid() != 0:
        return "starting Slurm daemons needs root"
    absent = [d for d in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if not shutil.which(d)]
    if absent:
        packages = "slurmctld slurmd slurm-client munge"
        return f"Slurm/munge not installed ({', '.join(absent)}); apt-get install {packages}"
    return None


def slurm_conf(node: str, cpus: int, memory_mb: int) -> str:
    return f"""# rdiunet-bench test cluster (written by tests/slurm/cluster.py)
ClusterName=rdiunet-test
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={STATE}/ctld
SlurmdSpoolDir={STATE}/d
SlurmctldPidFile={STATE}/slurmctld.pid
SlurmdPidFile={STATE}/slurmd.pid
SlurmctldLogFile={STATE}/slurmctld.log
SlurmdLogFile={STATE}/slurmd.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
DefMemPerCPU=500
MinJobAge=600
# The node advertises what its config says (16 CPUs, 64 GB), not what the test machine has, so
# the profile's real resource requests are accepted unchanged.
SlurmdParameters=config_overrides
ReturnToService=2
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
GresTypes=gpu
KillWait=30
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} Gres=gpu:1 State=UNKNOWN
PartitionName=gpu Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(node: str) -> str:
    return f"AutoDetect=off\nNodeName={node} Name=gpu File=/dev/null\n"


def run(*command: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, check=check, timeout=60, **kwargs)


def node_ready(node: str) -> bool:
    state = run("sinfo", "-h", "-n", node, "-o", "%T", check=False).stdout.strip()
    return state.startswith("idle") or state.startswith("mixed")


def start(cpus: int = 16, memory_mb: int = 64000) -> dict:
    """Write the configuration and start the daemons; return their PIDs by name."""
    node = socket.gethostname().split(".")[0]
    stop()
    for folder in (STATE / "ctld", STATE / "d"):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    SLURM_DIR.mkdir(parents=True, exist_ok=True)
    (SLURM_DIR / "slurm.conf").write_text(slurm_conf(node, cpus, memory_mb))
    (SLURM_DIR / "gres.conf").write_text(gres_conf(node))
    MUNGE_RUN.mkdir(parents=True, exist_ok=True)
    shutil.chown(MUNGE_RUN, "munge", "munge")
    run("runuser", "-u", "munge", "--", "munged", "--force")
    run("slurmctld")
    run("slurmd")
    deadline = time.monotonic() + 60
    while not node_ready(node):
        if time.monotonic() > deadline:
            log = (STATE / "slurmctld.log").read_text()[-2000:] if (STATE / "slurmctld.log").exists() else ""
            raise RuntimeError(
                f"the test Slurm node did not become idle: {run('sinfo', check=False).stdout}\n{log}"
            )
        time.sleep(0.5)
    return {"node": node, "pids": pids()}


def pids() -> dict[str, list[int]]:
    found = {}
    for daemon in DAEMONS:
        result = run("pgrep", "-x", daemon, check=False)
        found[daemon] = [int(p) for p in result.stdout.split()]
    return found


def signal_all(daemons: tuple[str, ...], signal: int) -> None:
    for daemon in daemons:
        for pid in pids()[daemon]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal)


def stop() -> None:
    """Stop the daemons by PID (slurmd and slurmctld first, then munged)."""
    signal_all(("slurmd", "slurmctld", "munged"), 15)
    deadline = time.monotonic() + 20
    while any(pids().values()) and time.monotonic() < deadline:
        time.sleep(0.2)
    signal_all(DAEMONS, 9)


if __name__ == "__main__":
    import sys

    if sys.argv[1:] == ["start"]:
        print(start())
    elif sys.argv[1:] == ["stop"]:
        stop()
    else:
        sys.exit("usage: python tests/slurm/cluster.py start|stop")
