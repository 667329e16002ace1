"""The Recipe: the one value that defines a point, shared by the UI, sweeps, the store, export and the CLI.

Frozen dataclasses, validated on construction (errors name the field, the value and what is allowed),
canonicalised (values that mean the same recipe compare and hash the same) and round-tripped through
an allow-listed JSON form. `Recipe.key` is the stable hash used as cache, store and file key.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.core.errors import RecipeError

# 2 added `runtime` (version 1 reads as "eager"); 3 added `threads` (older: all cores); 4 added per-layer
# overrides (`layers`) and recovery (`recover`); older versions read as none of either.
RECIPE_VERSION = 4
READ_VERSIONS = (1, 2, 3, 4)
PRUNE_METHODS = ("none", "magnitude", "structured")
PRUNE_SCOPES = ("global", "layer")
MAX_PRUNE = 0.99
MAX_FINETUNE = 50
BITS = (2, 3, 4, 5, 6, 7, 8)
# codebook: Deep Compression's weight sharing, 2**bits k-means centroids per layer (stored as indices + codebook).
SCHEMES = ("weight-only", "dynamic", "codebook")
GRANULARITIES = ("per-channel", "per-group", "per-layer")
RECOVER_METHODS = ("none", "finetune", "distill")
SCHEDULES = ("one-shot", "gradual")
MAX_STEPS = 20_000
MAX_LAYER_OVERRIDES = 256
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("cpu", "cuda")
# eager: PyTorch as the engine runs it; compile: the same model through torch.compile (inductor);
# onnxruntime: the compressed model exported to ONNX and run in ONNX Runtime's CPU provider.
RUNTIMES = ("eager", "compile", "onnxruntime")
MAX_THREADS = 1024
MAX_BATCH = 4096
MAX_MODEL_NAME = 300
MAX_RECIPE_BYTES = 1_000_000  # a recipe file is a few hundred bytes; anything this large is not one


def _choice(field_name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        raise RecipeError(f"{field_name}={value!r} is not allowed: choose one of {', '.join(map(str, allowed))}")


def _set(obj: Any, name: str, value: Any) -> None:
    object.__setattr__(obj, name, value)


@dataclass(frozen=True)
class Prune:
    """Remove weights. `magnitude` zeroes the smallest weights (unstructured, shapes unchanged);
    `structured` removes whole channels / attention heads so tensors really shrink.
    `finetune_epochs` retrains the pruned model briefly on the model's training data (zeros stay zero)."""

    method: str = "none"
    amount: float = 0.0
    scope: str = "global"
    finetune_epochs: int = 0

    def __post_init__(self) -> None:
        _choice("prune.method", self.method, PRUNE_METHODS)
        _choice("prune.scope", self.scope, PRUNE_SCOPES)
        if isinstance(self.amount, bool) or not isinstance(self.amount, (int, float)):
            raise RecipeError(f"prune.amount={self.amount!r:.40} is not a number: allowed 0 to {MAX_PRUNE}")
        if not 0.0 <= self.amount <= MAX_PRUNE:  # compared before float(): a 400-digit integer must not overflow
            raise RecipeError(f"prune.amount={self.amount!r:.40} is out of range: allowed 0 to {MAX_PRUNE}")
        _set(self, "amount", round(float(self.amount), 4))
        if isinstance(self.finetune_epochs, bool) or not isinstance(self.finetune_epochs, int) \
                or not 0 <= self.finetune_epochs <= MAX_FINETUNE:
            raise RecipeError(f"prune.finetune_epochs={self.finetune_epochs!r} is not allowed: an integer 0 to {MAX_FINETUNE}")
        if self.method == "none" and self.amount > 0:
            raise RecipeError(f"prune.amount={self.amount} needs prune.method magnitude or structured, not none")
        if self.method == "none":
            _set(self, "scope", "global")
            _set(self, "finetune_epochs", 0)
        # amount 0 with a method is kept here (layer overrides may prune some layers); a Recipe without such
        # overrides canonicalises it to no pruning.


