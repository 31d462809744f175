"""The tiny SDXL model and the demo covers, through the real loading paths, offline."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cover_hpc.demo.covers import make_demo_data
from cover_hpc.store.captions import Book, book_caption


def digest(folder: Path) -> dict[str, str]:
    return {
        str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
        if path.is_file()
    }


@pytest.mark.tiny
def test_tiny_model_loads_and_generates(tiny_model_dir: Path) -> None:
    import torch
    from diffusers import StableDiffusionXLPipeline

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_model_dir)
    assert pipe.unet.config.addition_embed_type == "text_time"
    assert pipe.vae_scale_factor == 8
    assert type(pipe.scheduler).__name__ == "EulerDiscreteScheduler"
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    generator = torch.Generator().manual_seed(0)
    image = pipe("a book cover", num_inference_steps=4, height=64, width=64, generator=generator, output_type="np")
    assert image.images.shape == (1, 64, 64, 3)
    assert size_mb(tiny_model_dir) < 20


def size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


@pytest.mark.tiny
def test_tiny_tokenizers_are_clip_bpe(tiny_model_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer_2")
    ids = tokenizer("A photo of a cat").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "a photo of a cat"
    assert tokenizer.model_max_length == 77
    padded = tokenizer_2("cat", padding="max_length", max_length=8).input_ids
    assert padded[3:] == [tokenizer_2.convert_tokens_to_ids("!")] * 5  # SDXL's second tokenizer pads with "!"
    long_caption = book_caption(Book(book_id="1", title="t", description="word " * 120))
    assert len(tokenizer(long_caption).input_ids) > 77


@pytest.mark.tiny
def test_tiny_model_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    from cover_hpc.demo.tiny_model import build_tiny_sdxl

    assert digest(build_tiny_sdxl(tmp_path / "again", seed=0)) == digest(tiny_model_dir)


def test_demo_data_loads_as_imagefolder(demo_data_dir: Path) -> None:
    from datasets import load_dataset

    for split in ("train_set", "test_set"):
        rows = [json.loads(line) for line in (demo_data_dir / split / "metadata.jsonl").read_text().splitlines()]
        dataset = load_dataset("imagefolder", data_dir=str(demo_data_dir / split), split="train")
        assert len(dataset) == len(rows) > 0
        by_caption = {row["text"]: row for row in rows}
        for item in dataset:
            assert item["text"] in by_caption  # captions intact
            width, height = item["image"].size
            assert width < height and width >= 256  # portrait covers
            row = by_caption[item["text"]]
            book = Book.from_json({**row, "id": row["book_id"]})
            assert book_caption(book) == item["text"]
    assert (demo_data_dir / "test_set" / "metadata.jsonl").read_text().count("\n") == 3  # 12.5% of 24


def test_demo_data_books_file(demo_data_dir: Path) -> None:
    lines = (demo_data_dir / "books.jsonl").read_text().splitlines()
    books = [Book.from_json(json.loads(line)) for line in lines]
    assert len(books) == 3 + 4 and len({b.book_id for b in books}) == len(books)
    train_ids = {json.loads(line)["book_id"] for line in (demo_data_dir / "train_set/metadata.jsonl").open()}
    assert not train_ids & {b.book_id for b in books}  # books for inference are held out
    assert all(b.title and b.publisher and b.genres and b.description for b in books)


def test_demo_data_is_deterministic(tmp_path: Path, demo_data_dir: Path) -> None:
    again = make_demo_data(tmp_path / "again", num_books=24, extra_books=4).root
    assert digest(again) == digest(demo_data_dir)
    other = make_demo_data(tmp_path / "other", num_books=24, extra_books=4, seed=7).root
    assert digest(other) != digest(demo_data_dir)


def test_torchvision_and_open_clip_import_next_to_cpu_torch() -> None:
    """open_clip needs torchvision; the CUDA-built wheel must not break the model libraries."""
    code = (
        "import cover_hpc, open_clip, transformers\n"
        "from transformers import CLIPModel, CLIPTextModel\n"
        "from diffusers import StableDiffusionXLPipeline\n"
        "import peft\n"
        "model, _, _ = open_clip.create_model_and_transforms('ViT-S-32', pretrained=None)\n"
        "print('ok', type(model).__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ok CLIP" in result.stdout
