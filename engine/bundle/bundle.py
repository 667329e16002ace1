"""A bundle: the chosen configuration as files a user takes away, and the check that they are what they claim.

Written to a temporary folder, then renamed into place, so a failure leaves nothing half-written:
  recipe.json        the recipe, engine version, device fingerprint, measured metrics, and the SHA-256 of
                     every other file (the bundle marker: `--force` replaces only folders that hold one)
  model.onnx         the compressed model for ONNX Runtime (int8 integer kernels for 8-bit recipes)
  model.xml/.bin     for a recipe measured in openvino: the OpenVINO IR that was measured, its primary model
                     (a runtime's own files are its `Runtime.files`)
  model.safetensors  PyTorch weights (no pickle); rebuild = the recipe's architecture + these weights
  compressed.bin     the real storage format (packed codes, sparse tensors, DEFLATE); see compress.codec
  model_card.json    inputs, dtypes, preprocessing, outputs, verification results
  report.html        self-contained report: the point on its frontier, metrics and their provenance
  README.md          how to use each file

`verify` never trusts a file: it checks every hash, refuses symlinks and files outside the folder,
re-creates the model from the recipe and compares it with the stored weights, and re-evaluates the
PyTorch and ONNX models (and the runtime's own model) on the evaluation data against the recorded metrics.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from engine import __version__
from engine.bundle.onnx import check_self_contained, onnx_accuracy
from engine.bundle.report import README, measured_in, own_files, report_html
from engine.compress import codec
from engine.compress.layers import resolve
from engine.compress.pipeline import Applied, apply
from engine.compress.precision import DTYPES, cast_inputs
from engine.compress.quantize import recorded_choice, select_kernels
from engine.core.axes import RUNTIMES, SCHEMES
from engine.core.errors import RecipeError, UserError, VerificationError
from engine.core.recipe import Recipe, parse_json
from engine.core.result import Result, strict
from engine.measure.fingerprint import fingerprint
from engine.measure.run import reference
from engine.models import base_model, get_spec
from engine.runtimes.onnx import export_onnx, onnx_feed, onnx_session

BUNDLE_FORMAT = 2
FILES = ("model.onnx", "model.safetensors", "compressed.bin", "model_card.json", "report.html", "README.md")
RECORD = "recipe.json"
ACCURACY_TOLERANCE = 0.02  # |ONNX Runtime accuracy - PyTorch accuracy| above this is a visible warning
# Re-evaluating the same file on the same data must give the recorded figure; the margin allows another
# CPU's int8/sparse kernels to round differently (one flipped digit of 450 is 0.0022), not a changed model.
REPEAT_TOLERANCE = 0.005
ONNX_AGREEMENT = 0.02  # relative output difference, ONNX Runtime vs PyTorch (fp16/bf16 here: <= 0.003)
ONNX_AGREEMENT_INT8 = 0.3
MAX_RECORD_BYTES = 5_000_000


def bundle_files(runtime: str) -> tuple[str, ...]:
    """What a bundle of a recipe measured in `runtime` holds besides its record: the common files and the
    runtime's own (OpenVINO's IR)."""
    return FILES + RUNTIMES.get(runtime).files


def any_files() -> tuple[str, ...]:
    """Every file some bundle holds, whatever its runtime."""
    return FILES + tuple(f for _, rt in RUNTIMES.items() for f in rt.files if f not in FILES)


def model_files() -> tuple[str, ...]:
    """Files only a bundle holds (any folder may hold a README)."""
    return tuple(f for f in any_files() if f != "README.md")


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def stored_form(recipe: Recipe) -> Applied:
    """The compressed model as plain float modules on the CPU (weights on the grid): what ONNX and
    safetensors hold. Kernel selection (int8, sparse) happens when a model is loaded to run."""
    base, spec = base_model(recipe.model)
    return apply(base, recipe.with_(device="cpu"), spec, kernels=False)


def encoded(applied: Applied, recipe: Recipe) -> bytes:
    return codec.encode(applied.storage_state, applied.quant, DTYPES[recipe.precision])


# --- where a bundle may be written ----------------------------------------------------------------
def _protected(path: Path) -> bool:
    """`/`, the home folder, the current folder and its parents: never replaced, whatever they hold."""
    cwd = Path.cwd().resolve()
    return path == Path(path.anchor) or path == Path.home().resolve() or path == cwd or path in cwd.parents


def is_bundle(folder: Path) -> bool:
    record = folder / RECORD
    try:
        if record.is_symlink() or not record.is_file() or record.stat().st_size > MAX_RECORD_BYTES:
            return False
        data = parse_json(record.read_text(encoding="utf-8"), RECORD, limit=None)
        marker = data.get("bundle") if isinstance(data, dict) else None
        recipe = data.get("recipe") if isinstance(data, dict) else None
        runtime = recipe.get("runtime", "eager") if isinstance(recipe, dict) else "eager"
        return (isinstance(marker, dict) and marker.get("format") == BUNDLE_FORMAT
                and isinstance(marker.get("files"), dict) and set(marker["files"]) == set(bundle_files(runtime)))
    except (OSError, ValueError, TypeError, RecursionError):
        return False


def check_out(out: str | Path, force: bool) -> Path:
    """Where a new bundle may go; raises UserError (and touches nothing, not even a parent folder) otherwise."""
    out = Path(out).expanduser()
    resolved = out.resolve()
    if _protected(resolved):
        raise UserError(f"--out {out} is the root, the home folder, the current folder or one of its parents: "
                        "choose a new folder for the bundle")
    if not out.name or len(out.name.encode()) > 255:
        raise UserError(f"--out {str(out)[:80]!r} is not a usable folder name")
    if out.is_symlink() or out.exists():
        if not force:
            raise UserError(f"{out} already exists: choose another --out or pass --force to replace it")
        if out.is_symlink() or not out.is_dir():
            raise UserError(f"{out} is a file, not a bundle folder: refusing to replace it")
        if not is_bundle(out):
            raise UserError(f"{out} is not a bundle written by this tool (it has no bundle record): "
                            "refusing to replace it")
        extra = sorted(p.name for p in out.iterdir()
                       if p.name not in any_files() + (RECORD,) or p.is_symlink() or not p.is_file())
        if extra:
            raise UserError(f"{out} holds things that are not part of the bundle ({', '.join(extra[:5])}): "
                            "refusing to replace it")
    existing = next(p for p in (resolved.parent, *resolved.parent.parents) if p.exists())
    if not existing.is_dir():
        raise UserError(f"{existing} is a file, so {out.name} cannot be created in it")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{existing} is not writable")
    return out


# --- writing ------------------------------------------------------------------------------------------
def write_bundle(recipe: Recipe, out: str | Path, result: Result, rows: list[dict], force: bool = False
                 ) -> dict[str, Any]:
    """Write the verified bundle of `recipe` (measured as `result`) to `out`."""
    out = check_out(out, force)
    if result.error:
        raise UserError(f"this configuration failed to run, so there is nothing to export: {result.error}")
    recipe = recipe.with_(device="cpu")  # the bundle is verified on CPU ONNX Runtime
    spec = get_spec(recipe.model)
    applied = stored_form(recipe)
    try:
        out.resolve().parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.resolve().parent))
    except OSError as exc:
        raise UserError(f"cannot write in {out.parent}: {exc.strerror or exc}") from None
    try:
        blob = encoded(applied, recipe)
        (tmp / "compressed.bin").write_bytes(blob)
        save_file({k: v.contiguous() for k, v in applied.storage_state.items()}, str(tmp / "model.safetensors"),
                  metadata={"recipe": recipe.to_json()})
        onnx_info = export_onnx(applied, recipe, spec, tmp / "model.onnx")
        import onnxruntime

        onnx_acc = onnx_accuracy(tmp / "model.onnx", spec)
        runtime = RUNTIMES.get(recipe.runtime)
        accuracies, own = {}, {}
        if runtime.files:  # the runtime's own model (OpenVINO's IR), the one that was measured
            own = runtime.write_files(applied, recipe, spec, tmp)
            accuracies[runtime.accuracy_key] = _score(runtime.files_outputs(tmp, recipe, spec), spec)
        # A runtime whose artifact is rebuilt for export (compiled, exported) must reproduce the measurement
        # with it; the other model is the side check.
        torch_acc = result.accuracy if runtime.replays_exactly else _evaluate(applied.model, recipe, spec,
                                                                               recorded_choice(result.kernels))
        accuracies |= {"onnx_accuracy": onnx_acc, "torch_accuracy": torch_acc}
        primary_acc = accuracies[runtime.accuracy_key]
        if not runtime.replays_exactly and abs(primary_acc - result.accuracy) > REPEAT_TOLERANCE:
            raise UserError(f"{runtime.exported_name} gives {result.metric_kind} {primary_acc:.4f}, the measurement "
                            f"recorded {result.accuracy:.4f}: re-measure this configuration, then export")
        gap = abs(onnx_acc - torch_acc)
        vwarn = []
        if gap > ACCURACY_TOLERANCE:
            vwarn.append(f"ONNX Runtime {result.metric_kind} {onnx_acc:.4f} differs from PyTorch "
                         f"{torch_acc:.4f} by {gap:.4f} (> {ACCURACY_TOLERANCE})")
        if runtime.files and abs(primary_acc - torch_acc) > ACCURACY_TOLERANCE:
            vwarn.append(f"{runtime.primary} in {runtime.name}: {result.metric_kind} {primary_acc:.4f} differs from "
                         f"PyTorch {torch_acc:.4f} by {abs(primary_acc - torch_acc):.4f} (> {ACCURACY_TOLERANCE})")
        fp32_bytes = result.baseline_size_bytes  # one fp32 size everywhere: the codec's uncompressed model
        ratio = fp32_bytes / len(blob)
        card = {
            "model": recipe.model, "recipe_key": recipe.key, "task": spec.task, "metric": spec.metric,
            "metric_kind": spec.metric_kind, "onnx": onnx_info, **({runtime.name: own} if runtime.files else {}),
            "preprocessing": spec.preprocessing,
            "storage": {"file": "compressed.bin", "bytes": len(blob), "fp32_bytes": fp32_bytes,
                        "compression_ratio": ratio},
            "verification": {"runtime": recipe.runtime, "primary": runtime.primary,
                             "onnx_accuracy": onnx_acc, "torch_accuracy": torch_acc, "gap": gap,
                             "tolerance": ACCURACY_TOLERANCE, "onnxruntime": onnxruntime.__version__,
                             "warnings": vwarn} | {k: v for k, v in accuracies.items() if k == runtime.accuracy_key},
        }
        (tmp / "model_card.json").write_text(json.dumps(strict(card), indent=2, allow_nan=False) + "\n")
        (tmp / "report.html").write_text(report_html(recipe, result, card, rows), encoding="utf-8")
        (tmp / "README.md").write_text(README.format(
            model=recipe.model, label=recipe.label(), version=__version__, key=recipe.key,
            inputs=", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in onnx_info["inputs"]),
            preprocessing=spec.preprocessing, size=len(blob), fp32=fp32_bytes, ratio=ratio,
            name=spec.metric_kind, onnx_acc=onnx_acc, torch_acc=torch_acc,
            measured=measured_in(runtime), own_files=own_files(runtime)))
        record = {"bundle": {"format": BUNDLE_FORMAT,
                             "files": {f: sha256(tmp / f) for f in bundle_files(recipe.runtime)}},
                  "recipe": recipe.to_dict(), "recipe_key": recipe.key, "model": recipe.model,
                  "engine_version": __version__, "device": result.machine.to_dict() if result.machine.id else fingerprint(),
                  "weights_sha256": hashlib.sha256(blob).hexdigest(), "metrics": result.to_dict(),
                  "verification": card["verification"], "model_card": card}
        (tmp / RECORD).write_text(json.dumps(strict(record), indent=2, allow_nan=False) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; a bundle is meant to be shared
        for f in tmp.iterdir():
            f.chmod(0o644)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"out": str(out), "files": sorted(p.name for p in out.iterdir()), "recipe_key": recipe.key,
            "metric_kind": result.metric_kind, "accuracy": result.accuracy, "onnx_accuracy": onnx_acc, "gap": gap,
            "size_bytes": len(blob), "fp32_bytes": fp32_bytes, "compression_ratio": ratio, "warnings": vwarn,
            "speedup": result.speedup, "latency_ms": result.latency and result.latency.to_dict(),
            "energy_j": result.energy_j, "energy_source": result.energy_source and str(result.energy_source),
            "caveats": list(result.warnings)} | ({runtime.accuracy_key: primary_acc} if runtime.files else {})


def _replace(tmp: Path, out: Path) -> None:
    """Move the finished bundle into place; an old bundle there is removed only after the move."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
    tmp.rename(out)
    if old is not None:
        shutil.rmtree(old)


