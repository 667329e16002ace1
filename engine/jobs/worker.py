"""A persistent measuring process, so a front end's own threads never share an interpreter with timed calls.

Inside a Streamlit server, a timing loop competes for the GIL with the server's event loop and every
session's script: stored rows read 60-300x slow. So the dashboard sends each measurement (and each
background sweep, such as the starter grid) to this worker: one process, models cached in it, one
measurement at a time, interactive requests served before the next configuration of a background sweep.
Results go straight into the SQLite store; replies carry the row.

Transport: a localhost socket from `multiprocessing.connection` with a random key (so no other local user
can drive it); the worker is started as `python -m engine.jobs.worker` (not forked from the server, so
it carries none of the server's threads) and exits when the connection closes. If it dies mid-measurement
(a kernel crash), the client records that configuration as a failed row and starts a new worker.
"""
from __future__ import annotations

import atexit
import itertools
import os
import queue
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any

from engine.core.errors import UserError
from engine.core.hardware import Hardware
from engine.core.recipe import Recipe
from engine.core.result import Result
from engine.measure.fingerprint import adopt
from engine.models.registry import ModelInfo

START_TIMEOUT_S = 120.0
CRASHED = "the measuring process stopped while running this configuration (exit code {code})"


@dataclass(frozen=True)
class JobStatus:
    """Progress of a background sweep, as the client last heard it."""

    job: int
    total: int
    done: int = 0
    measured: int = 0
    failed: int = 0
    contended: int = 0
    current: str | None = None
    eta_s: float | None = None
    finished: bool = False
    stopped: bool = False
    error: str | None = None


# --- the worker process -------------------------------------------------------------------------------
class _Job:
    def __init__(self, msg: dict[str, Any]) -> None:
        from engine.jobs.sweep import todo
        from engine.results.store import Store

        self.id, self.db, self.profile = msg["job"], msg["db"], msg["profile"]
        self.recipes = [Recipe.from_dict(r) for r in msg["recipes"]]
        with Store(self.db) as store:
            self.pending = todo(self.recipes, store, self.profile, remeasure_contended=msg.get("remeasure", False))
        self.total, self.done, self.stop = len(self.recipes), len(self.recipes) - len(self.pending), False
        self.measured, self.spent, self.second_pass = 0, 0.0, False

    def next_pass(self) -> bool:
        """Once, at the end: measure again what this job measured while the machine was busy (often the
        first configurations, measured while the page itself was loading)."""
        from engine.jobs.sweep import todo
        from engine.results.store import Store

        if self.second_pass or self.stop:
            return False
        self.second_pass = True
        with Store(self.db) as store:
            self.pending = todo(self.recipes, store, self.profile, remeasure_contended=True)
        self.total += len(self.pending)
        return bool(self.pending)


