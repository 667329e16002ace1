"""Loading Hugging Face Transformers folders safely: no remote code, no pickle, no prompt, offline by default.

Transformers would execute a folder's own Python (`auto_map`) after asking on stdin, and reads pickled
`pytorch_model.bin` checkpoints; both are refused here before Transformers sees the folder.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from engine.core.errors import UserError
from engine.core.recipe import parse_json

MAX_CONFIG_BYTES = 1_000_000
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[\w.-]+)?")


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise UserError(f"model folder {folder} does not exist or is not a folder")
    config = folder / "config.json"
    if not config.is_file():
        raise UserError(f"{folder} is not a Transformers model folder: it has no config.json")
    for name in ("config.json", "tokenizer_config.json"):
        path = folder / name
        if not path.is_file():
            continue
        if path.stat().st_size > MAX_CONFIG_BYTES:
            raise UserError(f"{path} is too large to be a configuration file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise UserError(f"{path} is not valid JSON: {str(exc)[:120]}") from None
        data = parse_json(text, str(path), limit=None)  # its size is bounded above
        if not isinstance(data, dict):
            raise UserError(f"{path} is not a configuration (expected a JSON object)")
        if "auto_map" in data:
            raise UserError(f"{path} asks to run the folder's own Python code (auto_map): refused; "
                            "this tool never executes model code it did not ship")
    if not any(folder.glob("*.safetensors")):
        pickled = [p.name for p in folder.glob("*.bin")] + [p.name for p in folder.glob("*.pt*")]
        hint = (f" It holds only pickle checkpoints ({', '.join(pickled[:3])}): convert them once, on a machine you "
                "trust, with `AutoModel.from_pretrained(folder).save_pretrained(folder, safe_serialization=True)`."
                if pickled else "")
        raise UserError(f"{folder} has no .safetensors weights.{hint}")


def resolve(source: str) -> str:
    """A local folder (checked) or, only where the network is allowed, a hub id."""
    try:
        path = Path(source).expanduser()
    except RuntimeError:  # "~someone" with no such user
        raise UserError(f"model folder {source} does not exist") from None
    if path.exists():
        _check_folder(path)
        return str(path)
    if not HUB_ID.fullmatch(source):
        raise UserError(f"model folder {source} does not exist")
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise UserError(f"{source!r} is not a local folder, and hub downloads are off (HF_HUB_OFFLINE=1): "
                        "give a folder, or allow the network with HF_HUB_OFFLINE=0")
    return source


def _kwargs(source: str) -> dict[str, Any]:
    return {"trust_remote_code": False, "local_files_only": Path(source).exists()}


def load_model(source: str, auto_class: Any = None) -> Any:
    """`auto_class.from_pretrained` (default AutoModel) with safetensors only and no remote code."""
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    resolved = resolve(source)
    try:
        return (auto_class or AutoModel).from_pretrained(resolved, use_safetensors=True, **_kwargs(resolved)).eval()
    except Exception as exc:  # noqa: BLE001  (a user's folder can break Transformers in many ways: say which, once)
        raise UserError(f"could not load the model from {source!r}: {_first_line(exc)}") from None


def load_tokenizer(source: str) -> Any:
    from transformers import AutoTokenizer

    resolved = resolve(source)
    try:
        return AutoTokenizer.from_pretrained(resolved, **_kwargs(resolved))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"could not load the tokenizer from {source!r}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200] if text else ''}"


def load_config(source: str) -> dict[str, Any]:
    """The folder's config.json as data (checked by `resolve`: no remote code)."""
    folder = Path(resolve(source))
    return parse_json((folder / "config.json").read_text(encoding="utf-8"), str(folder / "config.json"), limit=None)