# --- reading and verifying ------------------------------------------------------------------------
def _regular(path: Path, what: str) -> None:
    """A plain file inside the bundle: not a symlink, not a device, not missing."""
    try:
        st = path.lstat()
    except OSError:
        raise VerificationError(f"{what}: missing") from None
    if stat.S_ISLNK(st.st_mode):
        raise VerificationError(f"{what}: is a symbolic link; a bundle holds only its own plain files")
    if not stat.S_ISREG(st.st_mode):
        raise VerificationError(f"{what}: is not a plain file")


def read_record(path: str | Path) -> tuple[Recipe, dict[str, Any] | None, Path | None]:
    """(recipe, bundle record or None for a bare recipe file, bundle folder or None)."""
    p = Path(path)
    folder = p if p.is_dir() else p.parent
    if p.is_dir():
        p = p / RECORD
    if p.is_symlink():
        raise VerificationError(f"{p.name}: is a symbolic link; refused (it may point outside the bundle)")
    if not p.is_file():
        raise UserError(f"no recipe file at {p}")
    if p.stat().st_size > MAX_RECORD_BYTES:
        raise RecipeError(f"{p} is too large to be a recipe file")
    with open(p, "rb") as fh:
        if fh.read(4) == b"PK\x03\x04":
            raise UserError(f"{p} is a zip archive: unzip it and give the bundle folder (or its recipe.json)")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{p} is not a valid recipe file: {exc}") from None
    data = parse_json(text, f"recipe file {p.name}")
    if not isinstance(data, dict):
        raise RecipeError(f"{p} is not a valid recipe file: expected a JSON object")
    if "recipe" not in data:  # a bare recipe
        held = [f for f in model_files() if (folder / f).exists()] if p.name == RECORD else []
        if held:  # a bundle whose record was swapped: applying it would leave its model files unverified
            raise VerificationError(f"{RECORD}: is a bare recipe, not the bundle record, in a folder that holds "
                                    f"bundle files ({', '.join(held)}); export the bundle again")
        recipe = Recipe.from_dict(data)
        get_spec(recipe.model)
        return recipe, None, None
    recipe = Recipe.from_dict(data["recipe"])
    get_spec(recipe.model)
    for name, kind in (("metrics", dict), ("verification", dict), ("bundle", dict)):
        if name in data and not isinstance(data[name], kind):
            raise RecipeError(f"{p}: field {name!r} must be an object")
    return recipe, data, folder


