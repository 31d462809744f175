"""Vendored data: the first 4000 merges of CLIP's BPE, and the vocabulary built from them the way
CLIP builds its full one (the tiny demo tokenizers and the data report's fallback tokenizer use it)."""

from __future__ import annotations

from importlib import resources

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


MERGES_ASSET = "clip_bpe_merges_4k.txt"


def _bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) reversible byte -> printable character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The tiny CLIP vocabulary, built the way CLIP builds its full one."""
    text = resources.files("cover_hpc.assets").joinpath(MERGES_ASSET).read_text(encoding="utf-8")
    merges = [line for line in text.splitlines() if line and not line.startswith("#")]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab: dict[str, int] = {}
    for token in tokens:
        vocab.setdefault(token, len(vocab))
    return vocab, merges
