"""Export a chosen configuration as a bundle, verified where it will run; re-apply a bundle's recipe.

Bundle (written to a temporary folder, then renamed, so a failure leaves nothing half-written):
  recipe.json        canonical recipe + model id, engine version, device fingerprint, measured metrics
  model.onnx         the compressed model for ONNX Runtime (int8 integer kernels for 8-bit recipes)
  model.safetensors  PyTorch weights (no pickle); rebuild = `apply` the recipe, then load these
  compressed.bin     the real storage format (packed codes, sparse tensors, DEFLATE); see engine.storage
  model_card.json    inputs, dtypes, preprocessing, outputs, verification results
  report.html        self-contained report: the point on its frontier, metrics and their provenance
  README.md          how to use each file
"""
from __future__ import annotations

import hashlib
import html
import json
import logging
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine import __version__, storage
from engine.errors import RecipeError, UserError
from engine.measure.fingerprint import fingerprint
from engine.recipe import Recipe
from engine.registry import ModelSpec, get_spec
from engine.runner import Result, base_model, measure, reference
from engine.transforms import Applied, apply
from engine.transforms.precision import DTYPES
from engine.transforms.quantize import select_kernels

ACCURACY_TOLERANCE = 0.02  # |ONNX Runtime accuracy - PyTorch accuracy| above this is a visible warning


class _Exportable(nn.Module):
    """The model plus its output transform (e.g. mean pooling), with named positional inputs for ONNX."""

    def __init__(self, model: nn.Module, spec: ModelSpec, names: list[str] | None) -> None:
        super().__init__()
        self.model, self.spec, self.names = model, spec, names

    def forward(self, *xs: torch.Tensor) -> torch.Tensor:
        inputs = dict(zip(self.names, xs)) if self.names else xs[0]
        return self.spec.forward(self.model, inputs).float()


def read_recipe(path: str | Path) -> tuple[Recipe, dict[str, Any]]:
    """A recipe from a bundle's recipe.json (or a bare recipe JSON file) and the bundle record, if any."""
    p = Path(path)
    if p.is_dir():
        p = p / "recipe.json"
    if not p.is_file():
        raise UserError(f"no recipe file at {p}")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecipeError(f"{p} is not a valid recipe file: {exc}") from None
    if not isinstance(data, dict):
        raise RecipeError(f"{p} is not a valid recipe file: expected a JSON object")
    record = data if "recipe" in data else {}
    recipe = Recipe.from_dict(data["recipe"] if "recipe" in data else data)
    get_spec(recipe.model)  # unknown model: clear error
    return recipe, record


def _stored_form(recipe: Recipe) -> Applied:
    """The compressed model as plain float modules on the CPU (weights on the grid): what ONNX and
    safetensors hold. Kernel selection (int8, sparse) happens when a model is loaded to run."""
    base, spec = base_model(recipe.model)
    return apply(base, recipe.with_(device="cpu"), spec, kernels=False)


def weights_digest(applied: Applied, recipe: Recipe) -> tuple[bytes, str]:
    blob = storage.encode(applied.storage_state, applied.quant, DTYPES[recipe.precision])
    return blob, hashlib.sha256(blob).hexdigest()


def _input_arrays(inputs: Any) -> tuple[list[str], list[torch.Tensor]]:
    if isinstance(inputs, dict):
        return list(inputs), list(inputs.values())
    return ["input"], [inputs]


@contextmanager
def _quiet() -> Iterator[None]:
    """Mute the exporters' advice logs (torch.onnx registrations, ONNX Runtime's root-logger hints)."""
    root, tonnx = logging.getLogger(), logging.getLogger("torch.onnx")
    levels = root.level, tonnx.level
    root.setLevel(logging.ERROR)
    tonnx.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(levels[0])
        tonnx.setLevel(levels[1])