# --- what the engine needs from a Transformers model ------------------------------------------------------
def mean_pooled(model: Any, inputs: dict[str, Any]) -> Any:
    """Mean-pooled, L2-normalised sentence embeddings (the sentence-transformers recipe)."""
    import torch

    hidden = model(**inputs).last_hidden_state
    mask = inputs["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def layer_states(model: Any, inputs: dict[str, Any]) -> list[Any]:
    """Every layer's hidden states at the real (unpadded) tokens, then the pooled embedding: what distillation of
    an encoder matches layer by layer (structured pruning keeps the hidden size, so they compare one to one)."""
    import torch

    out = model(**inputs, output_hidden_states=True)
    keep = inputs["attention_mask"].bool()
    states = [h[keep] for h in out.hidden_states[1:]]
    mask = inputs["attention_mask"].unsqueeze(-1).to(out.last_hidden_state.dtype)
    pooled = (out.last_hidden_state * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return states + [torch.nn.functional.normalize(pooled.float(), dim=-1)]


def logits(model: Any, inputs: dict[str, Any]) -> Any:
    return model(**inputs).logits


def fidelity_score(outputs: Any, reference: Any, k: int = 5) -> dict[str, float]:
    """Mean cosine similarity of embeddings to the uncompressed model's, and how much of each sentence's top-k
    neighbourhood survives (what a retrieval system would notice)."""
    out, ref = outputs.float(), reference.float()
    cos = (out * ref).sum(-1).mean().item()

    def topk(e: Any) -> Any:
        sim = e @ e.T
        sim.fill_diagonal_(-2.0)
        return sim.topk(min(k, len(e) - 1), dim=1).indices

    a, b = topk(out), topk(ref)
    overlap = sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(a, b)) / max(a.numel(), 1)
    return {"accuracy": cos, f"top{k}_retrieval_overlap": overlap}


_PROJECTIONS = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"))  # BERT-style, and ViT/LLaMA-style names
_BACK_TO_HIDDEN = ("output.dense", "o_proj", "out_proj", "fc2")  # layers whose outputs are the residual stream


def _qkv(module: Any) -> tuple[Any, Any, Any] | None:
    heads = getattr(module, "num_attention_heads", getattr(module, "num_heads", None))
    for names in _PROJECTIONS:
        if isinstance(heads, int) and all(hasattr(module, n) for n in names):
            return tuple(getattr(module, n) for n in names)  # type: ignore[return-value]
    return None


def transformer_structured(model: Any) -> tuple[dict[str, Any], Any]:
    """Torch-Pruning arguments for an encoder laid out as BERT's or ViT's (self-attention modules holding query,
    key and value projections and their head count; projections back to the hidden size named as in
    _BACK_TO_HIDDEN): prune attention heads and FFN channels, keep the hidden size (embeddings, residual stream
    and head stay comparable), and the fix-up that records the heads left. A model without such attention gets
    Torch-Pruning's plain dependency graph."""
    base = getattr(model, "base_model", model)
    attention = {m: qkv for m in base.modules() if (qkv := _qkv(m)) is not None}
    if not attention:
        return {}, None
    num_heads = {lin: getattr(att, "num_attention_heads", getattr(att, "num_heads", None))
                 for att, qkv in attention.items() for lin in qkv}
    ignored = [m for n, m in base.named_modules()
               if n == "embeddings" or n == "pooler" or n.endswith(_BACK_TO_HIDDEN)]

    def finalize(pruned: Any, pruner: Any) -> None:  # `pruned` is `model`, pruned in place
        for att, (query, _, _) in attention.items():
            heads = pruner.num_heads[query]
            for attr in ("num_attention_heads", "num_heads"):
                if hasattr(att, attr):
                    setattr(att, attr, heads)
            if hasattr(att, "all_head_size"):
                att.all_head_size = heads * att.attention_head_size

    def output(out: Any) -> Any:
        return out.logits if hasattr(out, "logits") else out.last_hidden_state

    kwargs = {"num_heads": num_heads, "prune_num_heads": True, "prune_head_dims": False,
              "ignored_layers": ignored, "output_transform": output}
    return kwargs, finalize
