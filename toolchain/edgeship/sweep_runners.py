"""Where a sweep's points run: this process (``--jobs 1``), a local process pool (``--jobs N``: spawned processes,
since torch and fork do not mix), or Ray (``--ray auto | ray://HOST:10001 | HOST:PORT``): each point a Ray task
declaring its CPUs, the job (model factory, starting weights, data) put in the object store once and passed by
reference, results taken as they finish (``ray.wait``). Every runner calls :func:`edgeship.sweep.run_point` and
hands each row to ``finished`` in this process, in the order the points finish.

A worker that dies (killed, out of memory, ``os._exit``) is retried: by Ray (``max_retries``) or, in the pool,
by a new pool for the points it took down; past ``retries`` the point is recorded as failed.
"""
from __future__ import annotations

import logging
import os
from typing import Callable, Sequence

from .errors import EdgeshipError
from .sweep import SweepJob, failed_row, run_point

log = logging.getLogger(__name__)
RAY_PIN = "ray==2.60.0"
RAY_HINT = "pip install 'edgeship[ray]'   # Ray " + RAY_PIN.split("==")[1] + ", the sweep's optional cluster engine"
Finished = Callable[[dict], None]


def pick(jobs: int, ray: str | None, cpus: int, retries: int):
    """The runner for ``--jobs`` / ``--ray`` (checked now, before any long work)."""
    if cpus < 1:
        raise EdgeshipError(f"--cpus-per-point must be >= 1, got {cpus}")
    if retries < 0:
        raise EdgeshipError(f"retries must be >= 0, got {retries}")
    if ray:
        if jobs != 1:
            raise EdgeshipError("--jobs is for the local process pool; with --ray the cluster's CPUs decide",
                                hint="drop --jobs, or drop --ray")
        return RayRunner(ray, cpus, retries)
    if jobs < 1:
        raise EdgeshipError(f"--jobs must be >= 1, got {jobs}")
    return SerialRunner(cpus) if jobs == 1 else PoolRunner(jobs, cpus, retries)


class SerialRunner:
    def __init__(self, cpus: int):
        self.cpus = cpus

    def run(self, job: SweepJob, points: Sequence[float], finished: Finished, progress=None) -> dict:
        for s in points:
            finished(run_point(job, s, progress))
        return {"kind": "serial", "workers": 1, "cpus_per_point": self.cpus}


# -- local process pool -------------------------------------------------------------------------------------------
def _worker_main(conn, job: SweepJob) -> None:
    """A pool worker (a spawned process): the job arrives once, then one point at a time until None."""
    import torch
    torch.set_num_threads(job.cpus)
    while True:
        s = conn.recv()
        if s is None:
            return
        conn.send(run_point(job, s))


