"""What the api verbs return: value types that render themselves, `to_dict()` for JSON and `to_text()` for people.

The command line prints them and the dashboard reads their fields, so a number is formatted in one place. Each
reads like its JSON object too (`front["frontier"]`, `.get`), so scripts written against the dict form keep
working. Types filled from another layer's dict (a bundle's record, a search's study) keep the keys they do not
name in `extra`, so a key added there reaches `--json` without a change here.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field, fields
from typing import Any

from engine.core.recipe import Recipe
from engine.core.units import fmt_bytes


class Value:
    """The rendering contract every api value type follows (dataclasses only)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):  # type: ignore[arg-type]
            v = getattr(self, f.name)
            if f.name == "extra":
                out.update(v)
            else:
                out[f.name] = _plain(v)
        return out

    def to_text(self) -> str:
        raise NotImplementedError

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Any:
        """From a dict with (at least) the type's required keys; with an `extra` field, the others go there."""
        names = {f.name for f in fields(cls)} - {"extra"}  # type: ignore[arg-type]
        given = {k: v for k, v in data.items() if k in names}
        if "extra" in {f.name for f in fields(cls)}:  # type: ignore[arg-type]
            given["extra"] = {k: v for k, v in data.items() if k not in names}
        return cls(**given)

    def __getitem__(self, key: str) -> Any:
        return self.to_dict()[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()


def _plain(v: Any) -> Any:
    if isinstance(v, Value):
        return v.to_dict()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def table(rows: list[dict[str, Any]], cols: list[str]) -> str:
    """Columns padded to their widest cell; None is '-', floats 4 significant digits."""
    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    cells = [[cell(r.get(c)) for c in cols] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(cols)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


@dataclass
class ModelList(Value):
    """Every registered model with its facts; one that cannot load here says why (`available` false)."""

    models: list[dict[str, Any]]

    def to_text(self) -> str:
        lines = []
        for r in self.models:
            if not r["available"]:
                lines.append(f"{r['name']:<12} unavailable here: {r['error']}")
                continue
            lines += [f"{r['name']:<12} {r['parameters']:>11,} params  {r['task']}",
                      f"{'':<12} metric: {r['metric']}", f"{'':<12} source: {r['source']}"]
        return "\n".join(lines)


@dataclass
class Frontier(Value):
    """The non-dominated configurations of one model on one machine at one batch size, best accuracy first."""

    model: str
    machine: dict[str, Any]
    objectives: list[dict[str, Any]]
    min_accuracy: float | None
    hypervolume: float
    hypervolume_reference: str
    frontier: list[dict[str, Any]]
    considered: int
    untrusted: int
    include_untrusted: bool
    batch_size: int | None
    batch_sizes: list[int]
    damaged_rows: int
    failed: list[dict[str, Any]]

    def to_text(self) -> str:
        names = [o["name"] for o in self.objectives]
        lines = [f"{self.model}: {len(self.frontier)} of {self.considered} configurations are on the "
                 f"{' / '.join(names)} frontier at batch size {self.batch_size} (hypervolume {self.hypervolume:.4g})"]
        if len(self.batch_sizes) > 1:
            lines.append(f"also stored at batch sizes {', '.join(map(str, self.batch_sizes))}: choose one with "
                         "--batch-size")
        if self.min_accuracy is not None:
            lines.append(f"constraint: accuracy >= {self.min_accuracy:.4f}")
        if self.untrusted and not self.include_untrusted:
            lines.append(f"{self.untrusted} row(s) measured on a busy machine (or by an older engine) left out: "
                         "`sweep --remeasure-contended` measures them again, `--include-contended` lets them compete")
        if self.damaged_rows:
            lines.append(f"{self.damaged_rows} damaged row(s) skipped")
        lines.append(table(self.frontier, ["id", "label", "accuracy", "latency_p50_ms", "speedup", "size_bytes",
                                           "peak_memory_bytes", "energy_j", "energy_source"]))
        lines += [f"failed #{f['id']} {f['label']}: {f['error']}" for f in self.failed]
        return "\n".join(lines)


@dataclass
class Frontiers(Value):
    """One frontier per machine the store holds rows of (latencies of different machines never compete)."""

    model: str
    devices: list[Frontier]

    def to_text(self) -> str:
        return "\n\n".join(f"== {one.machine['name']} (machine {one.machine['device_id'][:12]})\n{one.to_text()}"
                           for one in self.devices)


@dataclass
class ResultsTable(Value):
    """Stored rows, flat, grouped by machine; `format` is how `to_text` writes them (table, csv or json)."""

    rows: list[dict[str, Any]]
    damaged_rows: int
    format: str = "table"

    def to_text(self) -> str:
        from engine.core.result import strict

        if self.format == "json":
            return json.dumps(strict(self.rows), allow_nan=False)
        if self.format == "csv":
            if not self.rows:
                return ""
            buf = io.StringIO()
            w = csv.DictWriter(buf, fieldnames=list(self.rows[0]), lineterminator="\n")
            w.writeheader()
            w.writerows(self.rows)
            return buf.getvalue().rstrip("\n")
        shown = [{**r, "machine": r["device_id"][:12]} for r in self.rows]
        return table(shown, ["id", "machine", "model", "label", "accuracy", "latency_p50_ms", "speedup",
                             "latency_contended", "size_bytes", "energy_j", "energy_source", "error"])


@dataclass
class ResultsFile(Value):
    """A results file written to share (its rows each with their machine)."""

    exported: str
    bytes: int

    def to_text(self) -> str:
        return f"wrote {self.exported} ({fmt_bytes(self.bytes)})"


@dataclass(kw_only=True)
class ImportSummary(Value):
    """What merging a results file did: rows new, replaced, already as good, skipped (and why)."""

    rows_in_file: int
    new_rows: int
    updated_rows: int
    already_as_good: int
    skipped: int
    skipped_why: dict[str, int]
    machines: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"{self.rows_in_file} rows: {self.new_rows} new, {self.updated_rows} replaced a worse measurement, "
                 f"{self.already_as_good} already stored as good or better, {self.skipped} skipped"]
        lines += [f"  skipped {n}: {why}" for why, n in self.skipped_why.items()]
        lines.append(f"  machines: {', '.join(self.machines) or 'none'}")
        return "\n".join(lines)


@dataclass
class ResultsImport(Value):
    """A results file merged into a store."""

    imported: ImportSummary
    file: str

    def to_text(self) -> str:
        return f"{self.file}: {self.imported.to_text()}"


@dataclass(kw_only=True)
class Sensitivity(Value):
    """Each layer's accuracy drop when compressed alone, with its share of size and of forward time."""

    model: str
    technique: str
    method: str
    levels: list
    baseline_accuracy: float
    layers: list[dict[str, Any]]
    ranking: list[str]
    latency_share_source: str
    wall_s: float = 0.0
    from_store: bool | None = None  # None: read back without asking (a stored scan shown as it is)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        what = f"{self.technique} ({self.method})"
        lines = [f"{self.model}: accuracy drop when one layer alone is compressed, {what}; baseline "
                 f"{self.baseline_accuracy:.4f}" + (" (stored)" if self.from_store else f" ({self.wall_s:.1f} s)")]
        rows = [{"layer": r["layer"], "size": f"{r['size_share']:.1%}", "time": f"{r['latency_share']:.1%}",
                 **{f"@{lv}": r["drops"][str(lv)] for lv in self.levels}}
                for r in sorted(self.layers, key=lambda r: self.ranking.index(r["layer"]))]
        lines.append(table(rows, ["layer", "size", "time"] + [f"@{lv}" for lv in self.levels]))
        lines.append(f"most sensitive first; size = share of parameters, time = {self.latency_share_source}")
        return "\n".join(lines)


@dataclass(kw_only=True)
class SearchSummary(Value):
    """A search's study so far: counts and the feasible non-dominated recipes found, best first."""

    study: str
    objectives: list[str]
    threshold: float
    baseline_accuracy: float
    trials_done: int
    feasible: int
    failed: int
    found: list[dict[str, Any]]
    latency_means: str
    extra: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"{self.trials_done} trials, {self.feasible} at accuracy >= {self.threshold:.4f} "
                 f"(baseline {self.baseline_accuracy:.4f}), {self.failed} failed; study {self.study}"]
        if not self.found:
            lines.append("no recipe met the threshold yet: run longer, or lower --min-accuracy")
            return "\n".join(lines)
        lines.append(f"found (non-dominated on {', '.join(self.objectives)}; best first; {self.latency_means}):")
        lines.append(table(self.found, ["row_id", "label", "accuracy"] + self.objectives))
        lines.append("export one: python -m engine export --db DB --id ROW_ID --out bundle/")
        return "\n".join(lines)


