"""Data reading, micro-conditioning, buckets, data order, long captions, caches and the distributed env."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cover_hpc.model.encoding import CLIP_WINDOW, encode_chunks, num_chunks, tokenize_chunks
from cover_hpc.runtime.env import dist_env
from cover_hpc.spec.schema import DataConfig
from cover_hpc.store.cache import DiskCache
from cover_hpc.store.data import (
    BadSample,
    DataError,
    EpochBatchSampler,
    bucket_sizes,
    load_pixels,
    nearest_bucket,
    read_metadata,
    report_bad,
    scan,
)


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


def test_images_saved_at_once_to_one_path_all_succeed_and_one_stands_whole(tmp_path: Path) -> None:
    """Two `cover-hpc typeset` runs onto one output each renamed the same temporary file: one failed with
    ENOENT. Each writer now has its own temporary file."""
    from PIL import Image

    from cover_hpc.store.atomic import save_image

    path = tmp_path / "cover.png"
    colours = [(i * 60, 255 - i * 60, 100) for i in range(4)]
    errors: list[BaseException] = []

    def writer(colour: tuple[int, int, int]) -> None:
        try:
            for _ in range(10):
                save_image(Image.new("RGB", (300, 200), colour), path)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(colour,)) for colour in colours]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert [p.name for p in tmp_path.iterdir()] == ["cover.png"]  # no temporary file left
    with Image.open(path) as saved:
        assert saved.size == (300, 200) and saved.getpixel((0, 0)) in colours
        assert len(set(saved.getdata())) == 1  # one writer's image, whole
    with pytest.raises(ValueError, match="unknown file extension"):
        save_image(Image.new("RGB", (4, 4)), tmp_path / "cover.nope")
    assert [p.name for p in tmp_path.iterdir()] == ["cover.png"]


def test_dist_env_from_torchrun_slurm_or_nothing() -> None:
    torchrun = dist_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                         "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})  # fmt: skip
    assert (torchrun.rank, torchrun.world_size, torchrun.local_rank, torchrun.master_addr) == (3, 4, 1, "n1")
    slurm = dist_env({"SLURM_PROCID": "2", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0", "SLURM_NTASKS_PER_NODE": "2",
                      "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_JOB_ID": "99"})  # fmt: skip
    assert (slurm.rank, slurm.world_size, slurm.local_world_size, slurm.master_addr) == (2, 4, 2, "gpu07")
    alone = dist_env({})
    assert (alone.rank, alone.world_size) == (0, 1)


# --------------------------------------------------------------------------------------------
# Image modes: every mode the data path opens gives the pixels of its 8-bit rendering.


def _png(path: Path, width: int, height: int, bit_depth: int, colour_type: int, rows: list[bytes]) -> Path:
    """A PNG written by hand: PIL cannot write 16-bit RGB(A) PNGs."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    pixels = zlib.compress(b"".join(b"\x00" + row for row in rows))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def _gradient() -> np.ndarray:
    return np.tile(np.arange(256, dtype=np.uint16), (4, 1))  # 4 x 256, every 8-bit level


@pytest.mark.parametrize(
    ("mode", "suffix"),
    [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".pgm"), ("I", ".tif"), ("F", ".tif")],
)
def test_high_bit_depth_gray_is_scaled_not_clipped(tmp_path: Path, mode: str, suffix: str) -> None:
    from PIL import Image

    levels = _gradient()
    Image.fromarray(levels.astype(np.uint8)).save(tmp_path / "eight.png")
    values = {"F": (levels / 255).astype(np.float32), "I": (levels * 257).astype(np.int32)}
    image = Image.fromarray(values.get(mode, (levels * 257).astype(np.uint16)))
    if mode == "I;16B":  # built from bytes: PIL's convert() to I;16B clips at 255 too
        image = Image.frombytes("I;16B", (256, 4), (levels * 257).astype(">u2").tobytes())
    image.save(tmp_path / f"deep{suffix}")
    with Image.open(tmp_path / f"deep{suffix}") as opened:
        assert opened.mode == mode  # the file really opens in the mode under test
    expected = load_pixels(tmp_path / "eight.png", (4, 256))
    got = load_pixels(tmp_path / f"deep{suffix}", (4, 256))
    assert torch.allclose(got, expected, atol=2 / 255)  # [-1, 1] spans 2: one 8-bit level
    assert float(got.mean()) < 0.1  # a gradient, not a white page