@dataclass(frozen=True)
class Quantize:
    """Put weights on a grid of at most 2**bits levels per channel (or per group of `group_size`).
    `weight-only` keeps float activations; `dynamic` also quantizes activations to int8 at run time
    so Linear layers run on a real int8 kernel."""

    bits: int | None = None
    scheme: str = "weight-only"
    granularity: str = "per-channel"
    group_size: int = 32

    def __post_init__(self) -> None:
        if self.bits is None:
            _set(self, "scheme", "weight-only")
            _set(self, "granularity", "per-channel")
            _set(self, "group_size", 32)
            return
        if isinstance(self.bits, bool) or not isinstance(self.bits, int):
            raise RecipeError(f"quantize.bits={self.bits!r} is not allowed: choose none or an integer 2 to 8")
        if self.bits not in BITS:
            raise RecipeError(f"quantize.bits={self.bits} is not allowed: choose none or an integer 2 to 8")
        _choice("quantize.scheme", self.scheme, SCHEMES)
        _choice("quantize.granularity", self.granularity, GRANULARITIES)
        if self.scheme == "codebook" or self.granularity == "per-layer":
            if self.scheme != "codebook":
                raise RecipeError(f"quantize.granularity=per-layer is for scheme codebook, not {self.scheme}")
            _set(self, "granularity", "per-layer")  # one codebook per layer, whatever was asked
            _set(self, "group_size", 32)
        elif self.granularity == "per-channel":
            _set(self, "group_size", 32)
        elif not isinstance(self.group_size, int) or self.group_size not in (8, 16, 32, 64, 128):
            raise RecipeError(f"quantize.group_size={self.group_size!r} is not allowed: choose 8, 16, 32, 64 or 128")


def _number(where: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            (lo < value if lo_open else lo <= value) and value <= hi):  # compared before float(): no overflow
        bound = f"above {lo}" if lo_open else f"{lo}"
        raise RecipeError(f"{where}={value!r:.40} is not allowed: a number {bound} to {hi}")
    return float(value)


@dataclass(frozen=True)
class LayerOverride:
    """One layer's (or a name pattern's) own pruning amount and bit width, where it differs from the recipe's.

    `pattern` is a module name (`conv1`, `encoder.layer.0.attention.self.query`) or an fnmatch pattern
    (`encoder.layer.*.output.dense`); `prune` None keeps the recipe's amount; `bits` None keeps the recipe's
    bits, "none" keeps the layer in float."""

    pattern: str
    prune: float | None = None
    bits: int | str | None = None

    def __post_init__(self) -> None:
        where = f"layers[{str(self.pattern)[:60]!r}]"
        if not isinstance(self.pattern, str) or not self.pattern or len(self.pattern) > MAX_MODEL_NAME \
                or not self.pattern.isprintable():
            raise RecipeError(f"layers: {str(self.pattern)[:60]!r} is not a layer name or pattern")
        if self.prune is not None:
            _set(self, "prune", round(_number(f"{where}.prune", self.prune, 0.0, MAX_PRUNE), 4))
        if self.bits is not None and self.bits != "none" and (
                isinstance(self.bits, bool) or not isinstance(self.bits, int) or self.bits not in BITS):
            raise RecipeError(f"{where}.bits={self.bits!r:.40} is not allowed: choose \"none\" (kept in float) or "
                              f"an integer {BITS[0]} to {BITS[-1]}")
        if self.prune is None and self.bits is None:
            raise RecipeError(f"{where} overrides nothing: give prune and/or bits")

    def matches(self, layer: str) -> bool:
        return layer == self.pattern or fnmatch.fnmatchcase(layer, self.pattern)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in (("prune", self.prune), ("bits", self.bits)) if v is not None}


