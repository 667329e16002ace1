"""Sweeps on a Ray cluster: the same grid measured on every machine type of the cluster, rows back in one store.

Ray does the scheduling, placement, retries and transport. What is written here is the glue Ray has no notion of:
one measuring actor per node that claims all of that node's CPUs (or the requested GPU), so two measurements
never share cores; the grid measured once per *device fingerprint* (identical nodes share the work, different
machine types each get every configuration, so each has its own frontier); rows written by the driver into the
one SQLite store as they arrive, so a killed driver resumes with only what is missing.

Ray is optional (requirements-ray.txt) and imported only here, only when a cluster sweep is asked for.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from engine.core.errors import RecipeError, UserError
from engine.core.install import source_checkout
from engine.core.recipe import Recipe, parse_json
from engine.core.result import Result
from engine.jobs.sweep import Step, SweepSummary, todo
from engine.results.store import Store

SHIMS = Path(__file__).resolve().parent / "shims"
RAY_MISSING = "--executor ray needs Ray: pip install 'compression-dash[ray]' (or -r requirements-ray.txt)"
# What a worker node does not need of the project: the working directory Ray ships to each node.
EXCLUDES = [".git", ".venv", "artifacts", "*.db", "*.db-*", "*.db.models", "__pycache__", ".pytest_cache", "tests"]


@dataclass(frozen=True)
class ClusterOptions:
    """Where and on what to measure: `address` None starts a private Ray instance on this machine (tests, one
    box); "auto" joins the cluster `ray start` made here; "ray://host:10001" or "host:6379" reach a remote one."""

    address: str | None = None
    resources: dict[str, float] = field(default_factory=dict)  # e.g. {"GPU": 1}: per measurement, not per node
    node_labels: dict[str, str] = field(default_factory=dict)  # only nodes started with these --labels

    @classmethod
    def parse(cls, address: str | None, resources: str | None, labels: list[str] | None) -> "ClusterOptions":
        try:
            res = parse_json(resources, f"--resources {resources[:60]!r}") if resources else {}
        except RecipeError as exc:
            raise UserError(f"{exc}: e.g. '{{\"GPU\": 1}}'") from None
        if not isinstance(res, dict) or not all(isinstance(v, (int, float)) and v > 0 for v in res.values()):
            raise UserError(f"--resources {str(resources)[:60]!r}: give positive amounts, e.g. '{{\"GPU\": 1}}'")
        pairs = {}
        for text in labels or []:
            key, sep, value = text.partition("=")
            if not sep or not key:
                raise UserError(f"--node-label {text[:60]!r}: write KEY=VALUE, e.g. --node-label pool=arm")
            pairs[key] = value
        return cls(address or None, {k: float(v) for k, v in res.items()}, pairs)


def import_ray() -> Any:
    """Ray, importable even where zeus's AMD GPU binding (amdsmi) is installed without ROCm's library: that
    import fails with a KeyError that Ray does not catch, so such machines get a stand-in that says 'no AMD GPU'."""
    with contextlib.redirect_stdout(io.StringIO()):  # amdsmi prints its complaint; --json output stays clean
        try:
            import amdsmi  # noqa: F401
        except ImportError:
            pass
        except Exception:  # noqa: BLE001  (KeyError: 'libamd_smi.so')
            sys.path.insert(0, str(SHIMS))
            # the Ray processes this driver starts inherit it
            os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(SHIMS), os.environ.get("PYTHONPATH")) if p)
    try:
        import ray
    except ImportError:
        raise UserError(RAY_MISSING) from None
    return ray


_connected: str | None = None


def connect(options: ClusterOptions) -> Any:
    global _connected
    ray = import_ray()
    if ray.is_initialized():
        if _connected == options.address:  # a long-lived process (the dashboard's worker) keeps its connection
            return ray
        ray.shutdown()
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if "PYTHONPATH" in os.environ and str(SHIMS) in os.environ["PYTHONPATH"]:
        env["PYTHONPATH"] = str(SHIMS)
    runtime_env: dict[str, Any] = {"env_vars": env}
    checkout = source_checkout()
    if checkout is not None:  # nodes run this checkout's code; an installed package: each node's own install
        runtime_env.update(working_dir=str(checkout), excludes=EXCLUDES)
    try:
        with _quiet_fd2():  # Ray's C++ client retries loudly on stderr; the outcome is said in one line below
            ray.init(address=options.address or "local", runtime_env=runtime_env, logging_level="ERROR",
                     log_to_driver=False, include_dashboard=None if options.address else False,
                     **({} if options.address else {"num_cpus": os.cpu_count()}))
    except Exception as exc:  # noqa: BLE001  (ConnectionError, RuntimeError, …: one line says which cluster)
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot reach the Ray cluster at {options.address or 'this machine'}: {first[:200]}") from None
    _connected = options.address
    return ray


@contextlib.contextmanager
def _quiet_fd2() -> Any:
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as null:
        os.dup2(null.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


class Measurer:
    """One per node: loads each model once (the engine's caches live as long as this process) and measures."""

    def fingerprint(self) -> tuple[dict[str, Any], str]:
        from engine.measure.fingerprint import fingerprint

        return fingerprint(), os.uname().nodename

    def measure(self, recipe_json: str, profile: str) -> Result:
        from engine.jobs.sweep import measure_one

        return measure_one(Recipe.from_json(recipe_json), profile)


@dataclass
class _Slot:
    node: dict[str, Any]
    options: dict[str, Any]
    actor: Any = None
    device: dict[str, Any] = field(default_factory=dict)
    host: str = ""


def _slots(ray: Any, options: ClusterOptions) -> list[_Slot]:
    """One measuring slot per node (all its CPUs), or as many as the node holds of `options.resources`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    slots = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        labels, have = node.get("Labels") or {}, node.get("Resources") or {}
        if any(labels.get(k) != v for k, v in options.node_labels.items()):
            continue
        if options.resources:
            fits = min(int(have.get(k, 0) // v) for k, v in options.resources.items())
            res = dict(options.resources)
            opts = {"num_cpus": res.pop("CPU", 1), "num_gpus": res.pop("GPU", 0), "resources": res}
        else:
            fits, opts = (1, {"num_cpus": have.get("CPU", 0)}) if have.get("CPU", 0) >= 1 else (0, {})
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        slots += [_Slot(node, {**opts, "scheduling_strategy": strategy}) for _ in range(fits)]
    if not slots:
        wanted = ", ".join([*(f"{k}={v}" for k, v in options.node_labels.items()),
                            *(f"{v:g} {k}" for k, v in options.resources.items())]) or "a CPU"
        raise UserError(f"no node of the Ray cluster offers {wanted}: see `ray status`")
    return slots


def _start(ray: Any, slot: _Slot) -> None:
    # A worker that dies mid-task is restarted and the task retried once (Ray's max_restarts/max_task_retries).
    remote = ray.remote(max_restarts=1, max_task_retries=1)(Measurer)
    slot.actor = remote.options(**slot.options).remote()


def _failed(recipe: Recipe, device: dict[str, Any], profile: str, error: str) -> Result:
    return Result(model=recipe.model, recipe=recipe.to_dict(), machine=device, profile=profile, error=error,
                  measured_at=time.time())


def run(recipes: list[Recipe], store: Store, options: ClusterOptions, profile: str = "thorough",
        on_progress: Callable[[Step], None] | None = None, should_stop: Callable[[], bool] = lambda: False,
        retry_failed: bool = False, remeasure_contended: bool = False) -> SweepSummary:
    """Measure on every machine type of the cluster what the store does not hold yet for that machine."""
    start = time.perf_counter()
    ray = connect(options)
    slots = _slots(ray, options)
    for s in slots:
        _start(ray, s)
    try:
        try:
            found = ray.get([s.actor.fingerprint.remote() for s in slots])
        except Exception as exc:  # noqa: BLE001  (the engine cannot load on a node: its environment differs)
            raise UserError(f"a Ray worker could not start the engine: {str(exc).strip().splitlines()[-1][:200]} "
                            "(every node needs requirements.txt and requirements-ray.txt installed)") from None
        queues: dict[str, list[Recipe]] = {}
        for s, (device, host) in zip(slots, found):
            s.device, s.host = device, host
            if device["id"] not in queues:
                queues[device["id"]] = todo(recipes, store, profile, retry_failed, remeasure_contended,
                                            device_id=device["id"])
        sweep = _Dispatch(ray, store, profile, queues, len(recipes) * len(queues), on_progress, should_stop)
        # Ray's driver prints cluster events (a worker died, a task is retried) on stdout: they go to stderr,
        # beside the progress, so `--json` output stays one JSON document.
        with contextlib.redirect_stdout(sys.stderr):
            sweep.run(slots)
    finally:
        for s in slots:
            with contextlib.suppress(Exception):
                ray.kill(s.actor)
    sweep.summary.wall_s = time.perf_counter() - start
    return sweep.summary


class _Dispatch:
    """Each free worker takes the next configuration of its machine type; each result is stored as it arrives."""

    def __init__(self, ray: Any, store: Store, profile: str, queues: dict[str, list[Recipe]], total: int,
                 on_progress: Callable[[Step], None] | None, should_stop: Callable[[], bool]) -> None:
        self.ray, self.store, self.profile, self.queues = ray, store, profile, queues
        self.on_progress, self.should_stop = on_progress, should_stop
        self.summary = SweepSummary(total=total, skipped_existing=total - sum(map(len, queues.values())))
        self.in_flight: dict[Any, tuple[_Slot, Recipe]] = {}

    def submit(self, slot: _Slot) -> None:
        queue = self.queues[slot.device["id"]]
        if queue and not self.should_stop():
            recipe = queue.pop(0)
            self.in_flight[slot.actor.measure.remote(recipe.to_json(), self.profile)] = (slot, recipe)

    def run(self, slots: list[_Slot]) -> None:
        ray, summary = self.ray, self.summary
        for s in slots:
            self.submit(s)
        began = time.perf_counter()
        while self.in_flight:
            (ref,), _ = ray.wait(list(self.in_flight), num_returns=1)
            slot, recipe = self.in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as exc:  # died, restarted, retried, died again
                result = _failed(recipe, slot.device, self.profile,
                                 f"the measuring worker on {slot.host} died twice on this configuration "
                                 f"({type(exc).__name__}); retried once")
                _start(ray, slot)  # a fresh worker for what is left
            except ray.exceptions.RayError as exc:
                result = _failed(recipe, slot.device, self.profile, f"{type(exc).__name__}: {str(exc)[:300]}")
            row_id = self.store.put(result)
            summary.row_ids.append(row_id)
            summary.measured += 1
            summary.failed += result.error is not None
            summary.contended += result.contended
            left = sum(map(len, self.queues.values())) + len(self.in_flight)
            if self.on_progress:
                self.on_progress(Step(recipe, result, row_id, summary.skipped_existing + summary.measured,
                                      summary.total, (time.perf_counter() - began) / summary.measured * left))
            self.submit(slot)
        summary.stopped = any(self.queues.values())


class ClusterJob:
    """A cluster sweep running in its own process (see `main`), watched through the rows it writes (a Job, see
    engine.jobs.command)."""

    def __init__(self, recipes: list[Recipe], db: str, options: ClusterOptions, profile: str) -> None:
        import subprocess
        import tempfile

        self.db, self.keys = str(Path(db).resolve()), {(r.model, r.key) for r in recipes}
        self.dir = Path(tempfile.mkdtemp(prefix="cluster-sweep-"))
        job = {"recipes": [r.to_dict() for r in recipes], "db": self.db, "profile": profile,
               "address": options.address, "resources": options.resources, "labels": options.node_labels}
        (self.dir / "job.json").write_text(json.dumps(job))
        self.log = self.dir / "log.txt"
        with open(self.log, "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([sys.executable, "-m", "engine.jobs.cluster", str(self.dir / "job.json")],
                                         stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def result(self) -> dict[str, Any] | None:
        """Once the driver finished well: per machine, the configurations stored of the grid."""
        return None if self.proc.poll() != 0 else self.progress()

    def error(self) -> str | None:
        return self.progress()["error"]

    def stop(self) -> None:
        """End the driver and what it started; stored rows stay, and the same grid resumes from them."""
        import signal

        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)

    def progress(self) -> dict[str, Any]:
        """Running or not, the driver's error if it failed, and per machine: configurations stored of the grid."""
        code = self.proc.poll()
        per: dict[str, dict[str, Any]] = {}
        if Path(self.db).exists():
            with Store(self.db, write=False) as store:
                for model in {m for m, _ in self.keys}:
                    for r in store.rows(model=model)[0]:
                        if (model, r["recipe_key"]) in self.keys:
                            d = per.setdefault(r["device_id"], {"device_id": r["device_id"], "done": 0, "failed": 0,
                                                                "total": len(self.keys), "rows": []})
                            d["done"] += 1
                            d["failed"] += r["error"] is not None
                            d["rows"].append(int(r["id"]))
                for d in per.values():
                    d["name"] = store.machine_name(d.pop("rows"))
        error = None
        if code not in (None, 0):
            lines = [ln for ln in self.log.read_text(errors="replace").splitlines() if ln.startswith("error:")]
            error = lines[-1][len("error: "):] if lines else f"the cluster sweep ended with exit code {code}"
        return {"running": code is None, "error": error, "devices": list(per.values())}


def main(argv: list[str]) -> int:
    """`python -m engine.jobs.cluster JOB.json`: the dashboard's cluster sweep, in a process of its own so the
    page stays responsive and Stop can end it at any moment (every row so far is kept; running it again resumes)."""
    try:
        job = parse_json(Path(argv[0]).read_text(), f"job file {argv[0]}", limit=None)
        options = ClusterOptions(job.get("address"), job.get("resources") or {}, job.get("labels") or {})
        with Store(job["db"]) as store:
            summary = run([Recipe.from_dict(r) for r in job["recipes"]], store, options, job["profile"])
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(summary.__dict__))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