def _export_onnx(applied: Applied, recipe: Recipe, spec: ModelSpec, path: Path) -> dict[str, Any]:
    """Write model.onnx; return what it computes in and any note about it."""
    import onnx

    model, notes = applied.model, []
    onnx_dtype = recipe.precision
    if recipe.precision == "bf16":
        # bf16 -> fp32 is exact: the graph keeps the bf16 weight values; ONNX Runtime's CPU provider has no bf16 kernels.
        model, onnx_dtype = model.float(), "fp32"
        notes.append("bf16 weights stored as exact fp32 values: ONNX Runtime's CPU provider has no bf16 kernels")
    example = spec.example_inputs(2)
    names, tensors = _input_arrays(example)
    dtype = DTYPES[onnx_dtype]
    tensors = [t.to(dtype) if t.is_floating_point() else t for t in tensors]
    wrapper = _Exportable(model, spec, names if isinstance(example, dict) else None).eval()
    dynamic = {n: {0: torch.export.Dim("batch", min=1, max=4096)} for n in names}
    if isinstance(example, dict):
        for n in names:
            dynamic[n][1] = torch.export.Dim("sequence", min=2, max=512)
    with _quiet(), torch.no_grad():
        program = torch.onnx.export(wrapper, tuple(tensors), dynamo=True, input_names=names,
                                    output_names=["output"], dynamic_shapes=(tuple(dynamic[n] for n in names),),
                                    verbose=False)
    program.save(str(path), external_data=False)
    kernel = f"{onnx_dtype} ONNX Runtime kernels"
    if recipe.quantize.bits == 8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        tmp = path.with_suffix(".float.onnx")
        path.rename(tmp)
        with _quiet():
            quantize_dynamic(str(tmp), str(path), per_channel=True, weight_type=QuantType.QInt8)
        tmp.unlink()
        kernel = "int8 integer kernels (ONNX Runtime dynamic quantization: MatMulInteger/ConvInteger)"
    elif recipe.quantize.bits is not None:
        notes.append(f"{recipe.quantize.bits}-bit weights stored as their dequantized grid values "
                     "(ONNX Runtime has no sub-8-bit CPU kernels)")
    opset = next((o.version for o in onnx.load(str(path), load_external_data=False).opset_import if o.domain in ("", "ai.onnx")), None)
    return {"file": path.name, "opset": opset, "computes_in": kernel, "notes": notes,
            "inputs": [{"name": n, "dtype": str(t.dtype).removeprefix("torch."),
                        "shape": ["batch"] + (["sequence"] if isinstance(example, dict) else list(t.shape[1:]))}
                       for n, t in zip(names, tensors)],
            "output": {"name": "output", "dtype": "float32"}}


