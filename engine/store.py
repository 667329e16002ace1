"""SQLite results store: one row per (model, recipe key, device fingerprint, engine version).

WAL mode so a dashboard can read while a sweep writes; each row is written in its own transaction,
so a sweep killed at any moment leaves only whole rows and resumes without duplicates; the UNIQUE
key makes two concurrent writers of the same configuration collapse into one row.
"""
from __future__ import annotations

import json
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from engine.errors import UserError
from engine.recipe import Recipe
from engine.runner import Result

SCHEMA_VERSION = 1
PROFILE_RANK = {"quick": 0, "thorough": 1}

# Flat columns, loadable straight into pandas; the full Result JSON is kept beside them.
COLUMNS: dict[str, str] = {
    "model": "TEXT NOT NULL", "recipe_key": "TEXT NOT NULL", "device_id": "TEXT NOT NULL",
    "engine_version": "TEXT NOT NULL", "label": "TEXT", "prune_method": "TEXT", "prune_amount": "REAL",
    "prune_scope": "TEXT", "bits": "INTEGER", "scheme": "TEXT", "granularity": "TEXT", "precision": "TEXT",
    "device": "TEXT", "batch_size": "INTEGER", "accuracy": "REAL", "baseline_accuracy": "REAL",
    "latency_p50_ms": "REAL", "latency_p90_ms": "REAL", "latency_p99_ms": "REAL", "latency_iqr_ratio": "REAL",
    "latency_noisy": "INTEGER", "size_bytes": "INTEGER", "baseline_size_bytes": "INTEGER",
    "peak_memory_bytes": "INTEGER", "energy_j": "REAL", "energy_source": "TEXT", "params_total": "INTEGER",
    "params_nonzero": "INTEGER", "simulated": "INTEGER", "profile": "TEXT", "threads": "INTEGER",
    "error": "TEXT", "created_at": "REAL", "recipe_json": "TEXT NOT NULL", "result_json": "TEXT NOT NULL",
}
KEY = ("model", "recipe_key", "device_id", "engine_version")


def flatten(result: Result) -> dict[str, Any]:
    """The flat row of a Result."""
    recipe = Recipe.from_dict(result.recipe)
    lat = result.latency_ms or {}
    return {
        "model": result.model, "recipe_key": recipe.key, "device_id": result.device.get("id", "unknown"),
        "engine_version": result.engine_version, "label": recipe.label(),
        "prune_method": recipe.prune.method, "prune_amount": recipe.prune.amount, "prune_scope": recipe.prune.scope,
        "bits": recipe.quantize.bits, "scheme": recipe.quantize.scheme, "granularity": recipe.quantize.granularity,
        "precision": recipe.precision, "device": recipe.device, "batch_size": recipe.batch_size,
        "accuracy": result.accuracy, "baseline_accuracy": result.baseline_accuracy,
        "latency_p50_ms": lat.get("p50"), "latency_p90_ms": lat.get("p90"), "latency_p99_ms": lat.get("p99"),
        "latency_iqr_ratio": lat.get("iqr_ratio"), "latency_noisy": int(bool(lat.get("noisy"))) if lat else None,
        "size_bytes": result.size_bytes, "baseline_size_bytes": result.baseline_size_bytes,
        "peak_memory_bytes": result.peak_memory_bytes, "energy_j": result.energy_j,
        "energy_source": result.energy_source, "params_total": result.params_total,
        "params_nonzero": result.params_nonzero,
        "simulated": int(any("simulated" in k.get("kernel", "") for k in result.kernels)),
        "profile": result.profile, "threads": result.threads, "error": result.error, "created_at": time.time(),
        "recipe_json": recipe.to_json(), "result_json": json.dumps(result.to_dict(), default=str),
    }


class Store:
    """A results database file. Cheap to open; use one per thread."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self.conn.execute("PRAGMA synchronous = NORMAL")
            self._migrate()
        except sqlite3.DatabaseError as exc:
            raise UserError(f"{self.path} is not a usable results database: {exc}") from None

    def _migrate(self) -> None:
        cols = ", ".join(f"{k} {v}" for k, v in COLUMNS.items())
        with self._tx():
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            row = self.conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
            if row is not None and int(row[0]) != SCHEMA_VERSION:
                raise UserError(f"{self.path} has schema version {row[0]}; this engine reads {SCHEMA_VERSION}")
            self.conn.execute(f"CREATE TABLE IF NOT EXISTS results (id INTEGER PRIMARY KEY AUTOINCREMENT, {cols}, "
                              f"UNIQUE ({', '.join(KEY)}))")
            self.conn.execute("CREATE INDEX IF NOT EXISTS results_by_model ON results (model, device_id)")
            self.conn.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))

    @contextmanager
    def _tx(self) -> Iterator[None]:
        """One write transaction; IMMEDIATE takes the write lock up front so concurrent writers queue."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
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
        """Insert or replace the row of this configuration on this device; returns its id."""
        row = flatten(result)
        names = list(row)
        updates = ", ".join(f"{n}=excluded.{n}" for n in names if n not in KEY)
        with self._tx():
            self.conn.execute(
                f"INSERT INTO results ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
                f"ON CONFLICT ({', '.join(KEY)}) DO UPDATE SET {updates}", [row[n] for n in names])
            rid = self.conn.execute(
                f"SELECT id FROM results WHERE {' AND '.join(f'{k}=?' for k in KEY)}", [row[k] for k in KEY]
            ).fetchone()[0]
        return int(rid)

    # --- reads -------------------------------------------------------------------------------
    def get(self, recipe: Recipe, device_id: str, engine_version: str) -> tuple[int, Result] | None:
        """(row id, result) of this configuration on this device, if stored."""
        row = self.conn.execute(
            "SELECT id, result_json FROM results WHERE model=? AND recipe_key=? AND device_id=? AND engine_version=?",
            (recipe.model, recipe.key, device_id, engine_version)).fetchone()
        return (int(row[0]), Result.from_dict(json.loads(row[1]))) if row else None

    def get_id(self, row_id: int) -> Result:
        row = self.conn.execute("SELECT result_json FROM results WHERE id=?", (row_id,)).fetchone()
        if row is None:
            raise UserError(f"no result with id {row_id} in {self.path}")
        return Result.from_dict(json.loads(row[0]))

    def rows(self, model: str | None = None, device_id: str | None = None) -> list[dict[str, Any]]:
        """Flat rows (without the JSON blobs' bulk), oldest first."""
        cols = ["id"] + [c for c in COLUMNS if c != "result_json"]
        where, args = [], []
        if model:
            where.append("model=?")
            args.append(model)
        if device_id:
            where.append("device_id=?")
            args.append(device_id)
        sql = f"SELECT {', '.join(cols)} FROM results" + (f" WHERE {' AND '.join(where)}" if where else "")
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def done_keys(self, model: str, device_id: str, engine_version: str, profile: str,
                  retry_failed: bool = False) -> set[str]:
        """Recipe keys that need no new measurement at this profile."""
        rank = PROFILE_RANK.get(profile, 0)
        out = set()
        for key, prof, err in self.conn.execute(
                "SELECT recipe_key, profile, error FROM results WHERE model=? AND device_id=? AND engine_version=?",
                (model, device_id, engine_version)):
            if err is not None:
                if not retry_failed:
                    out.add(key)
            elif PROFILE_RANK.get(prof, 0) >= rank:
                out.add(key)
        return out

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM results").fetchone()[0])
