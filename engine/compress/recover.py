"""Recovery: training a compressed model back towards the uncompressed one, as part of its recipe.

One loop serves every method, because they differ only in their loss and in what is held fixed:
- `finetune`: the model's own loss on labelled training data; `distill`: agreement with the uncompressed model
  (Hinton's temperature-scaled KL on logits for classifiers, plus the labels where there are any; for encoders
  scored by fidelity, 1 - cosine of the embeddings plus, where the model offers its layers' states, their
  relative MSE layer by layer, as TinyBERT does), on training inputs that need no labels;
- pruned weights stay zero (their masks are re-applied after every step); a `gradual` schedule raises the
  sparsity from `initial_sparsity` to the final amounts along Zhu & Gupta's (2017) cubic polynomial decay over
  the first 3/4 of the steps, re-masking by magnitude ~20 times;
- `qat` trains through weights fake-quantized onto their b-bit grid with a straight-through estimator;
- codebook (weight-sharing) recipes then train their shared centroids: each centroid's gradient is the sum of
  its weights' gradients (Han et al., 2016), here by autograd through a parametrization.

Written here rather than taken from a library: torch.ao's QAT prepares modules for its own int8 kernels (not
our grids), Torch-Pruning and torch.nn.utils.prune replace parameters when they mask (an optimizer would keep
training the old ones), and no maintained library fine-tunes Deep Compression codebooks. Training is seeded
and runs at the recipe's thread count, so re-creating a recipe (export, `apply`) gives the same weights.
"""
from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from engine.core.axes import SCHEMES
from engine.core.errors import UserError
from engine.core.recipe import Recipe
from engine.core.result import Kernel
from engine.models.registry import ModelSpec

SEED = 1234
PRUNE_SHARE = 0.75  # of the steps, the gradual schedule's ramp; the rest trains at the final sparsity
CODEBOOK_SHARE = 1 / 3  # of the steps, spent on a codebook recipe's centroids
SCHEDULE_UPDATES = 20
LABEL_WEIGHT = 0.5  # distillation with labels: 0.5 KL (teacher) + 0.5 cross-entropy (labels)


def check(recipe: Recipe, spec: ModelSpec) -> None:
    """What the model must offer for the recipe's recovery (a one-line UserError otherwise)."""
    method = recipe.recover.method
    if method == "none":
        return
    if spec.train_batches is None:
        raise UserError(f"recover.method={method} is not available for {spec.name}: it ships no training data "
                        "(a py: model adds train_batches())")
    if method == "finetune" and not spec.train_labelled:
        raise UserError(f"recover.method=finetune needs labelled training data; {spec.name} has an unlabelled "
                        "corpus: use distill")


def _batches(spec: ModelSpec) -> Iterator[tuple[Any, Any]]:
    for epoch in itertools.count():
        empty = True
        for batch in spec.train_batches(epoch):
            empty = False
            yield batch
        if empty:
            raise UserError(f"{spec.name}'s train_batches yielded nothing: recovery has nothing to train on")