def verify(folder: Path, recipe: Recipe, record: dict[str, Any]) -> dict[str, Any]:
    """Every check of a bundle; the first failing file is named in `error` (the CLI exits 1).

    Checked: each file's SHA-256 against the record; the record against itself (recipe, key, metrics);
    compressed.bin and model.safetensors against the weights the recipe re-creates, tensor by tensor; the
    PyTorch and ONNX models (and the runtime's own, OpenVINO's IR) re-evaluated against the recorded metrics;
    their outputs against the re-created model's; the model card and README against the record. Not re-derived: latency, speed-up,
    memory and energy (measured on the recording machine) and the HTML report (checked by hash only)."""
    checks: list[dict[str, Any]] = []
    out = {"bundle": str(folder), "recipe": recipe.to_dict(), "recipe_key": recipe.key, "checks": checks,
           "accuracy": None, "onnx_accuracy": None, "error": None,
           "not_rederived": "latency, speed-up, memory and energy (measured on the recording machine); report.html "
                            "(checked by hash only)"}

    def check(file: str, what: str, fn) -> Any:
        try:
            value = fn()
            checks.append({"file": file, "check": what, "ok": True})
            return value
        except VerificationError as exc:
            checks.append({"file": file, "check": what, "ok": False, "detail": str(exc)})
            out["error"] = out["error"] or str(exc)
            return None

    runtime = RUNTIMES.get(recipe.runtime)
    expected = bundle_files(recipe.runtime)
    files = (record.get("bundle") or {}).get("files")
    if not isinstance(files, dict) or set(files) != set(expected):
        raise VerificationError(f"{RECORD}: lists no file hashes (written by an older engine, or edited): "
                                "re-export the configuration")
    extra = sorted(p.name for p in folder.iterdir() if p.name not in expected + (RECORD,))
    if extra:
        check(extra[0], "part of the bundle", lambda: _fail(f"{extra[0]}: is not part of the bundle (a bundle holds "
                                                              f"only {', '.join(expected + (RECORD,))})"))
    hashed = {f: check(f, "sha256", lambda f=f: _hash_ok(folder / f, f, files[f])) for f in expected}
    metrics = check(RECORD, "the record agrees with itself", lambda: _record_ok(record, recipe))
    applied = stored_form(recipe)
    spec = get_spec(recipe.model)
    if hashed["compressed.bin"] and metrics:
        check("compressed.bin", "equals the recipe's compressed weights",
              lambda: _same_bytes(folder / "compressed.bin", encoded(applied, recipe), record, metrics, applied,
                                           recipe))
    torch_out = None
    if hashed["model.safetensors"] and metrics:
        model = check("model.safetensors", "equals the recipe's weights", lambda: _load_weights(folder, recipe, applied))
        if model is not None:
            chosen = recorded_choice((record.get("metrics") or {}).get("kernels") or [])
            torch_out = _outputs(model, recipe, spec, chosen)
            acc = out["accuracy"] = _score(torch_out, spec)
            check("model.safetensors", "re-evaluated accuracy matches the record",
                  lambda: _close(acc, record["verification"].get("torch_accuracy"), "model.safetensors"))
    if hashed["model.onnx"] and metrics:
        onnx_out = check("model.onnx", "runs in ONNX Runtime", lambda: _onnx_outputs(folder / "model.onnx", spec))
        if onnx_out is not None:
            acc = out["onnx_accuracy"] = _score(onnx_out, spec)
            check("model.onnx", "re-evaluated accuracy matches the record",
                  lambda: _close(acc, record["verification"].get("onnx_accuracy"), "model.onnx"))
            if torch_out is not None:
                check("model.onnx", "computes what the recipe's model computes",
                      lambda: _agree(onnx_out, torch_out, _onnx_limit(recipe), acc, out["accuracy"], "model.onnx"))
    if runtime.files and all(hashed[f] for f in runtime.files) and metrics:
        name = runtime.primary
        own_out = check(name, f"runs in {runtime.name}", lambda: runtime.files_outputs(folder, recipe, spec))
        if own_out is not None:
            own_acc = out[runtime.accuracy_key] = _score(own_out, spec)
            check(name, "re-evaluated accuracy matches the record",
                  lambda: _close(own_acc, record["verification"].get(runtime.accuracy_key), name))
            if torch_out is not None:  # the runtime's own quantizer (NNCF) re-quantizes the grid its own way
                limit = ONNX_AGREEMENT_INT8 if recipe.quantize.bits is not None else ONNX_AGREEMENT
                check(name, "computes what the recipe's model computes",
                      lambda: _agree(own_out, torch_out, limit, own_acc, out["accuracy"], name))
    if hashed["model_card.json"] and hashed["README.md"] and metrics:
        check("model_card.json", "agrees with the record",
              lambda: _documents_ok(folder, record, recipe, spec, metrics))
    out["identical_weights"] = all(c["ok"] for c in checks if "weights" in c["check"] or c["check"] == "sha256")
    return out