@pytest.mark.parametrize(("colour_type", "channels"), [(2, 3), (6, 4)])
def test_16_bit_rgb_png_matches_its_8_bit_rendering(tmp_path: Path, colour_type: int, channels: int) -> None:
    from PIL import Image

    levels = _gradient()
    rgb = np.stack([levels, 255 - levels, (levels * 7) % 256, np.full_like(levels, 255)][:channels], axis=-1)
    deep = (rgb * 257).astype(">u2")
    _png(tmp_path / "deep.png", 256, 4, 16, colour_type, [row.tobytes() for row in deep])
    Image.fromarray(rgb.astype(np.uint8)).save(tmp_path / "eight.png")
    got, expected = load_pixels(tmp_path / "deep.png", (4, 256)), load_pixels(tmp_path / "eight.png", (4, 256))
    assert torch.allclose(got, expected, atol=2 / 255)


def _white_and_colour(mode: str, tmp_path: Path) -> Path:
    """A 2-pixel image of ``mode``: pixel 0 fully transparent, pixel 1 opaque (10, 20, 30) or gray 100."""
    from PIL import Image

    path = tmp_path / f"{mode.replace(';', '')}.png"
    if mode == "RGBA":
        Image.frombytes("RGBA", (2, 1), bytes([0, 0, 0, 0, 10, 20, 30, 255])).save(path)
    elif mode == "LA":
        Image.frombytes("LA", (2, 1), bytes([0, 0, 100, 255])).save(path)
    elif mode == "P":
        image = Image.frombytes("P", (2, 1), bytes([0, 1]))
        image.putpalette([0, 0, 0, 10, 20, 30])
        image.save(path, transparency=0)
    elif mode == "L":  # a colour key: the tRNS value 7 is transparent
        Image.frombytes("L", (2, 1), bytes([7, 100])).save(path, transparency=7)
    elif mode == "RGB":
        Image.frombytes("RGB", (2, 1), bytes([1, 2, 3, 10, 20, 30])).save(path, transparency=(1, 2, 3))
    elif mode == "I;16":
        Image.fromarray(np.array([[7, 100 * 257]], dtype=np.uint16)).save(path, transparency=7)
    with Image.open(path) as opened:
        assert opened.mode == mode
    return path


@pytest.mark.parametrize("mode", ["RGBA", "LA", "P", "L", "RGB", "I;16"])
def test_transparency_is_composited_over_white(tmp_path: Path, mode: str) -> None:
    pixels = load_pixels(_white_and_colour(mode, tmp_path), (1, 2))
    colour = [100, 100, 100] if mode in ("LA", "L", "I;16") else [10, 20, 30]
    expected = torch.tensor([[255, 255, 255], colour], dtype=torch.float32).T.reshape(3, 1, 2) / 127.5 - 1
    assert torch.allclose(pixels, expected, atol=1e-6)


def test_half_transparent_pixels_blend_with_white(tmp_path: Path) -> None:
    from PIL import Image

    Image.frombytes("RGBA", (1, 1), bytes([0, 0, 0, 128])).save(tmp_path / "half.png")
    assert torch.allclose(load_pixels(tmp_path / "half.png", (1, 1)), torch.full((3, 1, 1), 127 / 127.5 - 1), atol=0.01)


@pytest.mark.parametrize(("mode", "suffix"), [("1", ".png"), ("P", ".png"), ("CMYK", ".tif"), ("YCbCr", ".tif"),
                                              ("LAB", ".tif"), ("RGB", ".jpg")])  # fmt: skip
def test_other_modes_give_their_rgb_rendering(tmp_path: Path, mode: str, suffix: str) -> None:
    from PIL import Image

    levels = _gradient()
    rgb = Image.fromarray(np.stack([levels, 255 - levels, (levels * 3) % 256], axis=-1).astype(np.uint8))
    path = tmp_path / f"image{suffix}"
    rgb.convert(mode).save(path)
    with Image.open(path) as opened:
        assert opened.mode == mode
        expected = np.asarray(opened.convert("RGB"), dtype=np.float32)
    got = load_pixels(path, (4, 256)).permute(1, 2, 0).add(1).mul(127.5).numpy()
    assert np.abs(got - expected).max() < 0.01


# --------------------------------------------------------------------------------------------
# Metadata: duplicates, encodings, malformed lines, and where a bad sample is.


def _folder(tmp_path: Path, metadata: bytes, images: tuple[str, ...] = ("a.png", "b.png")) -> Path:
    from PIL import Image

    folder = tmp_path / "set"
    folder.mkdir(exist_ok=True)
    for name in images:
        Image.new("RGB", (64, 64), (200, 10, 10)).save(folder / name)
    (folder / "metadata.jsonl").write_bytes(metadata)
    return folder


def _report(folder: Path, bad: list[BadSample], policy: str = "fail") -> str:
    """What report_bad says, through the (file, reason) tuples train.py passes on."""
    as_tuples = [(item.file, item.reason) for item in bad]  # train.load_samples
    with pytest.raises(DataError) as error:
        report_bad(folder, [BadSample(file, reason) for file, reason in as_tuples], policy)  # train.build
    return str(error.value)


