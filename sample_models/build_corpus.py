"""Rebuild `minilm_corpus.txt`, the unlabelled sentences for distilling a compressed all-MiniLM-L6-v2.

Why: distillation (student embeddings pulled towards the fp32 teacher's) needs a few thousand real,
varied English sentences that are not the evaluation set, or the fidelity score would be inflated.
No data set can be downloaded at run time here, so the corpus is cut from text already on disk and
committed; this script only exists to rebuild it the same way. Stdlib only.

Sources (both real prose, nothing template-generated):

1. WordNet 3.0 example sentences (the quoted usage examples in the glosses), about 90% of the corpus.
   Debian/Ubuntu package `wordnet-base`, files /usr/share/wordnet/data.{noun,verb,adj,adv}.
   Install: `apt-get install --no-install-recommends wordnet-base` (data only). Licence: the WordNet 3.0 licence
   (permissive, BSD-like), whose notice must travel with every copy, modified or not:

       WordNet 3.0 Copyright 2006 by Princeton University.  All rights reserved.
       THIS SOFTWARE AND DATABASE IS PROVIDED "AS IS" AND PRINCETON UNIVERSITY MAKES NO
       REPRESENTATIONS OR WARRANTIES, EXPRESS OR IMPLIED.  BY WAY OF EXAMPLE, BUT NOT LIMITATION,
       PRINCETON UNIVERSITY MAKES NO REPRESENTATIONS OR WARRANTIES OF MERCHANT-ABILITY OR FITNESS
       FOR ANY PARTICULAR PURPOSE OR THAT THE USE OF THE LICENSED SOFTWARE, DATABASE OR
       DOCUMENTATION WILL NOT INFRINGE ANY THIRD PARTY PATENTS, COPYRIGHTS, TRADEMARKS OR OTHER
       RIGHTS.  The name of Princeton University or Princeton may not be used in advertising or
       publicity pertaining to distribution of the software and/or database.  Title to copyright
       in this software, database and any associated documentation shall at all times remain with
       Princeton University and LICENSEE agrees to preserve same.

   (Full text: /usr/share/doc/wordnet-base/copyright.)

2. Python reference-manual prose, about 10%: the standard library module `pydoc_data.topics`
   (file Lib/pydoc_data/topics.py of CPython, no install needed). Licence: PSF License Agreement
   (the Python documentation licence). Its text follows the Python version, so the committed corpus
   was built with the version named in its header; another version gives a slightly different mix.

Processing: examples are kept only if they read as a clause (a pronoun subject or a common verb
form), have 6-40 words, and carry no code-like characters; WordNet ones get a capital and a full
stop. Near-duplicates (case and punctuation ignored) are dropped, and so is anything equal to, or
sharing its first six words with, an evaluation sentence in `minilm_sentences.txt`. Sentences on
the evaluation topics (travel, food, sport, technology, weather, work, health, nature, money,
culture) are preferred; order is by a SHA-1 of each sentence, so the output is deterministic.

Run from the repository root: `python -m sample_models.build_corpus`.
"""
from __future__ import annotations

import hashlib
import platform
import re
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path

from sample_models.minilm import CORPUS_FILE, sentences

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
WORDNET_TARGET = 2700
PYDOC_TARGET = 300
MIN_WORDS, MAX_WORDS = 6, 40
PREFIX_WORDS = 6

# Words that mark a clause (so noun phrases such as "a man of great energy" are left out).
_CLAUSE_WORDS = frozenset(
    """i you he she we they it there this that these those people everyone nobody someone
    is are was were be been being am has have had do does did will would can could should
    shall may might must won't can't don't doesn't didn't isn't wasn't aren't weren't
    let let's please""".split()
)
_TOPIC_WORDS = frozenset(
    """travel trip train bus car taxi flight plane airport ship boat ferry road street city
    town country village holiday vacation hotel ticket station journey drive drove driving
    food eat ate eating dinner lunch breakfast meal cook cooked cooking bread cake meat fish
    fruit apple wine beer coffee tea milk soup salad egg eggs sugar salt kitchen restaurant
    sport game games team match ball football baseball tennis golf race ran run running swim
    player players won win lost score season coach
    computer computers phone telephone machine software program data internet network
    engine electric electricity radio television camera
    weather rain snow wind storm sun sunny cold hot warm winter summer spring autumn fog ice
    cloud clouds sky temperature
    work job office boss company business worker workers employees manager meeting factory
    health doctor hospital patient patients medicine disease ill illness sick pain heart
    exercise sleep healthy diet nurse
    nature tree trees forest river sea lake mountain mountains garden flowers flower bird
    birds animal animals dog dogs cat horse field farm water
    money price prices pay paid bank buy bought sell sold market cost costs dollars tax
    taxes income rich poor stock stocks
    music song songs book books novel film movie art artist museum theater theatre play
    painting poem poetry concert dance church school""".split()
)
# Leave out examples on topics that would be unwelcome in a committed data file.
_BLOCK_WORDS = frozenset(
    """sex sexual sexually fondled masturbate prostitute prostitutes whore rape raped nigger
    negro negroes jew jews fag faggot homosexual queer slut bitch bastard damn hell kill killed
    murder murdered suicide""".split()
)
_CODE_CHARS = re.compile(r"[`*_=()\[\]{}<>|\\/#@~^$%\"\t;:]|\.\.|--|\w\.\w|\d")
_QUOTED = re.compile(r'"([^"]+)"')
_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def norm_key(text: str) -> str:
    """Case- and punctuation-insensitive key, used to drop near-duplicates."""
    return " ".join(words(text))


