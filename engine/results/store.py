"""SQLite results store: one row per (model, recipe key, device fingerprint).

WAL mode so a dashboard can read while a sweep writes; each row is written in its own transaction,
so a sweep killed at any moment leaves only whole rows and resumes without duplicates; the UNIQUE
key makes two concurrent writers of the same configuration collapse into one row, and `put` keeps
the better of two measurements (current engine > older engine, ran > failed, quiet > contended,
thorough > quick), so a quick re-measure never overwrites a thorough one.
"""
from __future__ import annotations

import contextlib
import json
import math
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from engine import __version__
from engine.core.errors import UserError
from engine.core.recipe import Recipe, parse_json
from engine.core.result import Result

WAIT_S = 60.0  # how long opening, creating or upgrading a file waits for another process that holds it
SCHEMA_VERSION = 3  # 3 added runtime and prepare_s (added in place to a version-2 file)
PROFILE_RANK = {"quick": 0, "thorough": 1}

# Flat columns, loadable straight into pandas; the full Result JSON is kept beside them.
COLUMNS: dict[str, str] = {
    "model": "TEXT NOT NULL", "recipe_key": "TEXT NOT NULL", "device_id": "TEXT NOT NULL",
    "engine_version": "TEXT NOT NULL", "label": "TEXT", "prune_method": "TEXT", "prune_amount": "REAL",
    "prune_scope": "TEXT", "bits": "INTEGER", "scheme": "TEXT", "granularity": "TEXT", "precision": "TEXT",
    "device": "TEXT", "batch_size": "INTEGER", "runtime": "TEXT NOT NULL DEFAULT 'eager'", "prepare_s": "REAL",
    "accuracy": "REAL", "baseline_accuracy": "REAL",
    "metric_kind": "TEXT", "latency_p50_ms": "REAL", "latency_p90_ms": "REAL", "latency_p99_ms": "REAL",
    "latency_iqr_ratio": "REAL", "latency_noisy": "INTEGER", "latency_block_q25_ms": "REAL",
    "latency_block_q75_ms": "REAL", "latency_contended": "INTEGER", "foreign_cpu": "REAL",
    "speedup": "REAL", "speedup_spread": "REAL", "size_bytes": "INTEGER", "baseline_size_bytes": "INTEGER",
    "peak_memory_bytes": "INTEGER", "energy_j": "REAL", "energy_source": "TEXT", "params_total": "INTEGER",
    "params_nonzero": "INTEGER", "simulated": "INTEGER", "profile": "TEXT", "threads": "INTEGER",
    "threads_requested": "INTEGER", "error": "TEXT", "created_at": "REAL", "recipe_json": "TEXT NOT NULL",
    "result_json": "TEXT NOT NULL",
}
KEY = ("model", "recipe_key", "device_id")
NUMERIC = {c for c, t in COLUMNS.items() if t.startswith(("REAL", "INTEGER"))}
TEXT = {c for c, t in COLUMNS.items() if t.startswith("TEXT")} - {"recipe_json", "result_json"}


def flatten(result: Result) -> dict[str, Any]:
    """The flat row of a Result."""
    recipe = Recipe.from_dict(result.recipe)
    lat = result.latency
    return {
        "model": result.model, "recipe_key": recipe.key, "device_id": result.machine.id or "unknown",
        "engine_version": result.engine_version, "label": recipe.label(),
        "prune_method": recipe.prune.method, "prune_amount": recipe.prune.amount, "prune_scope": recipe.prune.scope,
        "bits": recipe.quantize.bits, "scheme": recipe.quantize.scheme, "granularity": recipe.quantize.granularity,
        "precision": recipe.precision, "device": recipe.device, "batch_size": recipe.batch_size,
        "runtime": recipe.runtime, "prepare_s": result.prepare_s,
        "accuracy": result.accuracy, "baseline_accuracy": result.baseline_accuracy, "metric_kind": result.metric_kind,
        "latency_p50_ms": lat and lat.p50, "latency_p90_ms": lat and lat.p90, "latency_p99_ms": lat and lat.p99,
        "latency_iqr_ratio": lat and lat.iqr_ratio, "latency_noisy": int(lat.noisy) if lat else None,
        "latency_block_q25_ms": lat and lat.block_p50_q25, "latency_block_q75_ms": lat and lat.block_p50_q75,
        "latency_contended": int(lat.contended) if lat else None, "foreign_cpu": lat and lat.foreign_cpu,
        "speedup": result.speedup, "speedup_spread": result.speedup_spread,
        "size_bytes": result.size_bytes, "baseline_size_bytes": result.baseline_size_bytes,
        "peak_memory_bytes": result.peak_memory_bytes, "energy_j": result.energy_j,
        "energy_source": result.energy_source and str(result.energy_source), "params_total": result.params_total,
        "params_nonzero": result.params_nonzero, "simulated": int(result.simulated),
        "profile": result.profile, "threads": result.threads, "threads_requested": lat and lat.threads_requested,
        "error": result.error, "created_at": time.time(),
        "recipe_json": recipe.to_json(), "result_json": json.dumps(result.to_dict(), default=str),
    }