def _fail(message: str) -> None:
    raise VerificationError(message)


def _hash_ok(path: Path, name: str, expected: Any) -> bool:
    _regular(path, name)
    if not isinstance(expected, str) or sha256(path) != expected:
        raise VerificationError(f"{name}: its SHA-256 does not match the one recorded in {RECORD} (changed)")
    return True


def _record_ok(record: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """The record's parts describe one configuration: the recipe, its key, and metrics measured for it."""
    metrics = record.get("metrics")
    if recipe.device != "cpu":
        raise VerificationError(f"{RECORD}: a bundle's recipe runs on cpu, this one says {recipe.device} (edited)")
    if record.get("recipe_key") != recipe.key or record.get("model") != recipe.model \
            or record.get("recipe") != recipe.to_dict():
        raise VerificationError(f"{RECORD}: its recipe, recipe_key and model do not agree (edited)")
    try:
        result = Result.from_dict(metrics)
    except (TypeError, ValueError, UserError) as exc:
        raise VerificationError(f"{RECORD}: its metrics are not a valid measurement ({str(exc)[:100]})") from None
    if Recipe.from_dict(result.recipe).with_(device="cpu") != recipe or result.error is not None:
        raise VerificationError(f"{RECORD}: its metrics were measured for another configuration (edited)")
    ver = record.get("verification")
    # The measured runtime's accuracy is the metric: eager's exactly; compile's and ONNX Runtime's as re-run
    # at export.
    runtime = RUNTIMES.get(recipe.runtime)
    ok = isinstance(ver, dict) and ver.get("runtime", "eager") == recipe.runtime
    if ok and runtime.replays_exactly:
        ok = ver.get(runtime.accuracy_key) == result.accuracy
    elif ok:
        acc = ver.get(runtime.accuracy_key)
        ok = type(acc) in (int, float) and abs(acc - result.accuracy) <= REPEAT_TOLERANCE
    if not ok:
        raise VerificationError(f"{RECORD}: its verification block does not match its metrics (edited)")
    return metrics


def _same_bytes(path: Path, expected: bytes, record: dict[str, Any], metrics: dict[str, Any], applied: Applied,
                recipe: Recipe) -> None:
    """compressed.bin holds the recipe's weights; the recorded size is that of what the runtime loads
    (compressed.bin for eager and compile, model.onnx for onnxruntime)."""
    if path.read_bytes() != expected or hashlib.sha256(expected).hexdigest() != record.get("weights_sha256"):
        raise VerificationError("compressed.bin: does not hold the weights the recipe re-creates")
    try:
        codec.decode(expected)
    except codec.CodecError as exc:
        raise VerificationError(f"compressed.bin: {exc}") from None
    size = (path.parent / RUNTIMES.get(recipe.runtime).sized).stat().st_size
    if metrics.get("size_bytes") != size or metrics.get("params_total") != applied.params_total \
            or metrics.get("params_nonzero") != applied.params_nonzero:
        raise VerificationError(f"{RECORD}: its size or parameter counts are not those of the re-created model")
def _load_weights(folder: Path, recipe: Recipe, applied: Applied) -> nn.Module:
    try:
        state = load_file(str(folder / "model.safetensors"))
    except Exception as exc:  # noqa: BLE001  (safetensors raises its own error types)
        raise VerificationError(f"model.safetensors: not a valid safetensors file: {str(exc)[:160]}") from None
    want = applied.storage_state
    if state.keys() != want.keys() or any(state[k].shape != want[k].shape or state[k].dtype != want[k].dtype
                                          or not torch.equal(state[k], want[k]) for k in want):
        raise VerificationError("model.safetensors: does not hold the weights the recipe re-creates")
    applied.model.load_state_dict(state, strict=True)
    return applied.model


def _evaluate(model: nn.Module, recipe: Recipe, spec, chosen: dict[str, str] | None = None) -> float:
    return _score(_outputs(model, recipe, spec, chosen), spec)


def _outputs(model: nn.Module, recipe: Recipe, spec, chosen: dict[str, str] | None = None) -> torch.Tensor:
    """The model's outputs on the evaluation data, run with the kernels it was measured with (compiled, for
    a recipe measured through torch.compile; `chosen`: the per-layer packed/float choice the measurement made)."""
    if recipe.quantize.bits is not None:
        select_kernels(model, recipe.quantize, "cpu", resolve(recipe, model), chosen=chosen)
    inputs = [cast_inputs(x, recipe.precision, "cpu") for x in spec.eval_inputs()]
    run = RUNTIMES.get(recipe.runtime).torch_runner(model, spec, inputs[0])
    with torch.inference_mode():
        return torch.cat([run(x) for x in inputs]).float()


def _score(outputs: torch.Tensor, spec) -> float:
    return spec.score(outputs, reference(spec.name)[0])["accuracy"]


def _onnx_outputs(path: Path, spec) -> torch.Tensor:
    check_self_contained(path)
    try:
        session = onnx_session(path)
        return torch.cat([torch.from_numpy(session.run(None, onnx_feed(session, x))[0])
                          for x in spec.eval_inputs()]).float()
    except Exception as exc:  # noqa: BLE001  (ONNX Runtime raises its own types on bad graphs)
        raise VerificationError(f"model.onnx: does not run in ONNX Runtime: {str(exc)[:160]}") from None


def _onnx_limit(recipe: Recipe) -> float:
    """Looser for int8, whose activations ONNX Runtime quantizes its own way (0.06 for digits-mlp, 0.24 for
    MiniLM here)."""
    int8 = recipe.quantize.bits is not None and SCHEMES.get(recipe.quantize.scheme).int8_activations
    return ONNX_AGREEMENT_INT8 if int8 else ONNX_AGREEMENT


def _agree(out: torch.Tensor, torch_out: torch.Tensor, limit: float, acc: float, torch_acc: float | None, name: str
           ) -> None:
    """Another runtime's model (`name`) computes the same model: outputs within a relative difference `limit`
    and accuracy within the export tolerance."""
    diff = float((out - torch_out).norm() / torch_out.norm().clamp(min=1e-12))
    if out.shape != torch_out.shape or not diff <= limit or abs(acc - (torch_acc or 0)) > ACCURACY_TOLERANCE:
        raise VerificationError(f"{name}: does not compute what the recipe's model computes (relative "
                                f"difference {diff:.3f}, limit {limit}; accuracy {acc:.4f} vs {torch_acc:.4f})")


def _documents_ok(folder: Path, record: dict[str, Any], recipe: Recipe, spec, metrics: dict[str, Any]) -> None:
    """The model card and README say what the record says (the README is re-written and compared)."""
    try:
        card = parse_json((folder / "model_card.json").read_text(encoding="utf-8"), "model_card.json", MAX_RECORD_BYTES)
        readme = (folder / "README.md").read_text(encoding="utf-8")
        size = (folder / "compressed.bin").stat().st_size
        same = (isinstance(card, dict) and card.get("recipe_key") == recipe.key and card.get("model") == recipe.model
                and card.get("metric") == spec.metric and card.get("metric_kind") == spec.metric_kind
                and card.get("verification") == record["verification"]
                and card.get("storage", {}).get("bytes") == size
                and card.get("storage", {}).get("fp32_bytes") == metrics.get("baseline_size_bytes")
                # the whole card, as written (bundles of engines before 0.5 hold only the fields above)
                and card == record.get("model_card", card))
        if same:
            expected = README.format(
                model=recipe.model, label=recipe.label(), version=record.get("engine_version"), key=recipe.key,
                inputs=", ".join(f"{i['name']} {i['dtype']} {i['shape']}" for i in card["onnx"]["inputs"]),
                preprocessing=spec.preprocessing, size=size, fp32=card["storage"]["fp32_bytes"],
                ratio=card["storage"]["compression_ratio"], name=spec.metric_kind,
                onnx_acc=record["verification"]["onnx_accuracy"], torch_acc=record["verification"]["torch_accuracy"],
                measured=measured_in(RUNTIMES.get(recipe.runtime)), own_files=own_files(RUNTIMES.get(recipe.runtime)))
            same = readme == expected
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError):
        same = False
    if not same:
        raise VerificationError("model_card.json or README.md: does not say what the record says (edited)")


