"""The workers `payhooks bench worker`'s comparison runs (tests/bench/compare.py): how each is
started, how its jobs are enqueued, and what its processes spent.

- payhooks: `python -m tests.bench.worker --worker CONFIG callbacks,deliveries
  --concurrency N`, `build_worker`'s worker with the scheduler, on both queues; a callback
  job per callback, stored as the ingress stores it (tests/bench/worker.py `stored_jobs`,
  `enqueue`), its delivery made by the callback job itself (a delivery job only for a
  retry).
- Celery (tests/bench/peer_celery.py): `python -m celery -A tests.bench.peer_celery worker
  --pool threads --concurrency N`; one task per callback, sent with `send_task`.
- dramatiq (tests/bench/peer_dramatiq.py): `python -m dramatiq tests.bench.peer_dramatiq
  --processes 1 --threads T`; one message per callback, enqueued through its RedisBroker.
A peer's task is given the callback's PayEx payment path and does tests/bench/peer_task.py.

Every worker starts in a session of its own, pinned to the CPUs given, with stdout and
stderr in a log. What a worker spent is summed over its process tree (the process and every
live descendant: RQ's scheduler, dramatiq's worker processes): CPU is utime + stime from
/proc/<pid>/stat; memory is the largest peak RSS (VmHWM) of one process of the tree.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dramatiq import Message
from dramatiq.brokers.redis import RedisBroker

from shared import queue as queues
from tests.bench import peer_celery, peer_task
from tests.bench.ingress import BenchError
from tests.bench.worker import Bench, Keyed, enqueue, stored_jobs

_PROJECT = Path(__file__).resolve().parents[2]
_TICKS = os.sysconf("SC_CLK_TCK")
STOP_SECONDS = 15.0
Enqueue = Callable[[Bench, Keyed], None]


@dataclass(frozen=True, slots=True)
class Runner:
    """One worker set-up of the comparison."""

    key: str  # how results are filed: payhooks, celery, dramatiq-1, ...
    label: str  # its row in the table
    argv: list[str]
    threads: int  # jobs at once in one process
    processes: int
    enqueue: Enqueue


@dataclass(frozen=True, slots=True)
class PeerTarget:
    """What the peers' tasks are told (tests/bench/peer_task.py `ENV`)."""

    redis: str
    provider: str
    token: str
    hook: str
    secret: str

    def env(self) -> dict[str, str]:
        return {peer_task.ENV[name]: getattr(self, name) for name in peer_task.ENV}


def payhooks(config: Path, concurrency: int, processes: int = 1) -> Runner:
    """`build_worker`'s worker on both queues, `concurrency` jobs at once a process."""
    label = f"payhooks (concurrency {concurrency})"
    if processes > 1:
        label = f"payhooks, {processes} processes (concurrency {concurrency} each)"
    argv = [sys.executable, "-m", "tests.bench.worker", "--worker", str(config),
            f"{queues.CALLBACKS},{queues.DELIVERIES}", "--concurrency", str(concurrency)]
    return Runner(f"payhooks-x{processes}" if processes > 1 else "payhooks", label, argv,
                  concurrency, processes, _enqueue_payhooks)


def celery(concurrency: int) -> Runner:
    return Runner("celery", f"Celery threads ({concurrency})",
                  [sys.executable, "-m", "celery", "-A", "tests.bench.peer_celery", "worker",
                   "--pool", "threads", "--concurrency", str(concurrency), "--loglevel",
                   "WARNING", "--hostname", "bench-peer@%h"],
                  concurrency, 1, _enqueue_celery)


def dramatiq(threads: int) -> Runner:
    return Runner(f"dramatiq-{threads}",
                  f"dramatiq {threads} thread{'s' if threads != 1 else ''}",
                  [sys.executable, "-m", "dramatiq", "tests.bench.peer_dramatiq",
                   "--processes", "1", "--threads", str(threads)],
                  threads, 1, _enqueue_dramatiq)


def _paths(keyed: Keyed) -> list[str]:
    return [payment for (_, payment), _ in keyed]


def _enqueue_payhooks(bench: Bench, keyed: Keyed) -> None:
    enqueue(bench, queues.callback_template(), stored_jobs(bench, keyed))


def _enqueue_celery(bench: Bench, keyed: Keyed) -> None:
    """One task per callback, from an app of its own (a fresh connection declares the
    queue's bindings again after Redis was flushed)."""
    app = peer_celery.make_app(bench.settings.redis_url)
    try:
        with app.producer_or_acquire() as producer:
            for path in _paths(keyed):
                app.send_task(peer_task.TASK, args=[path], producer=producer)
    finally:
        app.close()


def _enqueue_dramatiq(bench: Bench, keyed: Keyed) -> None:
    broker = RedisBroker(url=bench.settings.redis_url)
    try:
        broker.declare_queue(peer_task.QUEUE)
        for path in _paths(keyed):
            broker.enqueue(Message(queue_name=peer_task.QUEUE, actor_name=peer_task.TASK,
                                   args=(path,), kwargs={}, options={}))
    finally:
        broker.close()


def launch(stack: contextlib.ExitStack, runner: Runner, env: dict[str, str], cpus: set[int],
           logs: Path) -> list[subprocess.Popen[bytes]]:
    """Start the runner's processes, each stopped (with its descendants) when `stack` closes."""
    processes = []
    for number in range(runner.processes):
        with (logs / f"{runner.key}-{number}.log").open("wb") as log:
            process = subprocess.Popen(runner.argv, stdout=log, stderr=subprocess.STDOUT,
                                       env=env, cwd=_PROJECT, start_new_session=True,
                                       preexec_fn=functools.partial(os.sched_setaffinity, 0,
                                                                    cpus))
        stack.callback(stop_group, process)
        processes.append(process)
    return processes


def stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process's session (it leads one), then SIGKILL to what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)  # a child that outlived its parent


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command's name, or None if it is gone."""
    with contextlib.suppress(FileNotFoundError, ProcessLookupError):
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return None


def tree(roots: Iterable[int]) -> list[int]:
    """These processes and every live descendant of theirs."""
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        fields = _stat(int(entry.name)) if entry.name.isdigit() else None
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU the processes have spent so far."""
    ticks = 0
    for pid in pids:
        fields = _stat(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / _TICKS


def peak_rss_mb(pids: Sequence[int]) -> float:
    """The largest VmHWM among the processes, in MiB."""
    peaks = [0]
    for pid in pids:
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            status = Path(f"/proc/{pid}/status").read_text()
            peaks += [int(line.split()[1]) for line in status.splitlines()
                      if line.startswith("VmHWM:")]
    if peaks == [0]:
        raise BenchError(f"no VmHWM for processes {list(pids)}")
    return max(peaks) / 1024