def stable_order(items: Iterable[str]) -> list[str]:
    return sorted(items, key=lambda s: hashlib.sha1(s.encode("utf-8")).hexdigest())


def wordnet_examples(root: Path = WORDNET_DIR) -> Iterator[str]:
    """The quoted usage examples from the gloss of every synset, in file order."""
    for name in WORDNET_FILES:
        with (root / name).open(encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith("  ") or " | " not in line:  # licence header / no gloss
                    continue
                yield from _QUOTED.findall(line.split(" | ", 1)[1])


def as_sentence(example: str) -> str | None:
    """A WordNet example as a capitalised sentence, or None when it is unfit for the corpus."""
    text = " ".join(example.split())
    if _CODE_CHARS.search(text) or not text[:1].isalpha():
        return None
    toks = words(text)
    if not MIN_WORDS <= len(text.split()) <= MAX_WORDS or _BLOCK_WORDS & set(toks):
        return None
    if not _CLAUSE_WORDS & set(toks) and not any(t.endswith("ed") for t in toks[1:]):
        return None
    text = text[0].upper() + text[1:]
    return text if text[-1] in ".!?" else text + "."


def pydoc_sentences() -> Iterator[str]:
    """Plain-prose sentences of the Python reference topics bundled with the interpreter."""
    from pydoc_data.topics import topics

    for key in sorted(topics):
        for para in re.split(r"\n\s*\n", topics[key]):
            lines = para.split("\n")
            # A definition-list term ("Bytes") sits above its more-indented description.
            indents = [len(line) - len(line.lstrip()) for line in lines[:2]]
            if len(indents) == 2 and indents[0] < indents[1]:
                lines = lines[1:]
            flat = " ".join(" ".join(lines).split())
            for sent in _SENT_SPLIT.split(flat):
                n = len(sent.split())
                prose = sent[:1].isupper() and sent.endswith(".") and not _CODE_CHARS.search(sent)
                if prose and MIN_WORDS <= n <= MAX_WORDS:
                    yield sent


def pick(candidates: Iterable[str], target: int, seen: set[str], banned_prefixes: set[str]) -> list[str]:
    """Up to `target` new sentences, on-topic ones first; marks what it takes in `seen`."""
    fresh: dict[str, str] = {}
    for sent in candidates:
        key = norm_key(sent)
        if key in seen or key in fresh or " ".join(key.split()[:PREFIX_WORDS]) in banned_prefixes:
            continue
        fresh[key] = sent
    ordered = stable_order(fresh.values())
    on_topic = [s for s in ordered if _TOPIC_WORDS & set(words(s))]
    off_topic = [s for s in ordered if not _TOPIC_WORDS & set(words(s))]
    chosen = (on_topic + off_topic)[:target]
    seen.update(norm_key(s) for s in chosen)
    return chosen


def build() -> list[str]:
    evaluation = sentences()
    seen = {norm_key(s) for s in evaluation}
    banned = {" ".join(norm_key(s).split()[:PREFIX_WORDS]) for s in evaluation}
    wordnet = pick(filter(None, map(as_sentence, wordnet_examples())), WORDNET_TARGET, seen, banned)
    python_docs = pick(pydoc_sentences(), PYDOC_TARGET, seen, banned)
    return stable_order(wordnet + python_docs)


def main() -> int:
    corpus = build()
    header = [
        "# Unlabelled sentences for distilling a compressed all-MiniLM-L6-v2 from its fp32 self; never used for evaluation.",
        "# Sources: WordNet 3.0 usage examples (Debian wordnet-base, /usr/share/wordnet/data.*; WordNet 3.0 licence) and",
        f"# Python {platform.python_version()} reference prose (stdlib pydoc_data.topics; PSF licence). Disjoint from minilm_sentences.txt.",
        "# WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved. Provided AS IS; licence text in build_corpus.py.",
        f"# {len(corpus)} sentences, one per line. Rebuild: apt-get install wordnet-base && python -m sample_models.build_corpus",
    ]
    CORPUS_FILE.write_text("\n".join(header + corpus) + "\n", encoding="utf-8")
    print(f"wrote {len(corpus)} sentences to {CORPUS_FILE}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
