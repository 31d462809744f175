"""Data reading, micro-conditioning, buckets, data order, long captions, caches and the distributed env."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
import torch

from cover_hpc.cache import DiskCache
from cover_hpc.config import DataConfig
from cover_hpc.data import DataError, EpochBatchSampler, bucket_sizes, nearest_bucket, read_metadata, scan
from cover_hpc.env import dist_env
from cover_hpc.prompts import CLIP_WINDOW, encode_chunks, num_chunks, tokenize_chunks


def test_scan_reads_real_sizes_for_micro_conditioning(demo_data_dir: Path) -> None:
    from PIL import Image

    samples, bad = scan(demo_data_dir / "train_set", DataConfig(size=(1152, 896)), decode=True)
    assert not bad and len(samples) == 21
    for sample in samples:
        with Image.open(sample.path) as image:
            width, height = image.size
        assert sample.time_ids == (height, width, 0, 0, 1152, 896)


def test_csv_metadata_and_caption_template(tmp_path: Path, demo_data_dir: Path) -> None:
    import csv
    import shutil

    folder = tmp_path / "set"
    shutil.copytree(demo_data_dir / "test_set", folder)
    rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
    (folder / "metadata.jsonl").unlink()
    with (folder / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["file_name", "title", "publisher", "genres", "description", "text"])
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (", ".join(v) if k == "genres" else v) for k, v in row.items() if k in writer.fieldnames}
            )
    assert len(read_metadata(folder)) == len(rows)
    samples, _ = scan(folder, DataConfig(caption_template=True), decode=False)
    assert [s.caption for s in samples] == [row["text"] for row in rows]  # template rebuilds the captions


def test_missing_folder_and_bad_json_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data folder not found"):
        read_metadata(tmp_path / "nope")
    (tmp_path / "metadata.jsonl").write_text('{"file_name": "a.jpg", "text": "x"}\n{oops\n')
    with pytest.raises(DataError, match=r"metadata.jsonl:2: not valid JSON"):
        read_metadata(tmp_path)


def test_buckets_keep_area_and_multiples_of_64() -> None:
    sizes = bucket_sizes((1152, 896))
    assert (1152, 896) in sizes
    for height, width in sizes:
        assert height % 64 == 0 and width % 64 == 0
        assert 0.8 < height * width / (1152 * 896) < 1.25
    assert nearest_bucket((1500, 1000), sizes)[0] > nearest_bucket((1000, 1000), sizes)[0]


def test_sampler_is_a_pure_function_of_seed_epoch_rank() -> None:
    buckets = [(64, 64)] * 30 + [(128, 64)] * 14
    ranks = [EpochBatchSampler(buckets, 4, seed=3, rank=r, world_size=2, grad_accum=2) for r in range(2)]
    assert ranks[0].batches_per_rank == 4  # 7 + 3 full batches = 10; 5 per rank; cut to a multiple of 2
    epoch0 = [s.epoch_batches(0) for s in ranks]
    assert epoch0 == [s.epoch_batches(0) for s in ranks]
    assert epoch0 != [s.epoch_batches(1) for s in ranks]
    seen = [i for batches in epoch0 for batch in batches for i in batch]
    assert len(seen) == len(set(seen))  # no sample twice in an epoch, across ranks
    for batch in epoch0[0] + epoch0[1]:
        assert len({buckets[i] for i in batch}) == 1  # one size per batch
    ranks[0].set_epoch(1, skip=3)
    assert list(ranks[0]) == ranks[0].epoch_batches(1)[3:] and len(ranks[0]) == 1


def test_sampler_rejects_too_little_data() -> None:
    with pytest.raises(DataError, match="no full step"):
        EpochBatchSampler([(64, 64)] * 3, 4, seed=0)


@pytest.mark.tiny
def test_long_captions_get_start_and_end_tokens_per_chunk(tiny_model_dir: Path) -> None:
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer_2")
    long_caption = " ".join(f"word{i}" for i in range(200))
    ids = tokenize_chunks(tokenizer, [long_caption, "short"], max_caption_tokens=225)
    assert ids.shape == (2, num_chunks(225), CLIP_WINDOW) == (2, 3, 77)
    bos, eos, pad = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id
    assert all(int(ids[0, c, 0]) == bos and int(ids[0, c, 76]) == eos for c in range(3))  # full chunks
    assert ids[1, 0, :3].tolist() == [bos, *tokenizer("short", add_special_tokens=False).input_ids, eos][:3]
    assert ids[1, 1, :2].tolist() == [bos, eos] and int(ids[1, 1, 2]) == pad  # unused chunk
    whole = tokenizer(long_caption, add_special_tokens=False).input_ids[:225]
    content = [t for c in range(3) for t in ids[0, c, 1:76].tolist()]
    assert content == whole  # nothing lost or repeated across chunk borders
    alone = tokenize_chunks(tokenizer, ["short"], 225)
    assert torch.equal(alone[0], ids[1])  # a caption encodes the same in any batch


@pytest.mark.tiny
def test_encode_chunks_shapes_and_pooled_mean(tiny_model_dir: Path) -> None:
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    tok_2 = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer_2")
    te = CLIPTextModel.from_pretrained(tiny_model_dir / "text_encoder")
    te_2 = CLIPTextModelWithProjection.from_pretrained(tiny_model_dir / "text_encoder_2")
    captions = ["a red cover", "word " * 100]
    with torch.no_grad():
        embeds, pooled = encode_chunks(
            te, te_2, tokenize_chunks(tok, captions, 150), tokenize_chunks(tok_2, captions, 150)
        )
        single = te_2(tokenize_chunks(tok_2, captions[:1], 150)[0, :1], output_hidden_states=True).text_embeds
    assert embeds.shape == (2, 2 * 77, 64) and pooled.shape == (2, 32)
    assert torch.allclose(pooled[0], single[0], atol=1e-6)  # empty chunks do not dilute the pooled vector


def test_cache_writes_are_atomic_under_concurrency(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path / "c")
    values = [torch.full((64, 64), float(i)) for i in range(4)]
    errors: list[BaseException] = []

    def writer(value: torch.Tensor) -> None:
        try:
            for _ in range(20):
                cache.put("key", {"mean": value})
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    def reader() -> None:
        for _ in range(200):
            if cache.has("key"):
                entry = cache.get("key")["mean"]
                assert bool((entry == entry[0, 0]).all())  # never a mix of two writes

    threads = [threading.Thread(target=writer, args=(v,)) for v in values] + [threading.Thread(target=reader)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert not [p for p in (tmp_path / "c").iterdir() if p.name.endswith(".tmp")]


def test_dist_env_from_torchrun_slurm_or_nothing() -> None:
    torchrun = dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                         "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})  # fmt: skip
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr) == (3, 4, 1, "n1")
    slurm = dist_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "2",
                      "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "99"})  # fmt: skip
    assert (slurm.rank, slurm.world_size, slurm.local_world_size, slurm.master_addr) == (2, 4, 2, "gpu07")
    alone = dist_env({})
    assert (alone.rank, alone.world_size) == (0, 1)