@dataclass(frozen=True)
class Recover:
    """Training after compression, so its cost and its effect are both on the record.

    `finetune` trains on the model's labelled training data; `distill` trains the compressed model to agree
    with the uncompressed one (KL on logits for classifiers, embedding agreement for encoders). `gradual`
    raises magnitude sparsity from `initial_sparsity` to the recipe's amount along a cubic (polynomial-decay)
    schedule over the first 3/4 of the steps; `qat` trains through fake-quantized weights (straight-through
    estimator) so 2-4-bit grids are learned rather than imposed. Codebook recipes also fine-tune their
    centroids in the last third of the steps."""

    method: str = "none"
    steps: int = 0
    lr: float | None = None  # None: the model's own default (pretrained transformers need a smaller one)
    schedule: str = "one-shot"
    initial_sparsity: float = 0.0
    qat: bool = False
    temperature: float = 2.0

    def __post_init__(self) -> None:
        _choice("recover.method", self.method, RECOVER_METHODS)
        _choice("recover.schedule", self.schedule, SCHEDULES)
        if not isinstance(self.qat, bool):
            raise RecipeError(f"recover.qat={self.qat!r:.40} is not allowed: true or false")
        if self.method == "none":
            if self.steps or self.qat or self.schedule != "one-shot":
                raise RecipeError("recover has steps, a schedule or qat but method none: choose finetune or distill")
            for name, value in (("steps", 0), ("lr", None), ("initial_sparsity", 0.0), ("temperature", 2.0)):
                _set(self, name, value)
            return
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or not 1 <= self.steps <= MAX_STEPS:
            raise RecipeError(f"recover.steps={self.steps!r:.40} is not allowed: an integer 1 to {MAX_STEPS}")
        if self.lr is not None:
            _set(self, "lr", _number("recover.lr", self.lr, 0.0, 1.0, lo_open=True))
        _set(self, "initial_sparsity", round(_number("recover.initial_sparsity", self.initial_sparsity, 0.0,
                                                     MAX_PRUNE), 4))
        _set(self, "temperature", _number("recover.temperature", self.temperature, 0.0, 100.0, lo_open=True))
        if self.method != "distill":
            _set(self, "temperature", 2.0)
        if self.schedule == "one-shot":
            _set(self, "initial_sparsity", 0.0)

    def label(self) -> str:
        parts = [f"{self.method} {self.steps} steps"]
        if self.schedule == "gradual":
            parts.append(f"gradual from {self.initial_sparsity:.0%}")
        if self.qat:
            parts.append("QAT")
        return " ".join(parts)


