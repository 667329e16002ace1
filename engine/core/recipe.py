"""The Recipe: the one value that defines a point, shared by the UI, sweeps, the store, export and the CLI.

Frozen dataclasses, validated on construction (errors name the field, the value and what is allowed),
canonicalised (values that mean the same recipe compare and hash the same) and round-tripped through
an allow-listed JSON form. `Recipe.key` is the stable hash used as cache, store and file key.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
from collections.abc import Hashable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable

from engine.core.axes import PRUNE_METHODS, RUNTIMES, SCHEMES
from engine.core.errors import RecipeError
from engine.core.registry import Registry

# 2 added `runtime` (version 1 reads as "eager"); 3 added `threads` (older: all cores); 4 added per-layer
# overrides (`layers`) and recovery (`recover`); older versions read as none of either.
RECIPE_VERSION = 4
READ_VERSIONS = (1, 2, 3, 4)
PRUNE_SCOPES = ("global", "layer")
MAX_PRUNE = 0.99
MAX_FINETUNE = 50
BITS = (2, 3, 4, 5, 6, 7, 8)
GRANULARITIES = ("per-channel", "per-group", "per-layer")
RECOVER_METHODS = ("none", "finetune", "distill")
SCHEDULES = ("one-shot", "gradual")
MAX_STEPS = 20_000
MAX_LAYER_OVERRIDES = 256
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICES = ("cpu", "cuda")
# PRUNE_METHODS, SCHEMES and RUNTIMES (imported above) are registries, filled by the modules that implement
# them (engine.compress.methods, engine.compress.schemes, engine.runtimes); `_choice` reads their names.
MAX_THREADS = 1024
MAX_BATCH = 4096
MAX_MODEL_NAME = 300
MAX_RECIPE_BYTES = 1_000_000  # a recipe file is a few hundred bytes; anything this large is not one


def _choice(field_name: str, value: Any, allowed: tuple | Registry) -> None:
    if not isinstance(value, Hashable) or value not in allowed:
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
        runtime = RUNTIMES.get(self.runtime)
        if self.device not in runtime.devices:
            raise RecipeError(f"runtime={self.runtime} with device={self.device} cannot run: {runtime.devices_note}; "
                              f"use device {' or '.join(runtime.devices)} or runtime eager")
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
    def from_fields(cls, model: str, *, recover: dict[str, Any] | None = None, **given: Any) -> "Recipe":
        """The one way flat controls (CLI flags, dashboard widgets, sweep axes) become a Recipe.

        The keywords and their defaults are FIELDS' (those without a `part`); `recover` is the object of the
        fields whose part is "recover". A zero amount means no pruning whatever the method; `scheme=None` picks
        the fastest real path."""
        unknown = sorted(set(given) - set(FLAT_DEFAULTS))
        if unknown:
            raise RecipeError(f"unknown recipe field(s) {', '.join(unknown)}: allowed {', '.join(FLAT_DEFAULTS)}")
        f = {**FLAT_DEFAULTS, **given}
        # Every given value is checked, also those the canonical form then drops (a method at amount 0,
        # a scheme without bits): a typo is refused, never silently ignored.
        _choice("prune.method", f["prune_method"], PRUNE_METHODS)
        _choice("prune.scope", f["prune_scope"], PRUNE_SCOPES)
        Prune("magnitude", 0.5, f["prune_scope"], f["finetune_epochs"])
        if f["scheme"] is not None:
            _choice("quantize.scheme", f["scheme"], SCHEMES)
        Quantize(8, "weight-only", f["granularity"], f["group_size"])
        Quantize(8, "weight-only", "per-group", f["group_size"])
        layers = f["layers"] or {}
        keep = f["prune"] or any(isinstance(o, dict) and o.get("prune") for o in layers.values())
        return cls(model=model,
                   prune=Prune(f["prune_method"] if keep else "none", f["prune"], f["prune_scope"],
                               f["finetune_epochs"] if keep else 0),
                   quantize=Quantize(bits=f["bits"], scheme=f["scheme"] or default_scheme(f["precision"], f["device"]),
                                     granularity=f["granularity"], group_size=f["group_size"]),
                   precision=f["precision"], device=f["device"], batch_size=f["batch_size"], runtime=f["runtime"],
                   threads=f["threads"], layers=layers or (), recover=recover or Recover())

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


def names(axis: str) -> tuple[str, ...]:
    """The names a registry-backed axis allows ("runtime", "prune_method", "scheme"), in registration order:
    the field table's choices (the CLI's help) read them here, when asked (a registry fills on first use)."""
    return {"runtime": RUNTIMES, "prune_method": PRUNE_METHODS, "scheme": SCHEMES}[axis].names()


def parse_amount(text: str) -> float:
    """A number typed as text (a flag's value); ValueError names the text."""
    try:
        return float(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not a number") from None


def parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not an integer") from None


def parse_bits(text: str) -> int | None:
    if text.lower() in ("none", "fp"):
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{text[:40]!r} is not allowed: choose none or an integer {BITS[0]} to {BITS[-1]}") from None


def parse_layers(text: str) -> dict[str, Any]:
    """Per-layer overrides typed as a JSON object."""
    try:
        value = parse_json(text, "--layers")
    except RecipeError as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(value, dict):
        raise ValueError("give a JSON object {layer name or pattern: {prune, bits}}")
    return value


@dataclass(frozen=True)
class Field:
    """One flat control of a recipe. The CLI's flags, `from_fields`' defaults and a sweep's axes are generated
    from FIELDS, so a field is declared once."""

    name: str  # the keyword of Recipe.from_fields (or, with `part`, the key in that part's object)
    default: Any
    help: str
    parse: Callable[[str], Any] | None = str  # a flag's text -> value (ValueError names the text); None: a switch
    choices: Callable[[], tuple[str, ...]] | None = None  # allowed names, read when asked (registries fill late)
    flag: str = ""  # default: --name with dashes
    part: str | None = None  # "recover": a key of from_fields' `recover` object
    grid: str | None = None  # expand_grid's keyword, where a sweep takes this field
    many: bool = False  # a sweep takes a comma-separated list of values (an axis of its grid)
    metavar: str | None = None

    @property
    def option(self) -> str:
        return self.flag or "--" + self.name.replace("_", "-")

    @property
    def dest(self) -> str:
        return self.option[2:].replace("-", "_")

    def describe(self) -> str:
        """The help text, with the allowed names where the field has them."""
        if self.choices is None:
            return self.help
        allowed = f"one of {', '.join(self.choices())}"
        return f"{self.help}: {allowed}" if self.help else allowed


def _methods() -> tuple[str, ...]:
    """The prune methods that remove something (a flag's amount 0 already means no pruning)."""
    return tuple(name for name, method in PRUNE_METHODS.items() if method.prunes)


FIELDS: tuple[Field, ...] = (
    Field("prune", 0.0, "fraction of weights/channels to remove, 0-0.99", parse_amount, grid="prune", many=True),
    Field("prune_method", "magnitude", "how: magnitude zeroes weights, structured removes channels/heads",
          choices=_methods, grid="methods", many=True),
    Field("prune_scope", "global", "amounts over the whole model or per layer", choices=lambda: PRUNE_SCOPES),
    Field("finetune_epochs", 0, "retrain this many epochs after pruning", parse_int, grid="finetune_epochs"),
    Field("bits", None, f"none or {BITS[0]}-{BITS[-1]}", parse_bits, grid="bits", many=True),
    Field("scheme", None, "default: dynamic (a real int8 kernel) at fp32 on cpu, weight-only otherwise",
          choices=lambda: names("scheme"), grid="schemes", many=True),
    Field("granularity", "per-channel", "", choices=lambda: GRANULARITIES, grid="granularity"),
    Field("group_size", 32, "weights per scale with per-group", parse_int, grid="group_size"),
    Field("precision", "fp32", "", choices=lambda: PRECISIONS, grid="precisions", many=True),
    Field("device", "cpu", "", choices=lambda: DEVICES, grid="device"),
    Field("batch_size", 1, "inputs per call", parse_int, grid="batch_size", many=True),
    Field("runtime", "eager", "", choices=lambda: names("runtime"), grid="runtimes", many=True),
    Field("threads", None, "intra-op threads (default: physical cores)", parse_int, grid="threads", many=True),
    Field("layers", None, 'per-layer overrides, e.g. \'{"fc1": {"prune": 0.2}, "conv*": {"bits": "none"}}\' (exact '
          "names win over patterns; see `sensitivity` for the names)", parse_layers, metavar="JSON"),
    Field("method", Recover.method, "retrain after compressing", choices=lambda: RECOVER_METHODS, flag="--recover",
          part="recover"),
    Field("steps", Recover.steps, "optimizer steps of the recovery", parse_int, flag="--recover-steps",
          part="recover"),
    Field("lr", Recover.lr, "learning rate (default: the model's)", parse_amount, flag="--recover-lr",
          part="recover"),
    Field("schedule", Recover.schedule, "gradual: magnitude sparsity raised from --initial-sparsity along a cubic "
          "ramp", choices=lambda: SCHEDULES, part="recover"),
    Field("initial_sparsity", Recover.initial_sparsity, "with --schedule gradual: the sparsity the ramp starts from",
          parse_amount, part="recover"),
    Field("qat", Recover.qat, "train through fake-quantized weights (straight-through)", None, part="recover"),
    Field("temperature", Recover.temperature, "distillation temperature (classifiers)", parse_amount,
          part="recover"),
)
FLAT_DEFAULTS: dict[str, Any] = {f.name: f.default for f in FIELDS if f.part is None}


class _DuplicateKey(ValueError):
    """Raised inside the parser (which knows no file name); parse_json names the file."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object that names a key twice is refused: parsers disagree on which value wins, so a file could
    say one thing to this tool and another to whoever checks it."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(key)
        out[key] = value
    return out


def parse_json(text: str | bytes, what: str, limit: int | None = MAX_RECIPE_BYTES) -> Any:
    """json.loads for every JSON this tool reads, with the failures a hostile file can cause (a duplicated key
    included) turned into one-line RecipeErrors. `limit` bounds the size (None: the caller bounded it)."""
    if limit is not None and len(text) > limit:
        raise RecipeError(f"{what} is {len(text):,} bytes: too large to be one (limit {limit:,})")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as exc:
        raise RecipeError(f"{what} names the key {str(exc)[:60]!r} twice: keep only one") from None
    except json.JSONDecodeError as exc:
        raise RecipeError(f"{what} is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RecipeError(f"{what} is not valid JSON: nested too deeply") from None
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