def _serve(conn: Connection) -> None:
    """The worker's loop: read requests, serve interactive ones first, advance background jobs between them."""
    from engine.jobs.sweep import measure_and_store
    from engine.measure.run import reference, run_recipe
    from engine.models import base_model
    from engine.results.store import Store

    interactive: list[dict] = []
    jobs: dict[int, _Job] = {}
    preload: list[str] = []

    def send(msg: dict) -> None:
        conn.send(msg)

    while True:
        try:
            msgs = [] if interactive or jobs or preload else [conn.recv()]
            while conn.poll():
                msgs.append(conn.recv())
        except (EOFError, OSError):
            return
        for m in msgs:
            if m["op"] == "measure":
                interactive.append(m)
            elif m["op"] == "describe":  # answered at once: a page waits on it
                try:
                    model, spec = base_model(m["model"])  # loaded now: measuring it comes next
                    info = spec.info(sum(p.numel() for p in model.parameters()))
                    send({"id": m["id"], "ok": True, "info": asdict(info)})
                except Exception as exc:  # noqa: BLE001  (a model that cannot load: the page says why)
                    send({"id": m["id"], "ok": False, "error": str(exc) if isinstance(exc, UserError)
                          else f"{type(exc).__name__}: {str(exc)[:300]}"})
            elif m["op"] == "sweep":
                try:
                    jobs[m["job"]] = _Job(m)
                except UserError as exc:
                    send({"job": m["job"], "finished": True, "error": str(exc)})
            elif m["op"] == "stop" and m["job"] in jobs:
                jobs[m["job"]].stop = True
            elif m["op"] == "preload":
                preload.append(m["model"])
            elif m["op"] == "shutdown":
                return
        if interactive:
            m = interactive.pop(0)
            try:
                recipe = Recipe.from_dict(m["recipe"])
                send({"id": m["id"], "current": recipe.to_dict()})
                result = run_recipe(recipe, m["profile"])
                with Store(m["db"]) as store:
                    row_id = store.put(result)
                send({"id": m["id"], "ok": True, "row_id": row_id, "result": result.to_dict()})
            except UserError as exc:
                send({"id": m["id"], "ok": False, "error": str(exc)})
            except Exception as exc:  # noqa: BLE001  (reported to the caller, the worker keeps serving)
                send({"id": m["id"], "ok": False, "error": f"{type(exc).__name__}: {str(exc)[:300]}"})
            continue
        if preload:  # idle: load a model the front end will ask for, so its first measurement starts at once
            try:
                reference(preload.pop(0))
            except Exception:  # noqa: BLE001  (the measurement that needs it reports the reason)
                pass
            continue
        if not jobs:
            continue
        job = next(iter(jobs.values()))
        if job.stop or (not job.pending and not job.next_pass()):
            send({"job": job.id, "finished": True, "stopped": job.stop and bool(job.pending), "done": job.done,
                  "total": job.total})
            del jobs[job.id]
            continue
        recipe = job.pending.pop(0)
        send({"job": job.id, "current": recipe.to_dict()})
        t0 = time.perf_counter()
        try:
            with Store(job.db) as store:
                result, _ = measure_and_store(recipe, store, job.profile)
        except UserError as exc:  # the store became unusable: the job cannot go on
            send({"job": job.id, "finished": True, "error": str(exc), "done": job.done})
            del jobs[job.id]
            continue
        job.spent += time.perf_counter() - t0
        job.done += 1
        job.measured += 1
        send({"job": job.id, "done": job.done, "total": job.total, "failed": result.error is not None,
              "contended": result.contended, "eta_s": job.spent / job.measured * len(job.pending)})


