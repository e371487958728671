"""Two network hosts on one machine, and torchrun node agents running in them.

``HostPair`` makes two network namespaces joined by a veth pair: the tests' own addresses
10.200.0.1/24 and 10.200.0.2/24 on the veth (named ``fsc0`` inside each namespace) and loopback
up in each, nothing else; the hosts reach each other and nothing outside. Namespace names carry
this process's id and a random suffix, so parallel test runs never collide. ``Node`` starts one
node's ``torchrun`` agent inside a namespace and can stop it, list its workers by rank and kill
one of them; ``HostPair.destroy`` kills every process left in the namespaces before deleting
them, so nothing outlives a test, whether it passed, failed or timed out.

Creating namespaces needs root (CAP_SYS_ADMIN) and iproute2's ``ip``; where either is missing,
or the kernel or container refuses, ``HostPair.create`` raises ``Unavailable`` with the reason.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fastsigclr.runlog import read_metrics

IFNAME = "fsc0"  # the veth end's name inside each namespace
ADDRS = ("10.200.0.1", "10.200.0.2")
RDZV_PORT = 29500  # each pair has its own network stack: a fixed port cannot collide


class Unavailable(Exception):
    """Network namespaces cannot be created here; the message says why."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and proc.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {proc.stderr.strip()}")
    return proc


@dataclass(frozen=True)
class Host:
    netns: str
    addr: str


@dataclass
class HostPair:
    hosts: tuple[Host, Host]

    @classmethod
    def create(cls) -> HostPair:
        if shutil.which("ip") is None:
            raise Unavailable("iproute2's `ip` is not installed (apt-get install iproute2)")
        if os.geteuid() != 0:
            raise Unavailable("creating network namespaces needs root (CAP_SYS_ADMIN)")
        tag = f"fsc-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        pair = cls((Host(f"{tag}-0", ADDRS[0]), Host(f"{tag}-1", ADDRS[1])))
        try:
            pair._build()
        except RuntimeError as err:
            pair.destroy()
            raise Unavailable(f"cannot create network namespaces here: {err}") from err
        return pair

    def _build(self) -> None:
        a, b = self.hosts
        for host in self.hosts:
            _ip("netns", "add", host.netns)
        _ip("link", "add", IFNAME, "netns", a.netns, "type", "veth", "peer", "name", IFNAME, "netns", b.netns)
        for host in self.hosts:
            _ip("-n", host.netns, "addr", "add", f"{host.addr}/24", "dev", IFNAME)
            _ip("-n", host.netns, "link", "set", IFNAME, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("netns", "exec", host.netns, "true")  # `ip netns exec` needs a mount namespace too

    def destroy(self) -> None:
        """Kill every process in both namespaces, then delete them (and with them the veth)."""
        for host in self.hosts:
            kill_netns_processes(host.netns)
            _ip("netns", "del", host.netns, check=False)


def kill_netns_processes(netns: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        listed = _ip("netns", "pids", netns, check=False).stdout.split()
        pids = [int(p) for p in listed if p.isdigit()]
        if not pids or time.monotonic() > deadline:
            return
        _kill(pids)
        time.sleep(0.1)


def _kill(pids: list[int], sig: int = signal.SIGKILL) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def torchrun_argv(
    node_rank: int, nproc: int, endpoint: str, local_addr: str, rdzv: dict[str, int], max_restarts: int = 0
) -> list[str]:
    """The README's two-node torchrun launcher, for one node, up to its ``-m`` module; with
    ``max_restarts``, the README's restarting one."""
    conf = ",".join([f"is_host={int(node_rank == 0)}", *(f"{k}={v}" for k, v in rdzv.items())])
    restarts = f" --max-restarts {max_restarts}" if max_restarts else ""
    return [
        "torchrun",
        *f"--nnodes 2 --node_rank {node_rank} --nproc_per_node {nproc}{restarts} --rdzv_backend c10d".split(),
        *f"--rdzv_endpoint {endpoint} --rdzv_conf {conf} --local_addr {local_addr}".split(),
    ]


def _torchrun_executable() -> list[str]:
    script = Path(sys.executable).parent / "torchrun"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


@dataclass
class Node:
    """One node's torchrun agent (and its workers) in ``host``'s namespace; output in ``log``."""

    host: Host
    argv: list[str]  # the command as the README writes it: torchrun_argv(...) + ["-m", "fastsigclr", ...]
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # added to the environment (test faults)
    proc: subprocess.Popen | None = field(default=None, repr=False)
    started: float = 0.0

    def start(self) -> Node:
        env = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": IFNAME, **self.env}
        assert self.argv[0] == "torchrun", self.argv
        cmd = ["ip", "netns", "exec", self.host.netns, *_torchrun_executable(), *self.argv[1:]]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        self.started = time.monotonic()
        return self

    def wait(self, timeout: float) -> int:
        """The agent's exit status; on timeout, the node is stopped and TimeoutError says so."""
        assert self.proc is not None
        try:
            return self.proc.wait(timeout=max(0.0, timeout - (time.monotonic() - self.started)))
        except subprocess.TimeoutExpired:
            self.stop()
            raise TimeoutError(
                f"node in {self.host.netns} still running after {timeout} s:\n{self.tail()}"
            ) from None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def worker_pids(self) -> dict[int, int]:
        """Global rank -> pid of this node's workers (the agent's children that carry RANK)."""
        assert self.proc is not None
        found = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            ranks = [v[5:] for v in env if v.startswith(b"RANK=")]
            if parent == self.proc.pid and ranks:
                found[int(ranks[0])] = int(entry.name)
        return found

    def kill_rank(self, rank: int, sig: int = signal.SIGKILL) -> None:
        os.kill(self.worker_pids()[rank], sig)

    def kill(self) -> None:
        """The node dies at once: SIGKILL to the agent and to each of its workers."""
        assert self.proc is not None
        workers = list(self.worker_pids().values())
        os.killpg(self.proc.pid, signal.SIGKILL)
        _kill(workers)
        self.proc.wait(timeout=10)

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM to the agent (it stops its workers); after ``grace``, SIGKILL to what is left."""
        if self.proc is None or self.proc.poll() is not None:
            return
        workers = list(self.worker_pids().values())
        self.proc.terminate()
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=grace)
        _kill(workers)  # each worker leads its own session: the agent's group does not hold them


def wait_for_workers(nodes: list[Node], per_node: int, timeout: float) -> list[dict[int, int]]:
    """Each node's {global rank: pid} once every node runs ``per_node`` workers (polled every 0.1 s);
    TimeoutError if that does not happen within ``timeout`` or a node exits first."""
    deadline = time.monotonic() + timeout
    found: list[dict[int, int]] = []
    while time.monotonic() < deadline:
        found = [node.worker_pids() for node in nodes]
        if all(len(f) == per_node for f in found):
            return found
        if any(node.proc is None or node.proc.poll() is not None for node in nodes):
            break
        time.sleep(0.1)
    raise TimeoutError(f"not every node ran {per_node} workers within {timeout} s: {found}")


def step_losses(run_dir: Path) -> list[float]:
    """The per-step losses a run logged in metrics.jsonl, in step order."""
    return [r["loss"] for r in read_metrics(run_dir) if r["kind"] == "step"]
