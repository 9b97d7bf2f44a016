"""Auxiliary class expansion (SPEC 2.1): the task's C class names plus K - C generic words.

The shipped vocabulary ``vimw/resources/aux_words.txt`` holds common concrete object nouns
(animals, food, tools, vehicles, clothing, plants, places, household objects...), one per line,
lowercase and deduplicated: about 1,500 written for vimw plus the ImageNet-1k class names other
than the dog breeds. Its sha256 is recorded with every adapter and logit cache so that a source
and a target model are always queried with the same K prompts.
"""

from __future__ import annotations

import functools
import hashlib
import random
from collections.abc import Sequence
from importlib import resources

from vimw.errors import DataError, FormatError

DEFAULT_TEMPLATE = "a photo of a {}."
# vimw's default K (task classes + auxiliary words). The reference uses 1024; on the
# Lite0 -> Lite2 benchmark K = 256 scored best on validation and costs 25x less per step
# (benchmarks/results/transfer.md). Pass K explicitly for the reference's size.
DEFAULT_NUM_LOGITS = 256
_WORDS_FILE = "aux_words.txt"


def _normalise(name: str) -> str:
    """The key names are deduplicated on: case-folded, ``_`` as space, single spaces."""
    return " ".join(str(name).replace("_", " ").casefold().split())


@functools.lru_cache(maxsize=1)
def _load() -> tuple[tuple[str, ...], str]:
    try:
        data = resources.files("vimw").joinpath("resources", _WORDS_FILE).read_bytes()
    except (FileNotFoundError, OSError) as exc:  # a broken installation
        raise FormatError(f"vimw's auxiliary word list resources/{_WORDS_FILE} is missing ({exc})") from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FormatError(f"resources/{_WORDS_FILE} is not UTF-8 text") from exc
    words: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        word = line.strip()
        key = _normalise(word)
        if word and not word.startswith("#") and key not in seen:
            seen.add(key)
            words.append(word)
    return tuple(words), hashlib.sha256(data).hexdigest()


def aux_vocabulary() -> tuple[str, ...]:
    """The shipped auxiliary vocabulary, in file order."""
    return _load()[0]


def aux_words_sha256() -> str:
    """sha256 of the shipped word list file (its exact bytes)."""
    return _load()[1]


def build_class_list(
    task_class_names: Sequence[str],
    K: int = DEFAULT_NUM_LOGITS,  # noqa: N803  (the paper's name)
    seed: int = 0,
    *,
    vocabulary: Sequence[str] | None = None,
) -> tuple[list[str], str]:
    """Return ``(names, vocabulary_sha256)``: the C task names first, then K - C auxiliary words.

    The auxiliary words are sampled without replacement with ``seed`` from the vocabulary
    (the shipped list unless ``vocabulary`` is given), skipping any word equal to a task name
    after case-folding and mapping ``_`` to a space (a task with ``"cat"`` never gets ``"Cat"``).
    The same task names, K, seed and vocabulary always give the same list. The returned sha256
    identifies the vocabulary (the shipped file's bytes, or the given words joined by newlines).
    """
    task = [str(n) for n in task_class_names]
    if not task:
        raise DataError("build_class_list: the task has no class names")
    k = int(K)
    if k < len(task):
        raise DataError(f"build_class_list: K={k} is smaller than the number of task classes C={len(task)}")
    if vocabulary is None:
        vocab, sha = _load()
    else:
        vocab = tuple(str(w) for w in vocabulary)
        sha = hashlib.sha256(("\n".join(vocab) + "\n").encode("utf-8")).hexdigest()
    taken = {_normalise(n) for n in task}
    candidates: list[str] = []
    for word in vocab:
        key = _normalise(word)
        if key and key not in taken:
            taken.add(key)
            candidates.append(word)
    need = k - len(task)
    if need > len(candidates):
        raise DataError(
            f"build_class_list: K={k} needs {need} auxiliary words but the vocabulary has only "
            f"{len(candidates)} words distinct from the {len(task)} task names; lower K"
        )
    aux = random.Random(int(seed)).sample(candidates, need)
    return task + aux, sha


def class_list_sha256(class_names: Sequence[str]) -> str:
    """sha256 identifying an ordered list of class names (for caches and manifests)."""
    return hashlib.sha256("\n".join(str(n) for n in class_names).encode("utf-8")).hexdigest()


__all__ = [
    "DEFAULT_NUM_LOGITS",
    "DEFAULT_TEMPLATE",
    "aux_vocabulary",
    "aux_words_sha256",
    "build_class_list",
    "class_list_sha256",
]
