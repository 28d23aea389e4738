"""A throw-away single-node Slurm cluster for one test: munged, slurmctld and slurmd started as root
with everything (config, socket, state, logs, pid files) in one folder, on free ports.

Needs Debian's slurm-wlm and munge (`apt-get install slurm-wlm munge`) and root; `start` raises
Unavailable with the reason otherwise, and the test skips saying so.
"""
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path


class Unavailable(Exception):
    pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in open("/proc/meminfo"):
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 // 2  # half: this node is shared with the test itself
    return 1024


CONF = """ClusterName=lt{port}
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={port}
SlurmdPort={dport}
AuthType=auth/munge
AuthInfo=socket={d}/munge.sock,cred_expire=5
CredType=cred/munge
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/slurmctld.log
SlurmdLogFile={d}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
JobRequeue=1
ReturnToService=2
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1
NodeName={host} CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""


class Cluster:
    def __init__(self, folder: Path):
        self.d = Path(folder)
        self.env = None

    def start(self):
        missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch", "squeue") if not shutil.which(b)]
        if missing:
            raise Unavailable(f"{', '.join(missing)} not installed (apt-get install slurm-wlm munge)")
        if os.geteuid() != 0:
            raise Unavailable("the test cluster's daemons need root")
        if not Path("/etc/munge/munge.key").exists():
            raise Unavailable("no /etc/munge/munge.key (the munge package creates it)")
        d = self.d
        for sub in ("state", "spool"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
        host = socket.gethostname().split(".")[0]
        conf = CONF.format(host=host, port=_free_port(), dport=_free_port(), d=d, cpus=os.cpu_count(),
                           mem=_memory_mb())
        (d / "slurm.conf").write_text(conf)
        self.env = {**os.environ, "SLURM_CONF": str(d / "slurm.conf")}
        self._run(["munged", "-f", f"--socket={d}/munge.sock", f"--pid-file={d}/munged.pid",
                   f"--log-file={d}/munged.log", f"--seed-file={d}/munged.seed"], "munged")
        self._run(["slurmctld", "-f", str(d / "slurm.conf")], "slurmctld")
        self._run(["slurmd", "-f", str(d / "slurm.conf")], "slurmd")
        deadline = time.time() + 30
        while time.time() < deadline:
            p = subprocess.run(["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True)
            if p.returncode == 0 and p.stdout.strip() in ("idle", "mix", "alloc"):
                return self
            time.sleep(0.5)
        self.stop()
        raise Unavailable(f"the node did not come up within 30 s (sinfo: {p.stdout.strip()} {p.stderr.strip()}); "
                          f"see {d}/slurmctld.log")

    def _run(self, cmd, name):
        p = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60)
        if p.returncode:
            self.stop()
            log = self.d / f"{name}.log"
            tail = log.read_text()[-300:] if log.exists() else ""
            raise Unavailable(f"{name} did not start ({p.stderr.strip()[:200]} {tail})")

    def stop(self):
        """Cancel what still runs, then stop the daemons we started by their pid files (slurmd first,
        munged last). Waiting for the jobs first lets each slurmstepd end with its job."""
        if self.env is not None and (self.d / "slurmctld.pid").exists():
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, capture_output=True, timeout=60)
            for _ in range(100):
                p = subprocess.run(["squeue", "-h"], env=self.env, capture_output=True, text=True, timeout=60)
                if p.returncode or not p.stdout.strip():
                    break
                time.sleep(0.2)
        for name in ("slurmd", "slurmctld", "munged"):
            f = self.d / f"{name}.pid"
            try:
                pid = int(f.read_text().split()[0])
                os.kill(pid, signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except OSError:
                    break
                time.sleep(0.1)