def _loss(student: Any, teacher: Any, targets: Any, recipe: Recipe, spec: ModelSpec) -> torch.Tensor:
    if recipe.recover.method == "finetune":
        loss_fn = spec.loss or nn.functional.cross_entropy
        return loss_fn(student, torch.as_tensor(targets))
    if isinstance(student, list):  # an encoder, layer by layer: relative MSE of each layer's states + final cosine
        layers = [((s.float() - t.float()) ** 2).mean() / (t.float() ** 2).mean().clamp(min=1e-12)
                  for s, t in zip(student[:-1], teacher[:-1])]
        final = (1 - nn.functional.cosine_similarity(student[-1].float(), teacher[-1].float(), dim=-1)).mean()
        return final + (sum(layers) / len(layers) if layers else 0.0)
    if spec.metric_kind == "fidelity":  # encoders: agree with the uncompressed embeddings
        return (1 - nn.functional.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()
    t = recipe.recover.temperature
    kl = nn.functional.kl_div(nn.functional.log_softmax(student / t, -1), nn.functional.softmax(teacher / t, -1),
                              reduction="batchmean") * t * t
    if targets is None or not spec.train_labelled:
        return kl
    return (1 - LABEL_WEIGHT) * kl + LABEL_WEIGHT * nn.functional.cross_entropy(student, torch.as_tensor(targets))


def magnitude_masks(weights: dict[str, torch.Tensor], own: dict[str, float], rest: list[str], amount: float,
                    scope: str) -> dict[str, torch.Tensor]:
    """Keep-masks that zero the smallest |w|: `own` layers at their amounts, `rest` at `amount` (one threshold
    over all of them for a global scope). Computed in place of torch.nn.utils.prune, which would replace the
    parameters an optimizer is training."""
    def keep(values: torch.Tensor, frac: float) -> torch.Tensor:
        k = int(round(frac * values.numel()))
        if k <= 0:
            return torch.full_like(values, True, dtype=torch.bool)
        threshold = values.reshape(-1).kthvalue(k).values
        return values > threshold

    masks = {n: keep(weights[n].abs(), a) for n, a in own.items()}
    if rest and scope == "global":
        flat = torch.cat([weights[n].abs().reshape(-1) for n in rest])
        kept, pos = keep(flat, amount), 0
        for n in rest:
            size = weights[n].numel()
            masks[n] = kept[pos:pos + size].reshape(weights[n].shape)
            pos += size
    else:
        masks.update({n: keep(weights[n].abs(), amount) for n in rest})
    return masks


class _FakeQuant(nn.Module):
    def __init__(self, bits: int, group_size: int | None) -> None:
        super().__init__()
        self.bits, self.group_size = bits, group_size

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        from engine.compress.quantize import fake_quantize

        return fake_quantize(w, self.bits, self.group_size)


class _Shared(nn.Module):
    """A weight rebuilt from its layer's trainable codebook (positions and assignments fixed)."""

    def __init__(self, meta: Any) -> None:
        super().__init__()
        self.centroids = nn.Parameter(meta.centroids.clone().float())
        self.register_buffer("positions", meta.positions.long())
        self.register_buffer("assignments", meta.assignments.long())
        self.shape = tuple(meta.shape)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        flat = torch.zeros(w.numel(), dtype=self.centroids.dtype)
        flat = flat.index_put((self.positions,), self.centroids[self.assignments])
        return flat.reshape(self.shape).to(w.dtype)


class _Trainer:
    """The shared loop: seeded order, the recipe's threads, masks re-applied after every step."""

    def __init__(self, model: nn.Module, teacher: nn.Module, recipe: Recipe, spec: ModelSpec) -> None:
        self.model, self.teacher, self.recipe, self.spec = model, teacher, recipe, spec
        self.batches = _batches(spec)
        self.lr = recipe.recover.lr or spec.recover_lr
        self.losses: list[float] = []
        self.teacher_cache: dict[Any, Any] = {}
        distill = recipe.recover.method == "distill" and spec.distill_forward is not None
        self.forward = spec.distill_forward if distill else spec.forward

    def _teacher(self, inputs: Any, key: Any) -> Any:
        """The uncompressed model's outputs; kept per batch where the batches carry a key (a fixed corpus)."""
        if key is not None and key in self.teacher_cache:
            return self.teacher_cache[key]
        with torch.no_grad():
            out = self.forward(self.teacher, inputs)
        if key is not None:
            self.teacher_cache[key] = out
        return out

    def run(self, steps: int, params: list[nn.Parameter], after_step: Any = None) -> None:
        if steps <= 0:
            return
        opt = torch.optim.Adam(params, lr=self.lr, foreach=True)
        self.model.train()
        needs_teacher = self.recipe.recover.method == "distill"
        for step in range(steps):
            batch = next(self.batches)
            inputs, targets = batch[0], batch[1]
            teacher = self._teacher(inputs, batch[2] if len(batch) > 2 else None) if needs_teacher else None
            opt.zero_grad()
            loss = _loss(self.forward(self.model, inputs), teacher, targets, self.recipe, self.spec)
            if not torch.isfinite(loss):
                raise RuntimeError(f"recovery diverged at step {step + 1} (loss {float(loss.detach())}): lower recover.lr")
            loss.backward()
            opt.step()
            if after_step is not None:
                with torch.no_grad():
                    after_step(step)
            self.losses.append(float(loss.detach()))
        self.model.eval()


def recover(model: nn.Module, teacher: nn.Module, recipe: Recipe, spec: ModelSpec, prune_plan: Any,
            threads: int) -> Kernel:
    """Train the pruned `model` in place (phase 1: pruning recovery, gradual schedule, QAT); how, as a Kernel.

    `prune_plan` is (own amounts, rest, scope, final amount) of a magnitude recipe, or None."""
    from engine.compress.quantize import layer_bits

    check(recipe, spec)
    r = recipe.recover
    steps = r.steps - (round(r.steps * CODEBOOK_SHARE) if SCHEMES.get(recipe.quantize.scheme).tunes_centroids else 0)
    previous = torch.get_num_threads()
    torch.manual_seed(SEED)
    torch.set_num_threads(threads)
    trainer = _Trainer(model, teacher, recipe, spec)
    mods = dict(model.named_modules())
    fakes: list[nn.Module] = []
    try:
        with torch.inference_mode(False), torch.enable_grad():
            if r.qat:
                group = recipe.quantize.group_size if recipe.quantize.granularity == "per-group" else None
                from engine.compress.layers import resolve

                for name, bits in layer_bits(model, recipe.quantize, resolve(recipe, model)).items():
                    if not isinstance(mods[name], nn.Embedding):  # lookups are not trained through a grid
                        parametrize.register_parametrization(mods[name], "weight", _FakeQuant(bits, group))
                        fakes.append(mods[name])
            params = _trainable(model, latent=True)
            for p in params:  # only these: a gradient for a frozen table would still cost its full size
                p.requires_grad_(True)
            weights = {n: _weight(mods[n]) for n in (_pruned(prune_plan) if prune_plan else [])}
            masks = {n: w != 0 for n, w in weights.items()}
            ramp = max(1, int(steps * PRUNE_SHARE))
            every = max(1, ramp // SCHEDULE_UPDATES)

            def after_step(step: int) -> None:
                if r.schedule == "gradual" and (step + 1) % every == 0 and step < ramp:
                    masks.update(_scheduled_masks(weights, prune_plan, r.initial_sparsity, (step + 1) / ramp))
                for n, w in weights.items():
                    w.mul_(masks[n])

            trainer.run(steps, params, after_step)
            if r.schedule == "gradual":  # the last update lands on the final sparsity exactly
                with torch.no_grad():
                    masks.update(_scheduled_masks(weights, prune_plan, r.initial_sparsity, 1.0))
                    for n, w in weights.items():
                        w.mul_(masks[n])
    finally:
        for m in fakes:  # keep the trained float weights: the grid is applied to them next
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
        for p in model.parameters():
            p.requires_grad_(False)
        torch.set_num_threads(previous)
    detail = {"method": r.method, "steps": steps, "lr": trainer.lr, "schedule": r.schedule, "qat": r.qat,
              "first_loss": round(trainer.losses[0], 5) if trainer.losses else None,
              "last_loss": round(sum(trainer.losses[-10:]) / len(trainer.losses[-10:]), 5) if trainer.losses else None}
    what = {"finetune": "fine-tuned on labelled training data", "distill": "distilled from the uncompressed model"}
    return Kernel("recover", f"{what[r.method]} ({steps} Adam steps" + (", gradual sparsity" if r.schedule ==
                  "gradual" else "") + (", fake-quantized weights (STE)" if r.qat else "") + ")", detail=detail)


def tune_codebooks(model: nn.Module, teacher: nn.Module, recipe: Recipe, spec: ModelSpec, metas: dict[str, Any],
                   threads: int) -> tuple[Kernel, dict[str, Any]]:
    """Phase 2 of a codebook recipe: train the shared centroids (and the float parameters left), positions and
    assignments fixed; returns the kernel record and the metas with the trained centroids."""
    from engine.compress import codebook

    steps = round(recipe.recover.steps * CODEBOOK_SHARE)
    previous = torch.get_num_threads()
    torch.manual_seed(SEED + 1)
    torch.set_num_threads(threads)
    mods = dict(model.named_modules())
    shared: dict[str, _Shared] = {}
    trainer = _Trainer(model, teacher, recipe, spec)
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for name, meta in metas.items():
                mod = mods[name.removesuffix(".weight")]
                shared[name] = _Shared(meta)
                parametrize.register_parametrization(mod, "weight", shared[name], unsafe=True)
            params = [s.centroids for s in shared.values()]
            params += [p for p in _trainable(model) if all(p is not s.centroids for s in shared.values())]
            for p in params:
                p.requires_grad_(True)
            trainer.run(steps, params)
    finally:
        out = {}
        for name, s in shared.items():
            mod = mods[name.removesuffix(".weight")]
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
            out[name] = dataclasses.replace(metas[name], centroids=s.centroids.detach().clone())
            with torch.no_grad():
                mod.weight.copy_(codebook.dense(out[name]).to(mod.weight.dtype))
        for p in model.parameters():
            p.requires_grad_(False)
        torch.set_num_threads(previous)
    return Kernel("recover", f"codebook centroids fine-tuned ({steps} Adam steps; gradient of a centroid = sum over "
                  "its weights)", detail={"steps": steps, "layers": len(metas),
                                          "last_loss": round(trainer.losses[-1], 5) if trainer.losses else None}), out


def _trainable(model: nn.Module, latent: bool = False) -> list[nn.Parameter]:
    """The parameters recovery trains: all but lookup tables (a step on a 30k-row embedding touches every row,
    which cost MiniLM most of each step, while pruning the encoder leaves the table's rows as they were); the
    float weights behind fake-quantized ones only with `latent` (QAT trains them; a codebook trains its
    centroids instead)."""
    tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    return [p for n, p in model.named_parameters()
            if id(p) not in tables and (latent or not n.endswith("parametrizations.weight.original"))]


def _weight(mod: nn.Module) -> torch.Tensor:
    """The trained tensor behind a (possibly fake-quantized) weight."""
    return mod.parametrizations.weight.original if parametrize.is_parametrized(mod, "weight") else mod.weight


def _pruned(prune_plan: Any) -> list[str]:
    own, rest, _, _ = prune_plan
    return list(own) + list(rest)


def _scheduled_masks(weights: dict[str, torch.Tensor], prune_plan: Any, initial: float, progress: float
                     ) -> dict[str, torch.Tensor]:
    """Masks at `progress` (0-1) of the cubic ramp s_t = s_f + (s_i - s_f)(1 - progress)^3, per layer."""
    own, rest, scope, amount = prune_plan
    frac = (1 - min(progress, 1.0)) ** 3

    def at(final: float) -> float:
        start = min(initial, final)
        return final + (start - final) * frac

    return magnitude_masks(weights, {n: at(a) for n, a in own.items()}, list(rest), at(amount), scope)
