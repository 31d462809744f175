"""The data report of ``prepare-data``: caption lengths in CLIP tokens, plots, one HTML page.

Caption lengths are counted with CLIP's own BPE: the full vocabulary that open_clip ships
(``bpe_simple_vocab_16e6.txt.gz``, the one SDXL's tokenizers use), read into transformers'
``CLIPTokenizer``, or, where open_clip is missing, the 4000-merge vocabulary vendored in
``cover_hpc/assets``, which splits words into more pieces (so its counts run high) and says so.
"""

from __future__ import annotations

import base64
import gzip
import html
import importlib.util
import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cover_hpc.model.encoding import CHUNK_CONTENT, CLIP_WINDOW

CLIP_MERGES = 49152 - 256 - 2  # the merges CLIP uses of open_clip's file (its SimpleTokenizer's cut)
TOP_GENRES = 30


def _open_clip_merges() -> list[str] | None:
    spec = importlib.util.find_spec("open_clip")  # found without importing open_clip (and torch)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz"
    if not path.is_file():
        return None
    lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
    return lines[1 : CLIP_MERGES + 1]


def _vendored_merges() -> list[str]:
    from cover_hpc.assets import clip_vocab_and_merges

    return clip_vocab_and_merges()[1]


def clip_tokenizer() -> tuple[Any, str]:
    """A CLIP BPE tokenizer and a line naming it (the full vocabulary when available)."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import CLIPTokenizer

    merges, name = _open_clip_merges(), "CLIP BPE (49,408 tokens, from open_clip)"
    if merges is None:
        merges = _vendored_merges()
        name = "the vendored 4,000-merge CLIP BPE (open_clip missing; counts run high)"
    symbols = sorted(ByteLevel.alphabet())
    tokens = [*symbols, *(s + "</w>" for s in symbols), *("".join(m.split()) for m in merges)]
    vocab = {token: index for index, token in enumerate(dict.fromkeys([*tokens, "<|startoftext|>", "<|endoftext|>"]))}
    pairs: Any = [tuple(m.split()) for m in merges]  # the BPE model takes (left, right) pairs
    return CLIPTokenizer(vocab=vocab, merges=pairs), name


def caption_tokens(captions: Sequence[str]) -> tuple[list[int], str]:
    """CLIP tokens of each caption, start and end tokens not counted, and the tokenizer's name."""
    if not captions:
        return [], "none (no captions)"
    tokenizer, name = clip_tokenizer()
    encoded = tokenizer.backend_tokenizer.encode_batch(list(captions), add_special_tokens=False)
    return [len(item.ids) for item in encoded], name