def _main() -> None:
    """Entry point of `python -m engine.jobs.worker HOST PORT` (key on stdin)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning)
    host, port = sys.argv[1], int(sys.argv[2])
    key = bytes.fromhex(sys.stdin.readline().strip())
    conn = Client((host, port), authkey=key)
    import engine.measure.run  # noqa: F401  (torch and the engine loaded before the first request)
    from engine.core.hardware import detect
    from engine.measure.fingerprint import fingerprint

    conn.send({"ready": True, "pid": os.getpid(), "hardware": asdict(detect()), "fingerprint": fingerprint()})
    _serve(conn)


# --- the client (in the front end's process) ---------------------------------------------------------
class Worker:
    """Handle on the measuring process; thread-safe, shared by every session of a front end."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._ids = itertools.count(1)
        self._replies: dict[int, queue.Queue] = {}
        self._inflight: dict[int, tuple[dict, str | None]] = {}  # request id -> (request, recipe now measured)
        self._jobs: dict[int, JobStatus] = {}
        self._job_requests: dict[int, dict] = {}
        self._job_current: dict[int, dict | None] = {}
        self._conn: Connection | None = None
        self._proc: subprocess.Popen | None = None
        self._hardware: Hardware | None = None
        self._infos: dict[str, ModelInfo] = {}

    # lifecycle
    def start(self, preload: str | None = None) -> None:
        """Start the process in the background (a front end calls this first thing, so that importing torch
        there overlaps its own start) and have it load `preload`'s model while it waits for requests.
        Returns at once; requests made meanwhile wait for the start."""
        def run() -> None:
            try:
                with self._lock:
                    conn = self._ensure()
                    if preload:
                        conn.send({"op": "preload", "model": preload})
            except (UserError, OSError):
                pass  # the first request starts it again and reports why it cannot

        threading.Thread(target=run, daemon=True, name="measure-worker-start").start()

    @property
    def hardware(self) -> Hardware:
        """The measuring process's machine (CPU flags, GPU as its torch sees it): what results are measured on."""
        with self._lock:
            self._ensure()
            return self._hardware

    def _ensure(self) -> Connection:
        with self._lock:
            if self._conn is not None and self._proc is not None and self._proc.poll() is None:
                return self._conn
            key = secrets.token_bytes(32)
            with Listener(("127.0.0.1", 0), authkey=key) as listener:
                host, port = listener.address
                self._proc = subprocess.Popen([sys.executable, "-m", "engine.jobs.worker", host, str(port)],
                                              stdin=subprocess.PIPE)
                self._proc.stdin.write(key.hex().encode() + b"\n")
                self._proc.stdin.close()
                accepted: list[Connection] = []
                waiter = threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True)
                waiter.start()
                waiter.join(START_TIMEOUT_S)
                if not accepted:
                    self._proc.kill()
                    raise UserError("the measuring process did not start (see the server's log)")
            conn = accepted[0]
            ready = conn.recv() if conn.poll(START_TIMEOUT_S) else {}
            if not ready.get("ready"):
                self._proc.kill()
                raise UserError("the measuring process did not start (see the server's log)")
            hw = ready["hardware"]
            self._hardware = Hardware(**{**hw, "cpu_flags": tuple(hw["cpu_flags"]),
                                         "gpu_capability": tuple(hw["gpu_capability"]) if hw["gpu_capability"] else None})
            adopt(ready["fingerprint"])
            self._conn = conn
            threading.Thread(target=self._read, args=(conn, self._proc), daemon=True,
                             name="measure-worker-reader").start()
            return conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send({"op": "shutdown"})
                except OSError:
                    pass
                self._conn.close()
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
            self._conn = self._proc = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    # requests
    def describe(self, model: str) -> ModelInfo:
        """The model's description, from the measuring process (which loads the model's code and tokenizer, so
        this process never does); remembered per model. Raises UserError for an unknown or broken model."""
        if model in self._infos:
            return self._infos[model]
        reply = self._ask({"op": "describe", "model": model})
        self._infos[model] = ModelInfo(**reply["info"])
        return self._infos[model]

    def _ask(self, msg: dict) -> dict:
        rid = next(self._ids)
        box: queue.Queue = queue.Queue()
        msg = {**msg, "id": rid}
        with self._lock:
            conn = self._ensure()
            self._replies[rid] = box
            self._inflight[rid] = (msg, None)
            conn.send(msg)
        reply = box.get()
        if not reply["ok"]:
            raise UserError(reply["error"])
        return reply

    def measure(self, recipe: Recipe, db: str, profile: str = "quick") -> tuple[Result, int]:
        """Measure in the worker and store; (result, row id). Raises UserError for bad input."""
        reply = self._ask({"op": "measure", "recipe": recipe.to_dict(), "db": _absolute(db), "profile": profile})
        return Result.from_dict(reply["result"]), int(reply["row_id"])

    def sweep(self, recipes: list[Recipe], db: str, profile: str = "quick", remeasure: bool = False) -> int:
        """Start a background sweep; returns its job id (see `status`)."""
        job = next(self._ids)
        msg = {"op": "sweep", "job": job, "recipes": [r.to_dict() for r in recipes], "db": _absolute(db),
               "profile": profile, "remeasure": remeasure}
        with self._lock:
            conn = self._ensure()
            self._jobs[job] = JobStatus(job, len(recipes))
            self._job_requests[job] = msg
            conn.send(msg)
        return job

    def status(self, job: int) -> JobStatus | None:
        with self._lock:
            return self._jobs.get(job)

    def stop(self, job: int) -> None:
        with self._lock:
            if self._conn is not None and job in self._jobs and not self._jobs[job].finished:
                self._conn.send({"op": "stop", "job": job})

    # replies
    def _read(self, conn: Connection, proc: subprocess.Popen) -> None:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError, TypeError):  # TypeError: the connection was closed under us at exit
                break
            with self._lock:
                if "id" in msg:
                    if "current" in msg:
                        self._inflight[msg["id"]] = (self._inflight[msg["id"]][0], msg["current"])
                        continue
                    self._inflight.pop(msg["id"], None)
                    box = self._replies.pop(msg["id"], None)
                    if box is not None:
                        box.put(msg)
                elif "job" in msg:
                    self._on_job(msg)
        self._on_death(conn, proc)

    def _on_job(self, msg: dict) -> None:
        job = msg["job"]
        st = self._jobs.get(job)
        if st is None:
            return
        if "current" in msg:
            self._job_current[job] = msg["current"]
            self._jobs[job] = replace(st, current=Recipe.from_dict(msg["current"]).label())
        elif msg.get("finished"):
            self._jobs[job] = replace(st, finished=True, stopped=bool(msg.get("stopped")), error=msg.get("error"),
                                      current=None, done=msg.get("done", st.done), total=msg.get("total", st.total))
            self._job_requests.pop(job, None)
            self._job_current.pop(job, None)
        else:
            self._job_current[job] = None
            self._jobs[job] = replace(st, done=msg["done"], total=msg["total"], measured=st.measured + 1,
                                      failed=st.failed + msg["failed"], contended=st.contended + msg["contended"],
                                      eta_s=msg["eta_s"])

    def _on_death(self, conn: Connection, proc: subprocess.Popen) -> None:
        """Record what was being measured as failed, answer waiting callers, resume background jobs."""
        try:
            code = proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
        with self._lock:
            if self._conn is not conn:
                return  # closed on purpose, or already replaced
            self._conn = self._proc = None
            error = CRASHED.format(code=code)
            for rid, (msg, current) in list(self._inflight.items()):
                row_id = _record_crash(current, msg["db"], msg["profile"], error) if current else None
                box = self._replies.pop(rid, None)
                if box is not None:
                    box.put({"ok": False, "error": error + ("; it is recorded as failed" if row_id else "")})
            self._inflight.clear()
            resume = []
            for job, msg in list(self._job_requests.items()):
                current = self._job_current.get(job)
                if current and _record_crash(current, msg["db"], msg["profile"], error) is not None:
                    self._jobs[job] = replace(self._jobs[job], failed=self._jobs[job].failed + 1)
                resume.append(msg)
        for msg in resume:  # the new worker skips what is stored, including the failed row just written
            with self._lock:
                try:
                    self._ensure().send(msg)
                except UserError as exc:
                    self._jobs[msg["job"]] = replace(self._jobs[msg["job"]], finished=True, error=str(exc))