def _close(value: float, recorded: Any, name: str) -> None:
    ok = isinstance(recorded, (int, float)) and not isinstance(recorded, bool)
    try:
        ok = ok and math.isfinite(recorded) and abs(value - recorded) <= REPEAT_TOLERANCE
    except OverflowError:
        ok = False
    if not ok:
        raise VerificationError(f"{name}: re-evaluated to {value:.4f}, but {RECORD} records {str(recorded)[:20]}")


def reapply(recipe: Recipe) -> dict[str, Any]:
    """Re-create a bare recipe's compressed model and evaluate it (nothing recorded to compare with)."""
    applied = stored_form(recipe)
    spec = get_spec(recipe.model)
    return {"recipe": recipe.to_dict(), "recipe_key": recipe.key, "checks": [], "bundle": None,
            "accuracy": _evaluate(applied.model, recipe, spec), "onnx_accuracy": None,
            "weights_sha256": hashlib.sha256(encoded(applied, recipe)).hexdigest(), "error": None}


def load_torch(bundle: str | Path) -> nn.Module:
    """Rebuild the compressed PyTorch model of a verified-readable bundle: the recipe re-creates the
    architecture (pruned shapes), the safetensors file supplies the weights; int8 kernels as at measurement."""
    recipe, record, folder = read_record(bundle)
    if record is None:
        raise UserError(f"{bundle} is a bare recipe, not a bundle: there are no weights to load")
    _regular(folder / "model.safetensors", "model.safetensors")
    applied = stored_form(recipe)
    try:
        state = load_file(str(folder / "model.safetensors"))
        applied.model.load_state_dict(state, strict=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"{folder}/model.safetensors is not a valid safetensors file for this recipe: "
                        f"{str(exc)[:160]}") from None
    if recipe.quantize.bits is not None:  # the kernels it was measured with, per layer
        select_kernels(applied.model, recipe.quantize, "cpu", resolve(recipe, applied.model),
                       chosen=recorded_choice((record.get("metrics") or {}).get("kernels") or []))
    return applied.model.eval()
