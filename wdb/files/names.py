"""What a weight file's name says: its step (by one documented rule) and its name without suffix."""

from __future__ import annotations

import re

#: suffixes a weight file's name ends with, longest first (``.pth.tar`` is timm's).
WEIGHT_SUFFIXES = (
    ".pth.tar",
    ".weights.h5",
    ".safetensors",
    ".msgpack",
    ".keras",
    ".onnx",
    ".gguf",
    ".hdf5",
    ".ckpt",
    ".pth",
    ".bin",
    ".npz",
    ".jit",
    ".tar",
    ".pt",
    ".h5",
)

# a step token: a keyword at the start of the name or after a non-letter, an optional "_", "-" or
# "=", then the number, which must not run on into a letter, digit or decimal ("16k", "7b", "0.1")
_KEYWORDS = {
    "step": ("global_step", "steps", "step"),
    "iter": ("iterations", "iteration", "iters", "iter"),
    "checkpoint": ("checkpoint", "ckpt"),
    "epoch": ("epochs", "epoch"),
}
_TOKEN = {
    kind: re.compile(
        rf"(?:^|(?<=[^A-Za-z]))(?:{'|'.join(words)})[_=\-]?(\d+)(?![A-Za-z0-9]|\.\d)",
        re.IGNORECASE,
    )
    for kind, words in _KEYWORDS.items()
}
_BARE = re.compile(r"^\d+$")


def strip_suffix(name: str) -> str:
    """``alex.pth`` → ``alex``; ``checkpoint-7.pth.tar`` → ``checkpoint-7``; other names as is."""
    low = name.lower()
    for suffix in WEIGHT_SUFFIXES:
        if low.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    head, dot, tail = name.rpartition(".")
    return head if dot and head and re.search("[A-Za-z]", tail) else name


def step_token(name: str) -> int | None:
    """The training step a file or folder name states, or None when it states none.

    The rule (one for all of wdb): a name states a step only through a **step token** or by
    being a **bare number**. A step token is one of the keywords ``step`` (``global_step``,
    ``steps``), ``iter`` (``iteration``), ``checkpoint`` / ``ckpt``, ``epoch``, at the start of
    the name or after a non-letter, then an optional ``_``, ``-`` or ``=``, then digits that do not
    run on into a letter, digit or decimal: ``step_12`` → 12, ``iter-500`` → 500,
    ``checkpoint-2000`` → 2000, ``ckpt_7`` → 7, ``epoch_012`` → 12, ``epoch=3`` → 3. When a name
    holds several kinds the first kind in that order wins, so Lightning's ``epoch=3-step=20`` is
    step 20 (its global step); of two tokens of one kind the last wins. A bare number is a stem
    that is all digits (``7.pt`` → 7). Every other number is a name, not a step: ``model_16k``,
    ``v0.1``, ``op15``, ``resnet50``, ``llama-7b``, ``fp16``, ``lin_0``, ``timestep_5``.
    ``name`` may carry a suffix (``epoch_012.pt``); :func:`strip_suffix` removes it first.
    """
    stem = strip_suffix(name)
    if _BARE.match(stem):
        return int(stem)
    for pattern in _TOKEN.values():
        found = pattern.findall(stem)
        if found:
            return int(found[-1])
    return None