def test_a_file_listed_twice_is_reported_with_both_lines_and_trained_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _folder(tmp_path, b'{"file_name": "a.png", "text": "first"}\n'
                               b'{"file_name": "b.png", "text": "other"}\n'
                               b'{"file_name": "./a.png", "text": "second"}\n')  # fmt: skip
    samples, bad = scan(folder, DataConfig(size=(64, 64)), decode=True)
    assert [(s.path.name, s.caption) for s in samples] == [("a.png", "first"), ("b.png", "other")]
    message = _report(folder, bad)
    assert "metadata.jsonl:3: ./a.png: listed again: line 1 already has it" in message
    report_bad(folder, bad, "skip")
    assert "metadata.jsonl:3: ./a.png: listed again" in caplog.text


def test_csv_duplicates_bom_and_undecodable_record(tmp_path: Path) -> None:
    folder = _folder(tmp_path, b"")
    (folder / "metadata.jsonl").unlink()
    (folder / "metadata.csv").write_bytes(
        b'\xef\xbb\xbffile_name,text\na.png,"two\nlines"\nb.png,caf\xe9\nb.png,ok\na.png,again\n'
    )
    samples, bad = scan(folder, DataConfig(size=(64, 64)), decode=False)
    assert [(s.path.name, s.caption) for s in samples] == [("a.png", "two\nlines"), ("b.png", "ok")]
    assert [b.file for b in bad] == ["metadata.csv:4", "metadata.csv:6: a.png"]
    assert "bytes that are not UTF-8 (0xe9)" in bad[0].reason and "line 2 already has it" in bad[1].reason


def test_byte_order_mark_keeps_the_first_row(tmp_path: Path) -> None:
    folder = _folder(tmp_path, b'\xef\xbb\xbf{"file_name": "a.png", "text": "x"}\n')
    assert read_metadata(folder) == [{"file_name": "a.png", "text": "x"}]
    samples, bad = scan(folder, DataConfig(size=(64, 64)), decode=False)
    assert len(samples) == 1 and not bad


def test_utf16_metadata_is_refused_with_the_fix(tmp_path: Path) -> None:
    folder = _folder(tmp_path, '{"file_name": "a.png", "text": "x"}\n'.encode("utf-16"))
    with pytest.raises(DataError, match=r"UTF-16.*save it as UTF-8"):
        scan(folder, DataConfig(size=(64, 64)), decode=False)


BAD_LINES = (
    b'{"file_name": "a.png", "text": "ok"}\n'
    b'{"file_name": "b.png", "text": "caf\xe9"}\n'
    b"{oops\n"
    b"[1, 2]\n"
    b'{"text": "no file"}\n'
    b'{"file_name": "missing.png", "text": "gone"}\n'
    b'{"file_name": "b.png", "text": ""}\n'
)


def test_bad_metadata_lines_are_skipped_alone_under_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    folder = _folder(tmp_path, BAD_LINES)
    samples, bad = scan(folder, DataConfig(size=(64, 64), on_bad_sample="skip"), decode=True)
    assert [s.path.name for s in samples] == ["a.png"]
    report_bad(folder, bad, "skip")
    for expected in (
        "metadata.jsonl:2: bytes that are not UTF-8 (0xe9 at byte 36 of the line)",
        "metadata.jsonl:3: not valid JSON",
        "metadata.jsonl:4: expected a JSON object, got list",
        "metadata.jsonl:5: no 'file_name' value (data.image_column)",
        "metadata.jsonl:6: missing.png: unreadable image",
        "metadata.jsonl:7: b.png: missing or empty caption",
    ):
        assert expected in caplog.text
    assert "{'text'" not in caplog.text  # a row is never shown as a Python dict


def test_bad_metadata_lines_are_refused_by_file_and_line_under_fail(tmp_path: Path) -> None:
    folder = _folder(tmp_path, BAD_LINES)
    _, bad = scan(folder, DataConfig(size=(64, 64), on_bad_sample="fail"), decode=True)
    message = _report(folder, bad)
    assert "6 bad sample(s)" in message and "metadata.jsonl:2: bytes that are not UTF-8" in message
    assert "metadata.jsonl:5: no 'file_name' value" in message and "data.on_bad_sample: skip" in message
    with pytest.raises(DataError, match=r"metadata.jsonl:2: bytes that are not UTF-8 \(0xe9"):
        read_metadata(folder)  # validation's strict read names the file and line too


def test_a_bad_image_found_by_the_latent_cache_gets_its_metadata_line(tmp_path: Path) -> None:
    folder = _folder(tmp_path, b'{"file_name": "a.png", "text": "x"}\n{"file_name": "sub/b.png", "text": "y"}\n')
    message = _report(folder, [BadSample("b.png", "unreadable image (truncated)")])  # path.name, as train.py gives
    assert "metadata.jsonl:2: sub/b.png: unreadable image (truncated)" in message
