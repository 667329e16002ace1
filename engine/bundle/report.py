"""The bundle's human-readable parts: a self-contained HTML report and a README."""
from __future__ import annotations

import html
import json
import time

from engine import __version__
from engine.core.axes import RUNTIMES
from engine.core.measurement import Latency, pct
from engine.core.recipe import Recipe
from engine.core.result import Result
from engine.core.units import fmt_bytes, fmt_energy, fmt_ms, fmt_speedup
from engine.runtimes.base import Runtime


def measured_in(runtime: Runtime) -> str:
    """The README's line on the runtime; absent for eager, so bundles written before runtimes existed still verify."""
    if runtime.deploy_note is None:
        return ""
    return (f"\nMeasured and verified in {runtime.name}: the model to deploy is `{runtime.primary}`"
            f"{runtime.deploy_note}.")


def own_files(runtime: Runtime) -> str:
    """The README's line on the runtime's own files (OpenVINO's IR); empty where it has none, so bundles of the
    other runtimes read as before."""
    if not runtime.files:
        return ""
    return (f"- {' + '.join(f'`{f}`' for f in runtime.files)}: the model measured and verified in {runtime.name}; "
            f"how it was built and runs: `model_card.json`, key `{runtime.name}`.\n")


def report_html(recipe: Recipe, result: Result, card: dict, rows: list[dict]) -> str:
    """The point on its frontier, every metric with how it was obtained, the kernels, the warnings."""
    from engine.results.figures import pareto_figure
    from engine.results.pareto import frontier, parse_objectives
    from engine.results.store import flatten

    if not any(r.get("recipe_key") == recipe.key for r in rows):
        rows = rows + [{"id": 0, **flatten(result)}]
    marked = frontier(rows, parse_objectives("accuracy:max,latency:min"), include_untrusted=True)["rows"]
    fig = pareto_figure(marked, "latency_p50_ms", "accuracy", current_key=recipe.key, metric_kind=result.metric_kind)
    lat = result.latency or Latency()
    name = result.metric_name
    ver, store = card["verification"], card["storage"]
    runtime = RUNTIMES.get(recipe.runtime)
    own = [(f"{name} ({runtime.name})", f"{ver[runtime.accuracy_key]:.4f}",
            f"exported {runtime.primary} re-run in {runtime.name} {card[runtime.name].get(runtime.name, '')}".strip())
           ] if runtime.files else []
    metrics = own + [
        (f"{name} ({RUNTIMES.get(recipe.runtime).label})", f"{ver['torch_accuracy']:.4f}",
         result.metric),
        (f"{name} (ONNX Runtime)", f"{ver['onnx_accuracy']:.4f}",
         f"exported model.onnx run in ONNX Runtime {ver['onnxruntime']}"),
        (f"baseline {name}", f"{result.baseline_accuracy:.4f}", "uncompressed fp32 model"),
        ("latency p50", fmt_ms(lat.p50), f"{lat.percentiles_text()}; {lat.calls_text()}; {lat.method}"
         + (f"; measured while the machine was busy ({lat.why_contended})" if lat.contended else "")),
        ("speed-up", fmt_speedup(result.speedup),
         f"paired with the uncompressed model in alternating blocks; spread (IQR/median) {pct(result.speedup_spread)}"),
        ("stored size", fmt_bytes(result.size_bytes),
         f"compressed.bin; uncompressed fp32 {fmt_bytes(store['fp32_bytes'])} ({store['compression_ratio']:.1f}x smaller)"),
        ("peak memory", fmt_bytes(result.peak_memory_bytes), result.memory_source.to_text() if result.memory_source
         else "n/a"),
        ("energy", f"{fmt_energy(result.energy_j)} / inference", result.energy_source.to_text() if result.energy_source
         else "n/a"),
    ]
    esc = html.escape
    trs = "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in metrics)
    kern = "".join(f"<li>{esc(k.to_text())}</li>" for k in result.kernels)
    warns = "".join(f"<li>{esc(w)}</li>" for w in result.warnings + ver["warnings"])
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(recipe.model)} · {esc(recipe.label())}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#0f172a}}
table{{border-collapse:collapse;width:100%}}th,td{{text-align:left;padding:6px 10px;border-bottom:1px solid #e2e8f0}}
th{{width:180px}}td:last-child{{color:#475569;font-size:90%}}.warn li{{color:#9a3412}}code{{background:#f1f5f9;padding:1px 4px}}</style>
</head><body><h1>{esc(recipe.model)}: {esc(recipe.label())}</h1>
<p>Recipe <code>{recipe.key}</code> · engine {__version__} · measured on {esc(result.machine.to_text())} ·
{time.strftime('%Y-%m-%d %H:%M')}</p>
<h2>Where it sits</h2>{fig.to_html(include_plotlyjs=True, full_html=False)}
<h2>Metrics and how they were obtained</h2><table>{trs}</table>
<h2>How it ran</h2><ul>{kern}</ul>
<h2>Warnings</h2><ul class="warn">{warns or '<li>none</li>'}</ul>
<h2>Recipe</h2><pre>{esc(json.dumps(recipe.to_dict(), indent=2, sort_keys=True))}</pre>
</body></html>"""


README = """# {model}: {label}

Exported by the compression dashboard (engine {version}). Recipe key `{key}`.{measured}

- `recipe.json`: the recipe, the metrics measured for it, and the SHA-256 of every other file.
  Verify and re-create: `python -m engine apply --recipe recipe.json` (exit 1 if any file was changed).
- `model.onnx`: run with ONNX Runtime. Inputs: {inputs}. Preprocessing: {preprocessing}.
{own_files}- `model.safetensors`: PyTorch weights; `engine.bundle.bundle.load_torch(<this folder>)` rebuilds the model (no pickle).
- `compressed.bin`: the compressed storage ({size:,} bytes vs {fp32:,} bytes uncompressed fp32, {ratio:.1f}x);
  `engine.compress.codec.decode` reads it.
- `model_card.json`: inputs, outputs, verification ({name} in ONNX Runtime {onnx_acc:.4f} vs PyTorch {torch_acc:.4f}).
- `report.html`: the report with the frontier plot (self-contained, open in any browser).
"""