class PoolRunner:
    """``jobs`` spawned worker processes, one point each at a time, fed from this process over a pipe each. A worker
    that dies (its pipe closes) is replaced and its point runs again, up to ``retries`` times; then it is failed.
    (concurrent.futures' pool breaks as a whole, and can hang, when one worker dies.)"""

    def __init__(self, jobs: int, cpus: int, retries: int):
        self.jobs, self.cpus, self.retries = jobs, cpus, retries

    def run(self, job: SweepJob, points: Sequence[float], finished: Finished, progress=None) -> dict:
        import collections
        import multiprocessing as mp
        from multiprocessing.connection import wait

        ctx = mp.get_context("spawn")           # torch and fork do not mix
        todo = collections.deque(points)
        attempts: dict[float, int] = collections.Counter()
        workers: dict = {}                      # conn -> process
        busy: dict = {}                         # conn -> the point it runs

        def spawn():
            parent, child = ctx.Pipe()
            proc = ctx.Process(target=_worker_main, args=(child, job), daemon=True, name="edgeship-sweep")
            proc.start()
            child.close()
            workers[parent] = proc

        def feed(conn) -> None:
            if todo:
                s = todo.popleft()
                attempts[s] += 1
                conn.send(s)
                busy[conn] = s
        try:
            for _ in range(min(self.jobs, len(todo))):
                spawn()
            for conn in list(workers):
                feed(conn)
            while busy:
                for conn in wait(list(busy)):
                    s = busy.pop(conn)
                    try:
                        row = conn.recv()
                    except (EOFError, OSError):     # the worker died with the point
                        proc = workers.pop(conn)
                        proc.join(5)
                        conn.close()
                        if attempts[s] > self.retries:
                            finished(failed_row(s, f"the worker process died running this point (exit code "
                                                   f"{proc.exitcode}; {attempts[s]} attempts)"))
                        else:
                            log.warning("a sweep worker died (exit code %s); point %.2f runs again", proc.exitcode, s)
                            todo.appendleft(s)
                        if todo:
                            spawn()
                            feed(list(workers)[-1])
                        continue
                    finished(row)
                    feed(conn)
        finally:
            for conn, proc in workers.items():
                try:
                    conn.send(None)
                except OSError:
                    pass
            for conn, proc in workers.items():
                proc.join(10)
                if proc.is_alive():
                    proc.terminate()
                    proc.join(5)
                conn.close()
        return {"kind": "pool", "workers": self.jobs, "cpus_per_point": self.cpus}


# -- Ray ----------------------------------------------------------------------------------------------------------
def import_ray():
    try:
        import ray
    except ImportError:
        raise EdgeshipError("--ray needs Ray, which is not installed", hint=RAY_HINT) from None
    return ray


def _ray_point(job: SweepJob, sparsity: float) -> dict:
    return run_point(job, sparsity)


class RayRunner:
    """``auto`` (or ``local``): a Ray started here for this sweep (all of this host's CPUs), shut down after;
    ``ray://HOST:10001`` (Ray Client) or ``HOST:PORT`` (a cluster's GCS): an existing cluster, disconnected after.
    A Ray already initialised by the caller (the Python API) is used as it is and left running."""

    def __init__(self, address: str, cpus: int, retries: int):
        self.ray = import_ray()
        self.address, self.cpus, self.retries = address, cpus, retries

    def _connect(self) -> bool:
        ray = self.ray
        if ray.is_initialized():
            return False
        env = {"env_vars": {"PYTHONWARNINGS": "ignore"}}
        try:
            if self.address in ("auto", "local"):
                ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False,
                         runtime_env=env, configure_logging=False)
            else:
                ray.init(address=self.address, log_to_driver=False, runtime_env=env, configure_logging=False)
        except (ConnectionError, RuntimeError, ValueError) as e:
            raise EdgeshipError(f"--ray {self.address}: could not connect: {str(e).splitlines()[0][:300]}",
                                hint="start one with `ray start --head`, or use --ray auto for a local one") from None
        return True

    def run(self, job: SweepJob, points: Sequence[float], finished: Finished, progress=None) -> dict:
        ray = self.ray
        started = self._connect()
        try:
            resources = ray.cluster_resources()
            remote = ray.remote(num_cpus=self.cpus, max_retries=self.retries)(_ray_point)
            job_ref = ray.put(job)                       # once in the object store; every task gets the reference
            refs = {remote.remote(job_ref, s): s for s in points}
            while refs:
                done, _ = ray.wait(list(refs), num_returns=1)
                for r in done:
                    s = refs.pop(r)
                    try:
                        row = ray.get(r)
                    except Exception as e:  # noqa: BLE001 - the worker died past max_retries, or Ray failed the task
                        why = str(e).strip().splitlines()[0][:500] if str(e).strip() else type(e).__name__
                        row = failed_row(s, f"{type(e).__name__}: {why} (after {self.retries} retries)")
                    finished(row)
            workers = int(resources.get("CPU", 0) // self.cpus)
            return {"kind": "ray", "address": self.address, "workers": workers, "cpus_per_point": self.cpus,
                    "cluster_cpus": resources.get("CPU")}
        finally:
            if started:
                ray.shutdown()
