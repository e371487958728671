"""Runs one stage of tools/gpu_suite.py: its steps (commands) as child processes, each within its own
time limit and the stage's, and the stage's record on disk after every change.

The record, ``OUT/stage-K.json``: the run's header (commit, device, driver, clocks, versions, date,
command), then each step's command, status (ok, failed, timeout, skipped, not run, interrupted),
exit code, seconds and last output line. It is written before the first step and after each one, so
whatever finished survives a stage that is cut short. Each step's output goes to
``OUT/stage-K/<step>.log``. Only the standard library here: the runner holds no CUDA context while
its steps measure.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NVIDIA_FIELDS = (
    "name",
    "driver_version",
    "pci.bus_id",
    "clocks.sm",
    "clocks.max.sm",
    "clocks.mem",
    "clocks.max.mem",
    "clocks.applications.graphics",
    "power.draw",
    "power.limit",
    "temperature.gpu",
    "persistence_mode",
    "compute_mode",
    "mig.mode.current",
)


@dataclass(frozen=True)
class Step:
    """One command line (split like a shell's, no shell features). It may name {py} (the
    interpreter), {out} (the stage's folder), {record} (the stage's JSON), {data} (CIFAR-10 in the
    official layout) and {shared} (the JPEG pack)."""

    name: str
    command: str
    timeout_s: int
    group: str = ""  # consecutive steps of one non-empty group run at the same time
    gpus: int = 0  # skipped (not failed) where fewer CUDA devices are present

    def argv(self, fmt: dict[str, str]) -> list[str]:
        return [word.format(**fmt) for word in shlex.split(self.command)]


@dataclass(frozen=True)
class Stage:
    key: str
    name: str
    what: str
    expected_s: int  # an estimate for one H100/H200 from the work each step does, not a measurement
    limit_s: int
    steps: tuple[Step, ...]


RECORD_CODE = """import json, sys, torch
from fastsigclr.runinfo import default_device, run_record
record = run_record(default_device(), sys.argv[1:])
record["cuda_devices"] = torch.cuda.device_count()
record["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
print(json.dumps(record))
"""


def nvidia_smi() -> dict[str, str]:
    """Driver, clocks, power and modes of GPU 0; each field on its own, so that a field this driver
    does not know fails alone."""
    info: dict[str, str] = {}
    for field in NVIDIA_FIELDS:
        try:
            out = subprocess.run(
                ["nvidia-smi", "-i", "0", f"--query-gpu={field}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.SubprocessError) as err:
            return {"error": f"nvidia-smi: {err}"}
        text = (out.stdout or out.stderr).strip()
        info[field] = text if out.returncode == 0 else f"unavailable: {text}"
    return info


def git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment(py: str, env: dict[str, str], command: list[str]) -> dict:
    """torch's view (device, versions, date, command) from a child process, and nvidia-smi's."""
    try:
        out = subprocess.run(
            [py, "-c", RECORD_CODE, *command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        record = (
            json.loads(out.stdout.splitlines()[-1]) if out.returncode == 0 else {"error": out.stderr[-3000:]}
        )
    except (OSError, subprocess.SubprocessError, IndexError, json.JSONDecodeError) as err:
        record = {"error": f"{type(err).__name__}: {err}"}
    return {**record, "cpu_count": os.cpu_count(), "nvidia_smi": nvidia_smi()}


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _save(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def _tail(log: Path, lines: int) -> list[str]:
    try:
        text = log.read_text(errors="replace").replace("\r", "\n")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()][-lines:]


def _stop(proc: subprocess.Popen) -> None:
    """End a step and everything it started (its own process group): TERM, then KILL after 10 s."""
    for sig, wait_s in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
            proc.wait(timeout=wait_s)
            return
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            continue


def _batches(steps: tuple[Step, ...]) -> list[list[int]]:
    """Indices of steps to start together: runs of one non-empty group, else one step each."""
    out: list[list[int]] = []
    for i, step in enumerate(steps):
        if out and step.group and steps[out[-1][0]].group == step.group:
            out[-1].append(i)
        else:
            out.append([i])
    return out


class StageRun:
    """One stage's steps, its record on disk after every change, and its exit status."""

    def __init__(self, stage: Stage, out: Path, header: dict, fmt: dict[str, str], env: dict[str, str]):
        self.stage, self.env, self.cuda = stage, env, header.get("environment", {}).get("cuda_devices", 0)
        self.folder = out / f"stage-{stage.key}"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = out / f"stage-{stage.key}.json"
        fmt = {**fmt, "out": str(self.folder), "record": str(self.path)}
        self.record = {
            **header,
            "stage": stage.key,
            "name": stage.name,
            "what": stage.what,
            "limit_s": stage.limit_s,
            "expected_s": stage.expected_s,
            "started": now(),
            "status": "running",
            "steps": [
                {
                    "name": s.name,
                    "argv": s.argv(fmt),
                    "timeout_s": s.timeout_s,
                    "status": "pending",
                }
                for s in stage.steps
            ],
        }
        self.running: list[tuple[subprocess.Popen, dict, float, float]] = []
        _save(self.path, self.record)

    def _start(self, step: Step, rec: dict, deadline: float) -> None:
        left = deadline - time.monotonic()
        if step.gpus > self.cuda:
            rec.update(status="skipped", reason=f"needs {step.gpus} CUDA devices, found {self.cuda}")
        elif left < 1:
            rec.update(status="not run", reason=f"the stage's {self.stage.limit_s} s were spent")
        if rec["status"] != "pending":
            print(
                f"== {now()[11:19]} stage {self.stage.key} {step.name}: {rec['status']}, {rec['reason']}",
                flush=True,
            )
            return
        log = self.folder / f"{step.name}.log"
        rec.update(status="running", started=now(), log=f"stage-{self.stage.key}/{log.name}")
        with open(log, "w") as handle:  # the child keeps its own copy of the descriptor
            proc = subprocess.Popen(
                rec["argv"],
                cwd=ROOT,
                env=self.env,
                stdout=handle,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append((proc, rec, time.monotonic(), min(step.timeout_s, left)))

    def _finish(self, proc: subprocess.Popen, rec: dict, started: float, timed_out: bool) -> None:
        if timed_out:
            _stop(proc)
        rec.update(seconds=round(time.monotonic() - started, 1), rc=proc.returncode)
        rec["status"] = "timeout" if timed_out else ("ok" if proc.returncode == 0 else "failed")
        tail = _tail(self.folder / f"{rec['name']}.log", 40)
        rec["last_line"] = tail[-1] if tail else ""
        print(
            f"== {now()[11:19]} stage {self.stage.key} {rec['name']}: {rec['status']} ({rec['seconds']} s)"
            f"  {rec['last_line']}",
            flush=True,
        )
        if rec["status"] != "ok":
            print("\n".join(f"   | {line}" for line in tail), flush=True)

    def _wait(self) -> None:
        while self.running:
            time.sleep(0.2)
            for item in list(self.running):
                proc, rec, started, limit = item
                over = time.monotonic() - started > limit
                if proc.poll() is not None or over:
                    self.running.remove(item)
                    self._finish(proc, rec, started, timed_out=proc.returncode is None)
                    _save(self.path, self.record)

    def run(self) -> int:
        deadline = time.monotonic() + self.stage.limit_s
        try:
            for batch in _batches(self.stage.steps):
                for i in batch:
                    self._start(self.stage.steps[i], self.record["steps"][i], deadline)
                _save(self.path, self.record)
                self._wait()
        finally:  # interrupted (the caller's time limit): say so on disk, and leave nothing running
            for proc, rec, started, _ in self.running:
                _stop(proc)
                rec.update(status="interrupted", seconds=round(time.monotonic() - started, 1))
            ok = all(s["status"] in ("ok", "skipped") for s in self.record["steps"])
            self.record.update(status="ok" if ok else "failed", finished=now(), nvidia_smi_end=nvidia_smi())
            _save(self.path, self.record)
        return 0 if ok else 1