def _absolute(db: str) -> str:
    """The worker runs in the repository folder: a relative path must mean what it means to the caller."""
    return str(Path(db).resolve())


def _record_crash(recipe: dict, db: str, profile: str, error: str) -> int | None:
    from engine.measure.fingerprint import fingerprint
    from engine.results.store import Store

    try:
        with Store(db) as store:
            return store.put(Result(model=recipe["model"], recipe=recipe, machine=fingerprint(), profile=profile,
                                    error=error))
    except UserError:
        return None


_SHARED: Worker | None = None
_SHARED_LOCK = threading.Lock()


@dataclass(frozen=True)
class WorkerSweep:
    """A sweep running in the measuring process, held as a Job (engine.jobs.command.Job): the sweep page and
    the starter grid poll and stop it the way the Search page does a search."""

    worker: Worker
    job: int

    @property
    def running(self) -> bool:
        status = self.progress()
        return status is not None and not status.finished

    def progress(self) -> JobStatus | None:
        return self.worker.status(self.job)

    def stop(self) -> None:
        self.worker.stop(self.job)

    def result(self) -> JobStatus | None:
        """The finished sweep's counts (None while it runs, or when it was stopped or failed)."""
        status = self.progress()
        return status if status is not None and status.finished and not status.stopped and not status.error else None

    def error(self) -> str | None:
        status = self.progress()
        return status.error if status is not None and status.finished else None


def shared() -> Worker:
    """The process-wide worker (one per front-end server), started on first use, stopped at exit."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = Worker()
            atexit.register(_SHARED.close)
        return _SHARED


if __name__ == "__main__":
    _main()