def token_summary(counts: Sequence[int], budget: int) -> dict[str, Any]:
    """Median, maximum, and how many captions overflow one 77-token window and the budget."""
    ordered = sorted(counts)
    return {
        "median": ordered[len(ordered) // 2] if ordered else 0,
        "max": ordered[-1] if ordered else 0,
        "over_one_window": sum(1 for c in counts if c > CHUNK_CONTENT),
        "over_budget": sum(1 for c in counts if c > budget),
        "budget": budget,
    }


def genre_counts(genres: Sequence[Sequence[str]]) -> list[tuple[str, int]]:
    """The most common genre tags, each counted once per book, case folded."""
    counter: Counter[str] = Counter()
    for tags in genres:
        counter.update({" ".join(t.split()).lower() for t in tags if t.strip()})
    return sorted(counter.items(), key=lambda item: (-item[1], item[0]))[:TOP_GENRES]


# ----------------------------------------------------------------------------------------------
# Plots: PNG bytes, made the same way each time (no date or version in the file).


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(figure: Any) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight", metadata={"Software": None})
    _pyplot().close(figure)
    return buffer.getvalue()


def sizes_plot(sizes: Sequence[tuple[int, int]], min_side: int) -> bytes:
    """Width against height of the kept covers, and their aspect ratios (height / width)."""
    plt = _pyplot()
    figure, (scatter, histogram) = plt.subplots(1, 2, figsize=(10, 4))
    widths, heights = [w for w, _ in sizes], [h for _, h in sizes]
    scatter.scatter(widths, heights, s=4, alpha=0.4)
    scatter.axvline(min_side, color="grey", linestyle=":", label=f"--min-side {min_side}")
    scatter.axhline(min_side, color="grey", linestyle=":")
    scatter.set(title="image sizes (px)", xlabel="width", ylabel="height")
    scatter.legend(loc="lower right")
    histogram.hist([h / w for w, h in sizes], bins=40)
    histogram.axvline(1152 / 896, color="red", linestyle="--", label="1152 x 896 (training size)")
    histogram.set(title="aspect ratio (height / width)", xlabel="height / width", ylabel="covers")
    histogram.legend()
    return _png(figure)


def tokens_plot(counts: Sequence[int], budget: int, tokenizer: str) -> bytes:
    """Caption lengths in CLIP tokens against one 77-token window and the caption budget."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(10, 4))
    upper = max([*counts, budget]) * 1.05
    axes.hist(counts, bins=[upper * i / 60 for i in range(61)])  # one scale from 0 past the budget
    window = f"one {CLIP_WINDOW}-token window ({CHUNK_CONTENT})"
    axes.axvline(CHUNK_CONTENT, color="orange", linestyle="--", label=window)
    axes.axvline(budget, color="red", linestyle="--", label=f"data.max_caption_tokens ({budget})")
    axes.set(title=f"caption length, {tokenizer}", xlabel="tokens (without start/end)", ylabel="captions")
    axes.legend()
    return _png(figure)


def genres_plot(top: Sequence[tuple[str, int]]) -> bytes:
    """The most common genre tags."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, max(2.0, 0.25 * len(top) + 1)))
    names, counts = [name for name, _ in top][::-1], [count for _, count in top][::-1]
    axes.barh(names, counts)
    axes.set(title=f"{len(top)} most common genres", xlabel="books")
    return _png(figure)


# ----------------------------------------------------------------------------------------------
# The page


def _img(data: bytes, alt: str) -> str:
    return f"<img src='data:image/png;base64,{base64.b64encode(data).decode()}' alt='{html.escape(alt)}'>"


def _rows(pairs: Sequence[Sequence[Any]]) -> str:
    return "".join("<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in row) + "</tr>" for row in pairs)


def render_html(summary: dict[str, Any], plots: dict[str, bytes], shown: int = 200) -> str:
    """The report page: counts, drops by reason, plots, duplicate groups and the first drops."""
    esc = html.escape
    counts = summary["counts"]
    fraction = f"{summary['test_fraction']['asked']} / {summary['test_fraction']['reached']:.4f}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>cover-hpc data report</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}img{max-width:100%}</style></head><body>",
        f"<h1>Data report: {esc(summary['source'])}</h1>",
        f"<p>Format {esc(summary['format'])}; written to {esc(summary['out'])}. Every dropped book, with its "
        "source and reason, and every duplicate group are in <code>prepare.json</code> beside this page.</p>",
        "<h2>Counts</h2><table>",
        _rows(
            [
                ("books in", counts["in"]),
                ("kept", counts["kept"]),
                ("train", counts["train"]),
                ("test", counts["test"]),
                ("test fraction asked / reached", fraction),
                ("dropped", counts["dropped"]),
            ]
        ),
        "</table><h2>Dropped, by reason</h2><table><tr><th>reason</th><th>books</th><th>meaning</th></tr>",
        _rows([(reason, number, summary["reasons"][reason]) for reason, number in counts["dropped_by_reason"].items()]),
        "</table>",
    ]
    titles = {"sizes": "Image sizes and aspect ratios", "tokens": "Caption length", "genres": "Genres"}
    for key, title in titles.items():
        if key in plots:
            parts.append(f"<h2>{title}</h2>{_img(plots[key], title)}")
    tokens = summary.get("caption_tokens")
    if tokens:
        parts.append(f"<p>Median {tokens['median']} tokens, longest {tokens['max']}; {tokens['over_one_window']} "
                     f"captions overflow one {CLIP_WINDOW}-token window (a CLIP score reads only that one), "
                     f"{tokens['over_budget']} overflow data.max_caption_tokens = {tokens['budget']} and are cut "
                     f"in training. Counted with {esc(tokens['tokenizer'])}.</p>")  # fmt: skip
    groups = summary["duplicate_groups"]
    parts.append(f"<h2>Duplicate groups ({len(groups)})</h2><table><tr><th>kind</th><th>kept</th><th>dropped</th></tr>")
    parts.append(_rows([(g["kind"], g["kept"], ", ".join(m["id"] for m in g["dropped"])) for g in groups[:shown]]))
    dropped = summary["dropped"]
    parts.append(f"</table><h2>Dropped books (first {min(shown, len(dropped))} of {len(dropped)})</h2>"
                 "<table><tr><th>id</th><th>source</th><th>reason</th><th>detail</th></tr>")  # fmt: skip
    parts.append(_rows([(d["id"] or "", d["source"], d["reason"], d["detail"]) for d in dropped[:shown]]))
    parts.append("</table></body></html>")
    return "\n".join(parts) + "\n"