def onnx_session(path: Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_feed(session, inputs: Any) -> dict[str, np.ndarray]:
    names, tensors = _input_arrays(inputs)
    types = {i.name: i.type for i in session.get_inputs()}
    feed = {}
    for n, t in zip(names, tensors):
        a = t.numpy()
        if a.dtype.kind == "f":
            a = a.astype(np.float16 if types[n] == "tensor(float16)" else np.float32)
        feed[n] = a
    return feed


def _verify_onnx(path: Path, spec: ModelSpec, model_name: str) -> float:
    """Accuracy of the ONNX model in ONNX Runtime on the model's evaluation data."""
    session = onnx_session(path)
    ref, _, _ = reference(model_name)
    outs = [torch.from_numpy(session.run(None, onnx_feed(session, x))[0]) for x in spec.eval_inputs()]
    return spec.score(torch.cat(outs).float(), ref)["accuracy"]


def _preprocessing(spec: ModelSpec) -> str:
    if spec.name.startswith("digits"):
        return ("8x8 grey-scale digit images as float in [0, 1] (scikit-learn digits pixel value / 16), "
                "shape (batch, 1, 8, 8); output: 10 class logits")
    return ("text tokenised with the model's own tokenizer (sample_models/minilm.py: padding, truncation to 64 "
            "tokens); inputs are the tokenizer's input_ids / token_type_ids / attention_mask; output: "
            "mean-pooled, L2-normalised sentence embeddings (batch, 384)")


def _report_html(recipe: Recipe, result: Result, card: dict, rows: list[dict] | None) -> str:
    from engine.figures import pareto_figure
    from engine.pareto import frontier, parse_objectives

    rows = rows or []
    if not any(r.get("recipe_key") == recipe.key for r in rows):
        from engine.store import flatten

        rows = rows + [{"id": 0, **flatten(result)}]
    marked = frontier(rows, parse_objectives("accuracy:max,latency:min"))["rows"]
    fig = pareto_figure(marked, "latency_p50_ms", "accuracy", current_key=recipe.key)
    lat = result.latency_ms or {}
    metrics = [
        ("accuracy (PyTorch)", f"{result.accuracy:.4f}", result.metric),
        ("accuracy (ONNX Runtime)", f"{card['verification']['onnx_accuracy']:.4f}",
         f"exported model.onnx run in ONNX Runtime {card['verification']['onnxruntime']}"),
        ("baseline accuracy", f"{result.baseline_accuracy:.4f}", "uncompressed fp32 model"),
        ("latency p50", f"{lat.get('p50', 0):.3f} ms",
         f"p90 {lat.get('p90', 0):.3f} / p99 {lat.get('p99', 0):.3f} ms; {lat.get('calls')} calls, batch "
         f"{lat.get('batch_size')}, {lat.get('threads')} threads; {lat.get('method')}"),
        ("stored size", f"{result.size_bytes:,} B", f"compressed.bin; fp32 dense {card['storage']['fp32_bytes']:,} B "
         f"({card['storage']['compression_ratio']:.1f}x)"),
        ("peak memory", f"{result.peak_memory_bytes:,} B", result.memory_source or ""),
        ("energy", f"{(result.energy_j or 0) * 1e3:.3f} mJ / inference", f"{result.energy_source}: {result.energy_note}"),
    ]
    esc = html.escape
    trs = "".join(f"<tr><th>{esc(a)}</th><td>{esc(b)}</td><td>{esc(c)}</td></tr>" for a, b, c in metrics)
    kern = "".join(f"<li><b>{esc(k['step'])}</b>: {esc(k['kernel'])}</li>" for k in result.kernels)
    warns = "".join(f"<li>{esc(w)}</li>" for w in result.warnings + card["verification"]["warnings"])
    dev = result.device
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{esc(recipe.model)} · {esc(recipe.label())}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1000px;margin:2em auto;color:#0f172a}}
table{{border-collapse:collapse;width:100%}}th,td{{text-align:left;padding:6px 10px;border-bottom:1px solid #e2e8f0}}
th{{width:180px}}td:last-child{{color:#475569;font-size:90%}}.warn li{{color:#9a3412}}code{{background:#f1f5f9;padding:1px 4px}}</style>
</head><body><h1>{esc(recipe.model)}: {esc(recipe.label())}</h1>
<p>Recipe <code>{recipe.key}</code> · engine {__version__} · measured on {esc(str(dev.get('cpu')))}
({dev.get('logical_cores')} cores, GPU {esc(str(dev.get('gpu') or 'none'))}, torch {esc(str(dev.get('torch')))}) ·
{time.strftime('%Y-%m-%d %H:%M')}</p>
<h2>Where it sits</h2>{fig.to_html(include_plotlyjs=True, full_html=False)}
<h2>Metrics and how they were obtained</h2><table>{trs}</table>
<h2>How it ran</h2><ul>{kern}</ul>
<h2>Warnings</h2><ul class="warn">{warns or '<li>none</li>'}</ul>
<h2>Recipe</h2><pre>{esc(json.dumps(recipe.to_dict(), indent=2, sort_keys=True))}</pre>
</body></html>"""


BUNDLE_README = """# {model}: {label}

Exported by the compression dashboard (engine {version}). Recipe key `{key}`.

- `recipe.json`: the recipe and the metrics measured for it. Re-create and check: `python -m engine apply --recipe recipe.json`
- `model.onnx`: run with ONNX Runtime. Inputs: {inputs}. Preprocessing: {preprocessing}.
- `model.safetensors`: PyTorch weights; `engine.export.load_torch(<this folder>)` rebuilds the model (no pickle).
- `compressed.bin`: the compressed storage ({size:,} bytes vs {fp32:,} bytes fp32, {ratio:.1f}x); `engine.storage.decode` reads it.
- `model_card.json`: inputs, outputs, verification (ONNX Runtime accuracy {onnx_acc:.4f} vs PyTorch {torch_acc:.4f}).
- `report.html`: the report with the frontier plot (self-contained, open in any browser).
"""


def export(recipe: Recipe, out: str | Path, *, result: Result | None = None, rows: list[dict] | None = None,
           force: bool = False, profile: str = "thorough") -> dict[str, Any]:
    """Write the verified bundle for `recipe` to `out`. `result`: metrics already measured (else measured now)."""
    out = Path(out)
    if out.exists() and not force:
        raise UserError(f"{out} already exists: choose another --out or pass --force to replace it")
    if recipe.device != "cpu":
        recipe = recipe.with_(device="cpu")  # the bundle is verified on CPU ONNX Runtime
    spec = get_spec(recipe.model)
    if result is None:
        result = measure(recipe, profile=profile)
    if result.error:
        raise UserError(f"this configuration failed to run, so there is nothing to export: {result.error}")
    base, _ = base_model(recipe.model)
    applied = _stored_form(recipe)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        blob, digest = weights_digest(applied, recipe)
        (tmp / "compressed.bin").write_bytes(blob)
        save_file({k: v.contiguous() for k, v in applied.storage_state.items()}, str(tmp / "model.safetensors"),
                  metadata={"recipe": recipe.to_json()})
        onnx_info = _export_onnx(applied, recipe, spec, tmp / "model.onnx")
        import onnxruntime

        onnx_acc = _verify_onnx(tmp / "model.onnx", spec, recipe.model)
        gap = abs(onnx_acc - result.accuracy)
        vwarn = []
        if gap > ACCURACY_TOLERANCE:
            vwarn.append(f"ONNX Runtime accuracy {onnx_acc:.4f} differs from PyTorch {result.accuracy:.4f} by "
                         f"{gap:.4f} (> {ACCURACY_TOLERANCE})")
        fp32_bytes = sum(v.numel() * 4 for v in base.state_dict().values() if v.is_floating_point())
        card = {
            "model": recipe.model, "recipe_key": recipe.key, "task": spec.task, "metric": spec.metric,
            "onnx": onnx_info, "preprocessing": _preprocessing(spec),
            "storage": {"file": "compressed.bin", "bytes": len(blob), "fp32_bytes": fp32_bytes,
                        "compression_ratio": fp32_bytes / len(blob), "sha256": digest},
            "verification": {"onnx_accuracy": onnx_acc, "torch_accuracy": result.accuracy, "gap": gap,
                             "tolerance": ACCURACY_TOLERANCE, "onnxruntime": onnxruntime.__version__,
                             "warnings": vwarn},
        }
        record = {"recipe": recipe.to_dict(), "recipe_key": recipe.key, "model": recipe.model,
                  "engine_version": __version__, "device": result.device or fingerprint(),
                  "weights_sha256": digest, "metrics": result.to_dict(), "verification": card["verification"]}
        (tmp / "recipe.json").write_text(json.dumps(record, indent=2, default=str) + "\n")
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
        (tmp / "report.html").write_text(_report_html(recipe, result, card, rows), encoding="utf-8")
        (tmp / "README.md").write_text(BUNDLE_README.format(
            model=recipe.model, label=recipe.label(), version=__version__, key=recipe.key,
            inputs=", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in onnx_info["inputs"]),
            preprocessing=_preprocessing(spec), size=len(blob), fp32=fp32_bytes, ratio=fp32_bytes / len(blob),
            onnx_acc=onnx_acc, torch_acc=result.accuracy))
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        for f in tmp.iterdir():
            f.chmod(0o644)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir()), "recipe_key": recipe.key,
            "accuracy": result.accuracy, "onnx_accuracy": onnx_acc, "gap": gap, "size_bytes": len(blob),
            "fp32_bytes": fp32_bytes, "compression_ratio": fp32_bytes / len(blob), "warnings": vwarn}


def reapply(recipe: Recipe, record: dict[str, Any]) -> dict[str, Any]:
    """Re-create the compressed model from the recipe and compare it with what the bundle recorded."""
    from engine.runner import evaluate

    base, spec = base_model(recipe.model)
    recipe = recipe.with_(device="cpu")
    applied = apply(base, recipe, spec)  # the stored state is taken before kernels are chosen: one pass serves both
    _, digest = weights_digest(applied, recipe)
    accuracy = evaluate(applied, recipe, spec)["accuracy"]
    recorded = (record.get("metrics") or {}).get("accuracy")
    out = {"recipe": recipe.to_dict(), "recipe_key": recipe.key, "accuracy": accuracy,
           "recorded_accuracy": recorded, "weights_sha256": digest,
           "recorded_weights_sha256": record.get("weights_sha256"),
           "identical_weights": record.get("weights_sha256") == digest if record.get("weights_sha256") else None,
           "same_accuracy": abs(accuracy - recorded) <= 1e-6 if recorded is not None else None}
    return out


def load_torch(bundle: str | Path) -> nn.Module:
    """Rebuild the compressed PyTorch model of a bundle: the recipe re-creates the architecture (pruned
    shapes), the safetensors file supplies the weights; int8 kernels are selected as at measurement."""
    recipe, _ = read_recipe(bundle)
    applied = _stored_form(recipe)
    try:
        state = load_file(str(Path(bundle) / "model.safetensors"))
    except Exception as exc:
        raise UserError(f"{bundle}/model.safetensors is not a valid safetensors file: {exc}") from None
    applied.model.load_state_dict(state, strict=True)
    if recipe.quantize.bits is not None:
        select_kernels(applied.model, recipe.quantize, "cpu")
    return applied.model.eval()