@dataclass(kw_only=True)
class BundleSummary(Value):
    """A bundle written and verified: its files, accuracy in PyTorch and ONNX Runtime, and its stored size."""

    out: str
    files: list[str]
    metric_kind: str
    accuracy: float
    onnx_accuracy: float | None
    gap: float | None
    size_bytes: int
    fp32_bytes: int
    compression_ratio: float
    warnings: list[str]
    extra: dict[str, Any] = field(default_factory=dict)

    def to_text(self) -> str:
        lines = [f"wrote {self.out}: {', '.join(self.files)}",
                 f"  {self.metric_kind} {self.accuracy:.4f} in PyTorch, {self.onnx_accuracy:.4f} in ONNX Runtime "
                 f"(gap {self.gap:.4f})",
                 f"  compressed.bin {fmt_bytes(self.size_bytes)} vs {fmt_bytes(self.fp32_bytes)} uncompressed fp32: "
                 f"{self.compression_ratio:.1f}x smaller"]
        lines += [f"  warning  {w}" for w in self.warnings]
        return "\n".join(lines)


@dataclass(kw_only=True)
class BundleCheck(Value):
    """A bundle verified file by file (or a bare recipe re-created); `error` names the first file that failed."""

    recipe: dict[str, Any]
    recipe_key: str
    checks: list[dict[str, Any]]
    bundle: str | None
    accuracy: float | None
    error: str | None
    new_bundle: BundleSummary | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.new_bundle is None:  # the key appears only when a new bundle was written, as before
            del out["new_bundle"]
        return out

    def to_text(self) -> str:
        rec = Recipe.from_dict(self.recipe)
        if self.bundle is None:
            lines = [f"re-created {rec.model} ({rec.label()}, recipe {self.recipe_key}): accuracy "
                     f"{self.accuracy:.4f} (a bare recipe: nothing recorded to compare with)"]
        else:
            lines = [f"  {'ok  ' if c['ok'] else 'FAIL'} {c['file']}: {c['check']}"
                     + (f" ({c['detail']})" if not c["ok"] else "") for c in self.checks]
            lines.append(f"{self.bundle}: " + ("DOES NOT VERIFY: " + self.error if self.error else "verified"))
            lines += [f"  note: {f} is not part of the bundle and was not checked"
                      for f in self.extra.get("unverified_files", [])]
        if self.new_bundle is not None:
            lines.append(f"  new bundle: {self.new_bundle.out}")
        return "\n".join(lines)