def quality(engine_version: Any, error: Any, contended: Any, profile: Any) -> tuple:
    """Which of two measurements of one configuration to keep: the larger tuple."""
    return (engine_version == __version__, error is None, not contended, PROFILE_RANK.get(profile, -1))


def clean(row: dict[str, Any]) -> dict[str, Any] | None:
    """The row with its types checked (numbers finite or None, texts text), or None if it is damaged."""
    for c in NUMERIC & row.keys():
        v = row[c]
        if v is None:
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return None
    for c in TEXT & row.keys():
        if row[c] is not None and not isinstance(row[c], str):
            return None
    try:
        Recipe.from_json(row["recipe_json"])
    except (UserError, TypeError, KeyError):
        return None
    return row


class Store:
    """A results database file. Cheap to open; use one per thread.

    `write=False` opens it read-only (a shared or write-protected store can still be read; nothing is
    created or upgraded). A SQLite file of another application is refused untouched."""

    def __init__(self, path: str | Path, write: bool = True) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path} is a folder, not a results database file")
        if not self.path.exists() and not write:
            raise UserError(f"no results database at {self.path}")
        elif self.path.parent.exists() and not self.path.parent.is_dir():
            raise UserError(f"{self.path.parent} is a file, so {self.path.name} cannot be created in it")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot create the folder of {self.path}: {exc.strerror or exc}") from None
        with self._errors():
            if write:
                self.conn = sqlite3.connect(str(self.path), timeout=WAIT_S, isolation_level=None)
            else:
                self.conn = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=WAIT_S,
                                            isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(WAIT_S * 1000)}")
            self._check_ours()
            if write:
                self._patiently(lambda: self.conn.execute("PRAGMA journal_mode = WAL").fetchone())
                self.conn.execute("PRAGMA synchronous = NORMAL")
                self._patiently(self._migrate)
            elif self._version() != SCHEMA_VERSION:
                raise UserError(f"{self.path} was written by an older engine: open it once with a command that "
                                "writes (such as `sweep`) to upgrade it")

    def _check_ours(self) -> None:
        """Only an empty file or one with this tool's tables is ever written to.

        Checked through SQLite itself: opening and closing the file with another descriptor would drop
        every POSIX lock this process holds on it, and another process could then delete a WAL in use."""
        tables = {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if tables and "meta" not in tables:
            raise UserError(f"{self.path} is an SQLite database of another application: refusing to use it "
                            "(give a new file name)")

    def _patiently(self, step: Callable[[], Any]) -> None:
        """Run a step of creating or upgrading the file, waiting while another process holds it.

        SQLite answers "database is locked" at once, without its busy handler, when two connections switch
        a new file to WAL together; the step is safe to repeat (a read, a pragma, or one whole transaction)."""
        deadline = time.monotonic() + WAIT_S
        pause = 0.005
        while True:
            try:
                step()
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                if time.monotonic() > deadline:
                    raise UserError(f"{self.path} stayed locked by another process for {WAIT_S:.0f} s: "
                                    "stop the other program using it, then run the command again") from None
            time.sleep(pause)
            pause = min(pause * 2, 0.2)

    def _version(self) -> int | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is None:
            return None
        text = str(row[0])
        if not (text.isascii() and text.isdigit()):
            raise UserError(f"{self.path} has schema version {text[:20]!r}; this engine reads {SCHEMA_VERSION}")
        return int(text)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        """A damaged, foreign or unwritable file is the user's to fix: one clear UserError."""
        try:
            yield
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable results database: {exc}") from None

    def _migrate(self) -> None:
        cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
        create = (f"CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, "
                  f"UNIQUE ({', '.join(KEY)}))")
        with self._tx():
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            version = self._version()
            if version not in (None, 1, 2, SCHEMA_VERSION):
                raise UserError(f"{self.path} has schema version {version}; this engine reads "
                                f"{SCHEMA_VERSION} (and upgrades 1 and 2)")
            if version == 1:
                self._upgrade_v1(create)
            self.conn.execute(create)
            have = {r[1] for r in self.conn.execute("PRAGMA table_info(results)")}
            for name in COLUMNS.keys() - have:  # version 2: columns added since; defaults describe older rows
                self.conn.execute(f"ALTER TABLE results ADD COLUMN {name} {COLUMNS[name]}")
            self.conn.execute("CREATE INDEX IF NOT EXISTS results_by_model ON results (model, device_id)")
            self.conn.execute("INSERT OR REPLACE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    def _upgrade_v1(self, create: str) -> None:
        """v1 keyed rows by engine version too: keep the newest row per configuration and device."""
        old = [r[1] for r in self.conn.execute("PRAGMA table_info(results)")]
        self.conn.execute("ALTER TABLE results RENAME TO results_v1")
        self.conn.execute(create)
        shared = [c for c in old if c in COLUMNS or c == "id"]
        self.conn.execute(
            f"INSERT INTO results ({', '.join(shared)}) SELECT {', '.join(shared)} FROM results_v1 "
            f"WHERE id IN (SELECT MAX(id) FROM results_v1 GROUP BY {', '.join(KEY)})")
        self.conn.execute("DROP TABLE results_v1")

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes the write lock up front so concurrent writers queue."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            if self.conn.in_transaction:  # SQLite may have rolled back already; keep the original error
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- writes ------------------------------------------------------------------------------
    def put(self, result: Result) -> int:
        """Store this configuration's measurement unless the stored one is better; returns the row id."""
        row = flatten(result)
        names = list(row)
        where = " AND ".join(f"{k}=?" for k in KEY)
        updates = ", ".join(f"{n}=excluded.{n}" for n in names if n not in KEY)
        with self._errors(), self._tx():
            old = self.conn.execute(
                f"SELECT id, model, recipe_key, engine_version, error, latency_contended, profile, result_json "
                f"FROM results WHERE {where}",
                [row[k] for k in KEY]).fetchone()
            if old is not None and _readable(old) and \
                    quality(old["engine_version"], old["error"], old["latency_contended"], old["profile"]) > \
                    quality(row["engine_version"], row["error"], row["latency_contended"], row["profile"]):
                return int(old["id"])
            self.conn.execute(
                f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}", [row[n] for n in names])
            return int(self.conn.execute(f"SELECT id FROM results WHERE {where}", [row[k] for k in KEY]).fetchone()[0])

    # --- reads -------------------------------------------------------------------------------
    def get(self, recipe: Recipe, device_id: str) -> tuple[int, Result] | None:
        """(row id, result) of this configuration on this device, if stored and readable."""
        with self._errors():
            row = self.conn.execute(
                "SELECT id, model, recipe_key, result_json FROM results WHERE model=? AND recipe_key=? AND device_id=?",
                (recipe.model, recipe.key, device_id)).fetchone()
        result = None if row is None else _result(row)
        return None if result is None else (int(row["id"]), result)

    def get_id(self, row_id: int) -> Result:
        if isinstance(row_id, bool) or not isinstance(row_id, int) or not 0 < row_id < 2 ** 63:
            raise UserError(f"row id {str(row_id)[:30]} is not allowed: a positive integer")
        with self._errors():
            row = self.conn.execute("SELECT model, recipe_key, result_json FROM results WHERE id=?",
                                    (row_id,)).fetchone()
        if row is None:
            raise UserError(f"no result with id {row_id} in {self.path}")
        result = _result(row)
        if result is None:
            raise UserError(f"row {row_id} of {self.path} is damaged (its stored result cannot be read)")
        return result

    def machine_name(self, row_ids: list[int]) -> str:
        """The name of the machine that measured these rows, read from the first of them that is readable."""
        for row_id in row_ids:
            with contextlib.suppress(UserError):
                return self.get_id(row_id).machine.name
        return "unknown machine (its rows are damaged)"

    def rows(self, model: str | None = None, device_id: str | None = None) -> tuple[list[dict[str, Any]], int]:
        """(flat rows without the JSON bulk, oldest first; how many damaged rows were skipped)."""
        cols = ["id"] + [c for c in COLUMNS if c != "result_json"]
        where, args = [], []
        if model:
            where.append("model=?")
            args.append(model)
        if device_id:
            where.append("device_id=?")
            args.append(device_id)
        sql = f"SELECT {', '.join(cols)} FROM results" + (f" WHERE {' AND '.join(where)}" if where else "")
        with self._errors():
            raw = [dict(r) for r in self.conn.execute(sql + " ORDER BY id", args)]
        rows = [r for r in (clean(r) for r in raw) if r is not None]
        return rows, len(raw) - len(rows)

    def done_keys(self, model: str, device_id: str, profile: str, retry_failed: bool = False,
                  remeasure_contended: bool = False) -> set[str]:
        """Recipe keys that need no new measurement at this profile."""
        rank = PROFILE_RANK.get(profile, 0)
        out = set()
        with self._errors():
            found = self.conn.execute(
                "SELECT recipe_key, profile, error, engine_version, latency_contended FROM results "
                "WHERE model=? AND device_id=?", (model, device_id)).fetchall()
        for key, prof, err, version, contended in found:
            if version != __version__:
                continue
            if err is not None:
                if not retry_failed:
                    out.add(key)
            elif remeasure_contended and contended:
                continue
            elif PROFILE_RANK.get(prof, 0) >= rank:
                out.add(key)
        return out

    def models(self) -> list[str]:
        with self._errors():
            return [r[0] for r in self.conn.execute("SELECT DISTINCT model FROM results ORDER BY model")]

    def count(self) -> int:
        with self._errors():
            return int(self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])


def _result(row: sqlite3.Row) -> Result | None:
    """The row's stored Result, or None if it is damaged or does not belong to the row's configuration."""
    try:
        result = Result.from_dict(parse_json(row["result_json"], "a stored row", limit=None))
        if result.model != row["model"] or Recipe.from_dict(result.recipe).key != row["recipe_key"]:
            return None
        return result
    except (TypeError, ValueError, RecursionError, OverflowError):
        return None


def _readable(row: sqlite3.Row) -> bool:
    return _result(row) is not None
