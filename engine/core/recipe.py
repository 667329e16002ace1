"""The Recipe: the one value that defines a point, shared by the UI, sweeps, the store, export and the CLI.

Frozen dataclasses, validated on construction (errors name the field, the value and what is allowed),
canonicalised (values that mean the same recipe compare and hash the same) and round-tripped through
an allow-listed JSON form. `Recipe.key` is the stable hash used as cache, store and file key.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from engine.core.errors import RecipeError

RECIPE_VERSION = 3  # 2 added `runtime` (version 1 reads as "eager"); 3 added `threads` (older: all cores)
READ_VERSIONS = (1, 2, 3)
PRUNE_METHODS = ("none", "magnitude", "structured")
PRUNE_SCOPES = ("global", "layer")
MAX_PRUNE = 0.99
MAX_FINETUNE = 50
BITS = (2, 3, 4, 5, 6, 7, 8)
SCHEMES = ("weight-only", "dynamic")
GRANULARITIES = ("per-channel", "per-group")
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
        if self.amount == 0.0 or self.method == "none":
            if self.method == "none" and self.amount > 0:
                raise RecipeError(f"prune.amount={self.amount} needs prune.method magnitude or structured, not none")
            _set(self, "method", "none")
            _set(self, "scope", "global")
            _set(self, "finetune_epochs", 0)


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
        if self.granularity == "per-channel":
            _set(self, "group_size", 32)
        elif not isinstance(self.group_size, int) or self.group_size not in (8, 16, 32, 64, 128):
            raise RecipeError(f"quantize.group_size={self.group_size!r} is not allowed: choose 8, 16, 32, 64 or 128")


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

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or not self.model or len(self.model) > MAX_MODEL_NAME \
                or not self.model.isprintable():
            raise RecipeError(f"model={str(self.model)[:80]!r} is not allowed: give a registered model name")
        _set(self, "prune", _part(self.prune, Prune, "prune"))
        _set(self, "quantize", _part(self.quantize, Quantize, "quantize"))
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

    # --- serialisation -------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"recipe_version": RECIPE_VERSION, **asdict(self)}

    def to_json(self) -> str:
        """Canonical JSON: sorted keys, no whitespace; equal recipes give equal strings."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    def _key_dict(self) -> dict[str, Any]:
        """What the key hashes: the recipe in the oldest version that can express it, so results stores and
        bundles written before a field existed keep matching their recipes."""
        data = asdict(self)
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
        for name, since in (("runtime", 2), ("threads", 3)):
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
                    runtime: str = "eager", threads: int | None = None) -> "Recipe":
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
        return cls(model=model,
                   prune=Prune(prune_method if amount else "none", amount, prune_scope,
                               finetune_epochs if amount else 0),
                   quantize=Quantize(bits=bits, scheme=scheme or default_scheme(precision, device),
                                     granularity=granularity, group_size=group_size),
                   precision=precision, device=device, batch_size=batch_size, runtime=runtime, threads=threads)

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
            and self.runtime == "eager"

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


def _only(data: dict[str, Any], cls: type, where: str) -> dict[str, Any]:
    """Allow-list the keys of a JSON object against a dataclass's fields."""
    allowed = {f for f in cls.__dataclass_fields__}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise RecipeError(f"{where} has unknown field(s) {', '.join(unknown)}: allowed {', '.join(sorted(allowed))}")
    return data