@dataclass(frozen=True)
class Recipe:
    """Everything that defines a measured point: the model, the compression and how it is run."""

    model: str
    prune: Prune = field(default_factory=Prune)
    quantize: Quantize = field(default_factory=Quantize)
    precision: str = "fp32"
    device: str = "cpu"
    batch_size: int = 1
    runtime: str = "eager"
    threads: int | None = None  # intra-op threads; None: the machine's physical cores
    layers: tuple[LayerOverride, ...] = ()
    recover: Recover = field(default_factory=Recover)

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model or len(self.model) > MAX_MODEL_NAME \
                or not self.model.isprintable():
            raise RecipeError(f"model={str(self.model)[:80]!r} is not allowed: give a registered model name")
        _set(self, "prune", _part(self.prune, Prune, "prune"))
        _set(self, "quantize", _part(self.quantize, Quantize, "quantize"))
        _set(self, "recover", _part(self.recover, Recover, "recover"))
        _set(self, "layers", _layers(self.layers))
        self._check_parts()
        _choice("precision", self.precision, PRECISIONS)
        _choice("device", self.device, DEVICES)
        _choice("runtime", self.runtime, RUNTIMES)
        if self.runtime == "onnxruntime" and self.device != "cpu":
            raise RecipeError("runtime=onnxruntime with device=cuda cannot run: the installed ONNX Runtime has the CPU "
                              "provider only; use device cpu or runtime eager")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or not 1 <= self.batch_size <= MAX_BATCH:
            raise RecipeError(f"batch_size={self.batch_size!r} is not allowed: an integer 1 to {MAX_BATCH}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or not 1 <= self.threads <= MAX_THREADS):
            raise RecipeError(f"threads={self.threads!r} is not allowed: none (all physical cores) or an integer "
                              f"1 to {MAX_THREADS}")
        if self.quantize.scheme == "dynamic":
            if self.precision != "fp32":
                raise RecipeError(
                    f"quantize.scheme=dynamic with precision={self.precision} cannot run: the int8 dynamic kernel "
                    "takes fp32 activations; use precision fp32 or scheme weight-only")
            if self.device != "cpu":
                raise RecipeError(
                    "quantize.scheme=dynamic with device=cuda cannot run: the int8 dynamic kernel is CPU-only; "
                    "use scheme weight-only on cuda")

    def _check_parts(self) -> None:
        """Rules that span parts: what overrides and recovery need of pruning and quantization."""
        pruned_layers = any(o.prune for o in self.layers)
        if self.prune.amount == 0 and not pruned_layers:
            _set(self, "prune", Prune())
        if pruned_layers and self.prune.method == "none":
            raise RecipeError("layers set a pruning amount but prune.method is none: choose magnitude or structured")
        if any(o.bits is not None for o in self.layers) and self.quantize.bits is None:
            raise RecipeError("layers set bits but quantize.bits is none: give the recipe's bits (the default for "
                              "the other layers)")
        r = self.recover
        if r.method != "none" and self.prune.finetune_epochs:
            raise RecipeError("prune.finetune_epochs and recover both retrain: use recover alone")
        if r.schedule == "gradual":
            if self.prune.method != "magnitude":
                raise RecipeError(f"recover.schedule=gradual raises magnitude sparsity step by step: it needs "
                                  f"prune.method magnitude, not {self.prune.method}")
            if r.initial_sparsity >= max([self.prune.amount] + [o.prune or 0 for o in self.layers]):
                raise RecipeError(f"recover.initial_sparsity={r.initial_sparsity} must be below the final "
                                  f"sparsity (prune.amount={self.prune.amount})")
        if r.qat and (self.quantize.bits is None or self.quantize.scheme == "codebook"):
            raise RecipeError("recover.qat trains through an affine b-bit grid: it needs quantize.bits with scheme "
                              "weight-only or dynamic (codebook recipes fine-tune their centroids instead)")

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["layers"] = {o.pattern: o.to_dict() for o in self.layers}
        return {"recipe_version": RECIPE_VERSION, **data}

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace; equal recipes give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def _key_dict(self) -> dict[str, Any]:
        """What the key hashes: the recipe in the oldest version that can express it, so results stores and
        bundles written before a field existed keep matching their recipes."""
        data = self.to_dict()
        del data["recipe_version"]
        if self.layers or self.recover.method != "none":
            return {"recipe_version": 4, **data}
        del data["layers"], data["recover"]
        if self.threads is not None:
            return {"recipe_version": 3, **data}
        del data["threads"]
        if self.runtime != "eager":
            return {"recipe_version": 2, **data}
        del data["runtime"]
        return {"recipe_version": 1, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Recipe":
        if not isinstance(data, dict):
            raise RecipeError(f"a recipe must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        version = data.pop("recipe_version", RECIPE_VERSION)
        if type(version) is not int or version not in READ_VERSIONS:  # true and 1.0 equal 1 in Python; not here
            raise RecipeError(f"recipe_version={version!r} is not supported: this engine reads versions "
                              f"{', '.join(map(str, READ_VERSIONS))}")
        for name, since in (("runtime", 2), ("threads", 3), ("layers", 4), ("recover", 4)):
            if version < since and name in data:
                raise RecipeError(f"recipe has a '{name}' field but recipe_version {version}, which has none: "
                                  f"use recipe_version {RECIPE_VERSION}")
        if "model" not in data:
            raise RecipeError("recipe has no 'model' field")
        return cls(**_only(data, cls, "recipe"))

    @classmethod
    def from_json(cls, text: str) -> "Recipe":
        return cls.from_dict(parse_json(text, "recipe"))

    @classmethod
    def from_fields(cls, model: str, *, prune: float = 0.0, prune_method: str = "magnitude",
                    prune_scope: str = "global", finetune_epochs: int = 0, bits: int | None = None,
                    scheme: str | None = None, granularity: str = "per-channel", group_size: int = 32,
                    precision: str = "fp32", device: str = "cpu", batch_size: int = 1,
                    runtime: str = "eager", threads: int | None = None,
                    layers: dict[str, dict[str, Any]] | None = None,
                    recover: dict[str, Any] | None = None) -> "Recipe":
        """The one way flat controls (CLI flags, dashboard widgets, sweep axes) become a Recipe.

        A zero amount means no pruning whatever the method; `scheme=None` picks the fastest real path."""
        amount = prune
        # Every given value is checked, also those the canonical form then drops (a method at amount 0,
        # a scheme without bits): a typo is refused, never silently ignored.
        _choice("prune.method", prune_method, PRUNE_METHODS)
        _choice("prune.scope", prune_scope, PRUNE_SCOPES)
        Prune("magnitude", 0.5, prune_scope, finetune_epochs)
        if scheme is not None:
            _choice("quantize.scheme", scheme, SCHEMES)
        Quantize(8, "weight-only", granularity, group_size)
        Quantize(8, "weight-only", "per-group", group_size)
        pruned_layers = any(isinstance(o, dict) and o.get("prune") for o in (layers or {}).values())
        keep = amount or pruned_layers
        return cls(model=model,
                   prune=Prune(prune_method if keep else "none", amount, prune_scope,
                               finetune_epochs if keep else 0),
                   quantize=Quantize(bits=bits, scheme=scheme or default_scheme(precision, device),
                                     granularity=granularity, group_size=group_size),
                   precision=precision, device=device, batch_size=batch_size, runtime=runtime, threads=threads,
                   layers=layers or (), recover=recover or Recover())

    @property
    def key(self) -> str:
        """Stable 16-hex-digit hash of the canonical JSON."""
        text = json.dumps(self._key_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def with_(self, **changes: Any) -> "Recipe":
        return replace(self, **changes)

    @property
    def is_baseline(self) -> bool:
        """The uncompressed fp32 model in eager PyTorch: the reference every speed-up and delta is taken against
        (one reference for every runtime, so points of different runtimes compare on one frontier)."""
        return self.prune.method == "none" and self.quantize.bits is None and self.precision == "fp32" \
            and self.runtime == "eager" and not self.layers and self.recover.method == "none"

    def baseline(self) -> "Recipe":
        """This recipe's reference: same model, batch size, device and threads, nothing compressed, eager."""
        return Recipe(model=self.model, device=self.device, batch_size=self.batch_size, threads=self.threads)

    def label(self) -> str:
        """Short human-readable name, e.g. 'structured 50% · int8 dynamic · fp32'."""
        parts = []
        if self.prune.method != "none":
            parts.append(f"{self.prune.method} {self.prune.amount:.0%}"
                         + (f" +{self.prune.finetune_epochs} ft" if self.prune.finetune_epochs else ""))
        if self.quantize.bits is not None:
            parts.append(f"int{self.quantize.bits} {self.quantize.scheme}")
        if self.layers:
            parts.append(f"{len(self.layers)} layer override{'s' if len(self.layers) > 1 else ''}")
        if self.recover.method != "none":
            parts.append(self.recover.label())
        parts.append(self.precision)
        if self.runtime != "eager":
            parts.append(self.runtime)
        if self.threads is not None:
            parts.append(f"{self.threads} thread{'s' if self.threads > 1 else ''}")
        return " · ".join(parts)


def default_scheme(precision: str, device: str) -> str:
    """The fastest real path: int8 activations where the int8 kernel can run, weight-only elsewhere."""
    return "dynamic" if precision == "fp32" and device == "cpu" else "weight-only"


def parse_json(text: str | bytes, what: str) -> Any:
    """json.loads with the failures a hostile file can cause turned into one-line RecipeErrors."""
    if len(text) > MAX_RECIPE_BYTES:
        raise RecipeError(f"{what} is {len(text):,} bytes: too large to be one (limit {MAX_RECIPE_BYTES:,})")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RecipeError(f"{what} is nested too deeply to be one") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise RecipeError(f"{what} is not valid JSON text: {exc}") from None


def _part(value: Any, cls: type, where: str) -> Any:
    """A nested part given as its dataclass or as a JSON object; anything else is refused by name."""
    if isinstance(value, cls):
        return value
    if isinstance(value, dict):
        return cls(**_only(value, cls, where))
    raise RecipeError(f"{where}={value!r:.80} is not allowed: give an object with fields "
                      f"{', '.join(cls.__dataclass_fields__)}")


def _layers(value: Any) -> tuple[LayerOverride, ...]:
    """Overrides given as {pattern: {prune, bits}} (JSON) or LayerOverride values, in canonical (sorted) order."""
    if isinstance(value, dict):
        if len(value) > MAX_LAYER_OVERRIDES:
            raise RecipeError(f"layers has {len(value)} overrides: at most {MAX_LAYER_OVERRIDES}")
        items = []
        for pattern, part in value.items():
            if not isinstance(part, dict):
                raise RecipeError(f"layers[{str(pattern)[:60]!r}]={part!r:.60} is not allowed: give an object with "
                                  "prune and/or bits")
            items.append(LayerOverride(pattern, **_only(part, LayerOverride, f"layers[{str(pattern)[:60]!r}]",
                                                        exclude=("pattern",))))
        value = items
    if not isinstance(value, (list, tuple)) or not all(isinstance(o, LayerOverride) for o in value):
        raise RecipeError(f"layers={value!r:.80} is not allowed: give an object {{layer name or pattern: "
                          "{prune, bits}}")
    patterns = [o.pattern for o in value]
    if len(set(patterns)) != len(patterns):
        raise RecipeError("layers names one pattern twice")
    return tuple(sorted(value, key=lambda o: o.pattern))


def _only(data: dict[str, Any], cls: type, where: str, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """Allow-list the keys of a JSON object against a dataclass's fields."""
    allowed = {f for f in cls.__dataclass_fields__} - set(exclude)
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"{where} has unknown field(s) {', '.join(unknown)}: allowed {', '.join(sorted(allowed))}")
    return data
