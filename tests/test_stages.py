"""Validation, batch inference and the report, on the tiny model and tiny CLIP scorers, offline."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cover_hpc.model.sampling import MissingLoraError, load_generator
from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import ExperimentSpec
from cover_hpc.spec.sweep import expand
from cover_hpc.spec.vocab import CheckpointError
from cover_hpc.stages.infer import infer_shard, shard_of
from cover_hpc.stages.report import build_report
from cover_hpc.stages.validate import validate
from cover_hpc.store.captions import read_books
from cover_hpc.store.data import DataError
from cover_hpc.store.paths import RunPaths
from cover_hpc.store.runs import inference_key, prepare_run, validation_key

from .conftest import REPO

pytestmark = [pytest.mark.tiny]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path, demo_data_dir: Path
) -> tuple[ExperimentSpec, RunPaths]:
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip

    tmp = tmp_path_factory.mktemp("stages")
    clip = build_tiny_transformers_clip(tmp / "clip")
    spec_file = tmp / "spec.yaml"
    spec_file.write_text(json.dumps({
        "name": "stages", "output_dir": str(tmp / "experiments"),
        "model": {"pretrained": str(tiny_model_dir)},
        "data": {"train_dir": str(demo_data_dir / "train_set"), "test_dir": str(demo_data_dir / "test_set"),
                 "size": [64, 64], "num_workers": 0, "cache_dir": str(tmp / "cache")},
        "lora": {"rank": 4, "alpha": 4},
        "optim": {"lr_unet": 1e-2, "lr_text_encoder": 1e-2, "lr_text_encoder_2": 1e-2, "warmup_steps": 1},
        "train": {"batch_size": 4, "max_steps": 8, "mixed_precision": "no", "checkpoint_every": 8},
        "validate": {"num_prompts": 3, "steps": 4, "batch_size": 2, "clip_model": str(clip), "every_steps": 4,
                     "loss_images": 3},
        # raw covers: these tests are about generation (64 px art holds no legible title); the finished
        # covers' test turns infer.typeset on
        "infer": {"books_file": str(demo_data_dir / "books.jsonl"), "shards": 3, "steps": 3, "size": [64, 64],
                  "batch_size": 2, "typeset": False},
    }))  # fmt: skip
    spec = load_spec(spec_file)
    (run,) = expand(spec)
    paths = prepare_run(spec, run)
    subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), str(paths.root)], check=True,
                   capture_output=True, timeout=600)  # fmt: skip
    validate(run.spec, paths)  # inference takes the best snapshot (infer.checkpoint: best) by default
    return run.spec, paths


def image_bytes(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.glob("*.png"))}


def lock_holder(lock: Path, slot: int) -> subprocess.Popen[str]:
    """Another process holding byte ``slot`` of ``lock`` until the test kills it (not for a set time: a
    slow machine must not see it let go mid-test); it prints "held" once it holds it."""
    code = ("import sys; from pathlib import Path; from cover_hpc.store import locks\n"
            f"with locks.held(Path({str(lock)!r}), 'x', slot={slot}):\n"
            " print('held', flush=True); sys.stdin.read()")  # fmt: skip
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def test_validation_is_deterministic_and_scores_both_models(trained: tuple[ExperimentSpec, RunPaths]) -> None:
    spec, paths = trained
    first = validate(spec, paths)
    assert first is not None
    out = paths.validation(validation_key(spec))
    final = out.point(f"step-{8:08d}")
    images = image_bytes(final / "images")
    assert len(images) == 3 and first["num_prompts"] == 3
    shutil.rmtree(final / "images")
    (final / "metrics.json").unlink()
    out.result.unlink()
    second = validate(spec, paths)
    assert second is not None
    assert image_bytes(final / "images") == images  # a seed per prompt: same images again
    assert second["scores"] == first["scores"] and second["points"] == first["points"]
    lora, base = first["scores"]["lora"], first["scores"]["base"]
    assert lora["clip_score"] > 0 and base["clip_score"] > 0
    assert lora["clip_score"] != base["clip_score"]  # the LoRA changes the score
    assert lora["clip_score_short"] is not None and lora["per_genre"]
    base_images = image_bytes(Path(first["baseline_images"]))
    assert set(base_images) == set(images) and all(base_images[k] != images[k] for k in images)
    assert first["caption_tokens"]["metric_window"] == 77 and first["caption_tokens"]["truncated"] >= 1


def test_text_encoder_adapters_are_used_in_validation(trained: tuple[ExperimentSpec, RunPaths], tmp_path: Path) -> None:
    """Validation with a LoRA that has only text-encoder adapters must differ from the base model."""
    spec, paths = trained
    source = paths.lora_weights
    with safe_open(str(source), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith("text_encoder")}  # noqa: SIM118
        metadata = handle.metadata()
    only_text = RunPaths(paths.root.parent / "text-only")
    only_text.train.mkdir(parents=True)
    save_file(tensors, str(only_text.lora_weights), metadata=metadata)
    only_text.train_result.write_text(json.dumps({"steps": 8}))
    lora_gen = load_generator(spec.model, only_text.train, spec.data.max_caption_tokens)
    base_gen = load_generator(spec.model, None, spec.data.max_caption_tokens)
    prompts = ['Book Cover - This book title is "dune". ' + "sand " * 90]
    lora_embeds, _ = lora_gen.encode(prompts)
    base_embeds, _ = base_gen.encode(prompts)
    assert not torch.allclose(lora_embeds, base_embeds)  # every chunk goes through the adapted encoders
    trained_result = json.loads(paths.validation(validation_key(spec)).result.read_text())
    (shared,) = Path(trained_result["baseline_images"]).glob("metrics-*.json")
    before = shared.stat().st_mtime_ns
    result = validate(spec, only_text)
    assert result is not None
    assert shared.stat().st_mtime_ns == before  # the base model is scored once per experiment, then shared
    assert result["points"][0]["kind"] == "base"
    assert result["points"][0]["metrics"] == trained_result["points"][0]["metrics"]
    base = image_bytes(Path(result["baseline_images"]))
    assert image_bytes(only_text.validation(validation_key(spec)).point(f"step-{8:08d}") / "images") != base


def test_open_clip_backend_scores_from_a_local_folder(tmp_path: Path, demo_data_dir: Path) -> None:
    from PIL import Image

    from cover_hpc.demo.tiny_clip import build_tiny_open_clip
    from cover_hpc.metrics.clip_score import load_scorer

    folder = build_tiny_open_clip(tmp_path / "open-clip")
    scorer = load_scorer("open_clip", str(folder), torch.device("cpu"))
    rows = [json.loads(line) for line in (demo_data_dir / "test_set" / "metadata.jsonl").read_text().splitlines()]
    images = [Image.open(demo_data_dir / "test_set" / r["file_name"]).convert("RGB") for r in rows]
    texts = [r["text"] for r in rows]
    scores = scorer.scores(images, texts)
    assert scores == scorer.scores(images, texts) and len(scores) == len(rows)
    assert all(s >= 0 for s in scores) and any(s > 0 for s in scores)
    assert all(t > 77 for t in scorer.tokens(texts))


def test_shards_are_disjoint_and_cover_every_book(demo_data_dir: Path) -> None:
    books = read_books(demo_data_dir / "books.jsonl").books
    for shards in (1, 2, 3, len(books)):
        parts = [shard_of(books, k, shards) for k in range(shards)]
        ids = [b.book_id for part in parts for b in part]
        assert sorted(ids) == sorted(b.book_id for b in books) and len(ids) == len(set(ids))


def test_inference_shards_resume_and_merge(trained: tuple[ExperimentSpec, RunPaths]) -> None:
    spec, paths = trained
    books = read_books(Path(spec.infer.books_file or "")).books
    results = [infer_shard(spec, paths, shard) for shard in range(3)]
    assert sum(r.generated for r in results) == len(books) == 7
    out = paths.inference(inference_key(spec))
    merged = [json.loads(line) for line in out.manifest().read_text().splitlines()]
    assert [r["book_id"] for r in merged] == [b.book_id for b in books]
    assert all((out.root / r["image"]).is_file() and r["seed"] >= 0 and r["seconds"] > 0 for r in merged)
    # interrupt shard 0 "midway": one image lost, its manifest line cut short
    manifest = out.manifest(0)
    lines = manifest.read_text().splitlines()
    lost = json.loads(lines[-1])
    (out.root / lost["image"]).unlink()
    manifest.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:20])
    kept = {line: (out.root / json.loads(line)["image"]).stat().st_mtime_ns for line in lines[:-1]}
    again = infer_shard(spec, paths, 0)
    assert (again.generated, again.skipped) == (1, len(lines) - 1)
    assert all((out.root / json.loads(line)["image"]).stat().st_mtime_ns == t for line, t in kept.items())
    assert len(out.manifest().read_text().splitlines()) == 7


def test_books_file_problems(tmp_path: Path, trained: tuple[ExperimentSpec, RunPaths]) -> None:
    books = tmp_path / "books.jsonl"
    books.write_text('{"id": "a", "title": "One"}\n{broken\n{"title": "no id"}\n{"id": "a", "title": "dup"}\n'
                     '{"id": "b", "prompt": "A raw prompt"}\n')  # fmt: skip
    parsed = read_books(books)
    assert [b.book_id for b in parsed.books] == ["a", "b"]
    assert any(":2: not valid JSON" in p for p in parsed.problems)
    assert any(":3: missing field 'id'" in p for p in parsed.problems)
    assert any(":4: duplicate id 'a'" in p for p in parsed.problems)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    with pytest.raises(ValueError, match="holds no usable books"):
        read_books(empty)
    spec, _ = trained
    with pytest.raises(MissingLoraError, match=r"expected pytorch_lora_weights\.safetensors in"):
        load_generator(spec.model, tmp_path / "no-run" / "train", 525)


def test_report_lists_runs_and_failures_and_renders_in_chromium(
    trained: tuple[ExperimentSpec, RunPaths], tmp_path: Path
) -> None:
    spec, paths = trained
    if not paths.validation(validation_key(spec)).result.is_file():
        validate(spec, paths)
    failed = RunPaths(paths.root.parent / "broken-run")
    failed.train.mkdir(parents=True)
    failed.config.write_text(json.dumps({"run_id": "broken-run", "swept": {}}))
    failed.error("train").write_text(json.dumps({"message": "loss became nan at step 3"}))
    failed.logs.mkdir()
    (failed.logs / "train.err").write_text("line\n" * 30 + "TrainingDiverged: loss became nan\n")
    html_file = build_report(paths.root.parent)
    summary = (paths.root.parent / "report" / "summary.md").read_text()
    assert paths.root.name in summary and "broken-run" in summary and "## Failures" in summary
    assert "TrainingDiverged: loss became nan" in summary
    page = html_file.read_text()
    assert "src='data:image" in page and "file://" not in page  # self-contained
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not (chromium and driver_path):
        pytest.fail("Debian's chromium and chromium-driver are needed for the report test (make test installs them)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--no-first-run",
                 f"--user-data-dir={tmp_path / 'profile'}"):  # fmt: skip
        options.add_argument(flag)
    browser = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        browser.get(html_file.as_uri())
        counts = browser.execute_script(
            "const imgs = Array.from(document.images);"
            "return [imgs.length, imgs.filter(i => i.complete && i.naturalWidth > 0).length,"
            " document.querySelectorAll('#leaderboard tr').length, document.querySelectorAll('img.plot').length];"
        )
        browser.save_screenshot(str(tmp_path / "report.png"))
    finally:
        browser.quit()
    images, loaded, rows, plots = counts
    assert images >= 1 + 3 * 2 and loaded == images  # a loss plot plus LoRA and base covers, all decoded
    assert rows == 1 + 2 and plots == 1


def test_new_books_get_covers_from_the_trained_run_without_a_new_run_id(
    trained: tuple[ExperimentSpec, RunPaths], tmp_path: Path
) -> None:
    """Inference and validation settings are not part of the run id: a new books file (or new
    sampling settings) is generated by the same trained run, into a folder of its own."""
    from cover_hpc.orchestrate.submit import stage_done

    spec, paths = trained
    books = tmp_path / "new-books.jsonl"
    books.write_text('{"id": "n1", "title": "New One"}\n{"id": "n2", "title": "New Two"}\n')
    new = dataclasses.replace(spec, infer=dataclasses.replace(spec.infer, books_file=str(books), shards=1))
    (same,) = expand(dataclasses.replace(new, sweep=spec.sweep))
    assert same.run_id == paths.root.name  # still the trained run
    assert stage_done(paths, "train", new) and not stage_done(paths, "infer", new)
    result = infer_shard(new, paths, 0)
    assert result.generated == 2 and stage_done(paths, "infer", new)
    out = paths.inference(inference_key(new))
    assert out.root.name.startswith("new-books-") and out.root != paths.inference(inference_key(spec)).root
    assert [json.loads(line)["book_id"] for line in out.manifest().read_text().splitlines()] == ["n1", "n2"]
    assert not stage_done(
        paths, "validate", dataclasses.replace(new, validate=dataclasses.replace(new.validate, seed=7))
    )


def test_a_stop_request_ends_inference_between_batches_and_a_held_shard_is_refused(
    trained: tuple[ExperimentSpec, RunPaths], tmp_path: Path
) -> None:
    from cover_hpc.runtime import preemption
    from cover_hpc.store.locks import Busy

    spec, paths = trained
    books = tmp_path / "stop-books.jsonl"
    books.write_text("".join(f'{{"id": "s{i}", "title": "Stop {i}"}}\n' for i in range(4)))
    new = dataclasses.replace(spec, infer=dataclasses.replace(spec.infer, books_file=str(books), shards=2))
    out = paths.inference(inference_key(new))
    preemption.STOP.set()
    try:
        with pytest.raises(preemption.Stopped):
            infer_shard(new, paths, 0)
    finally:
        preemption.reset()
    assert not out.manifest(0).exists()  # stopped before its first batch: nothing written
    # another process holds shard 1: this one is turned away before touching a file
    holder = lock_holder(out.lock, slot=1)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(
            Busy, match=rf"inference shard 1 of run {paths.root.name}.* is held by process {holder.pid}"
        ):
            infer_shard(new, paths, 1)
        assert not out.manifest(1).exists()
        assert infer_shard(new, paths, 0).generated == 2  # the other shard is free
    finally:
        holder.kill()
        holder.wait()


def test_typeset_inference_writes_art_and_finished_covers_read_back_by_ocr(
    trained: tuple[ExperimentSpec, RunPaths], tmp_path: Path
) -> None:
    """infer.typeset: art generated against lettering, the exact title and author set over it, every
    title read back by OCR; a title that cannot be set is reported and gets no cover, and a re-run
    regenerates nothing."""
    from PIL import Image

    from cover_hpc.stages.infer import negative_prompt

    spec, paths = trained
    books = tmp_path / "typeset-books.jsonl"
    rows = [{"id": "t1", "title": "The Quiet Harbour", "author": "Ana Núñez", "genres": ["literary"]},
            {"id": "t2", "title": "Star Forge 2049", "genres": ["science fiction"]},
            {"id": "t3", "title": "Glyph \U00013000 Missing", "genres": ["fantasy"]}]  # fmt: skip
    books.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = dataclasses.replace(spec.infer, books_file=str(books), shards=1, size=(768, 576), steps=2, typeset=True,
                                 negative_prompt="blurry")  # fmt: skip
    new = dataclasses.replace(spec, infer=config)
    assert negative_prompt(config).startswith("blurry, text, letters")
    result = infer_shard(new, paths, 0)
    assert result.generated == 3
    out = paths.inference(inference_key(new))
    records = {r["book_id"]: r for r in map(json.loads, out.manifest().read_text().splitlines())}
    for book_id in ("t1", "t2"):
        record = records[book_id]
        finished, art = Image.open(out.root / record["image"]), Image.open(out.root / record["art"])
        assert finished.size == art.size == (576, 768) and finished.tobytes() != art.tobytes()
        assert record["contrast"] >= 4.5 and record["layout"]["title"]["text"]
        assert record["ocr"]["title"]["similarity"] >= 0.8, record["ocr"]
    assert records["t1"]["layout"]["author"]["text"] == "Ana Núñez"
    missing = records["t3"]
    assert missing["image"] is None and "U+13000" in missing["error"] and (out.root / missing["art"]).is_file()
    assert not (out.images / Path(missing["art"]).name).exists()
    again = infer_shard(new, paths, 0)
    assert (again.generated, again.skipped) == (0, 3)
    # finished at the size asked for: the art as generated, the cover resampled once and set at 640 x 1024
    sized = dataclasses.replace(new, infer=dataclasses.replace(config, cover_size=(1024, 640)))
    assert inference_key(sized) != inference_key(new)
    infer_shard(sized, paths, 0)
    out = paths.inference(inference_key(sized))
    record = {r["book_id"]: r for r in map(json.loads, out.manifest().read_text().splitlines())}["t1"]
    assert Image.open(out.root / record["art"]).size == (576, 768)
    assert Image.open(out.root / record["image"]).size == (640, 1024)
    assert record["layout"]["art_size"] == [576, 768] and record["layout"]["title"]["font_size"] >= 0.028 * 1024


def test_selection_by_a_known_metric_fills_best_and_runs_as_array_tasks(
    trained: tuple[ExperimentSpec, RunPaths],
) -> None:
    """Validation split over 2 tasks, choosing by the held-out loss: the first task to end leaves the
    choice to the last; the choice is the argmin over the LoRA points, and best/ holds that LoRA."""
    import yaml

    spec, paths = trained
    settings = dataclasses.replace(spec.validate, select_by="heldout_loss", tasks=2, num_prompts=2)
    by_loss = dataclasses.replace(spec, validate=settings)
    assert validate(by_loss, paths, task=0) is None  # base and final; step 4 is task 1's
    out = paths.validation(validation_key(by_loss))
    assert not out.result.exists() and (out.point("base") / "metrics.json").is_file()
    result = validate(by_loss, paths, task=1)
    assert result is not None and result["select_by"] == "heldout_loss"
    points = {p["step"]: p for p in result["points"]}
    assert [(p["step"], p["kind"]) for p in result["points"]] == [(0, "base"), (4, "snapshot"), (8, "final")]
    losses = {step: p["metrics"]["heldout_loss"] for step, p in points.items() if p["kind"] != "base"}
    assert result["best"]["step"] == min(losses, key=lambda step: (losses[step], step))
    assert len(set(losses.values())) == 2 and points[0]["metrics"]["heldout_loss"] > 0
    earlier = json.loads(paths.validation(validation_key(spec)).result.read_text())
    assert [p["metrics"]["heldout_loss"] for p in earlier["points"]] == [
        p["metrics"]["heldout_loss"] for p in result["points"]
    ]  # fixed timesteps and noise: the same loss whatever else validation does
    for p in result["points"]:
        assert all(p["metrics"][k] is not None for k in ("clip_score", "cmmd", "ocr_similarity", "ocr_exact"))
    chosen = result["best"]["step"]
    weights = paths.lora_weights if chosen == 8 else paths.snapshot(chosen) / "pytorch_lora_weights.safetensors"
    assert (paths.best / "pytorch_lora_weights.safetensors").read_bytes() == weights.read_bytes()
    assert (paths.best / "lora_kohya.safetensors").stat().st_size > 0
    assert len(list((paths.best / "samples").glob("*.png"))) == 2
    card = (paths.best / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == spec.model.pretrained and "lora" in front["tags"] and "license" not in front
    assert f"step {chosen}" in card and "heldout_loss" in card and "Book Cover - This book title is" in card
    assert json.loads(paths.selection.read_text())["best"]["step"] == chosen
    assert json.loads(out.selection.read_text())["select_by"] == "heldout_loss"
    # another metric re-selects from the points already scored: same folder, nothing scored again
    from cover_hpc.orchestrate.submit import stage_done

    by_cmmd = dataclasses.replace(spec, validate=dataclasses.replace(settings, select_by="cmmd", tasks=1))
    assert paths.validation(validation_key(by_cmmd)) == out and not stage_done(paths, "validate", by_cmmd)
    scored = {p: p.stat().st_mtime_ns for p in out.root.glob("points/*/metrics.json")}
    again = validate(by_cmmd, paths)
    assert again is not None and again["select_by"] == "cmmd" and stage_done(paths, "validate", by_cmmd)
    cmmds = {p["step"]: p["metrics"]["cmmd"] for p in again["points"] if p["kind"] != "base"}
    assert again["best"]["step"] == min(cmmds, key=lambda step: (cmmds[step], step))
    assert {p: p.stat().st_mtime_ns for p in out.root.glob("points/*/metrics.json")} == scored


def test_inference_uses_the_selected_snapshot(trained: tuple[ExperimentSpec, RunPaths]) -> None:
    import numpy as np
    from PIL import Image

    spec, paths = trained
    selection = json.loads(paths.validation(validation_key(spec)).selection.read_text())
    book = read_books(Path(spec.infer.books_file or "")).books[0]
    seen = {}
    for choice, step in (("best", selection["best"]["step"]), ("4", 4), ("final", 8)):
        config = dataclasses.replace(spec.infer, checkpoint=choice, shards=1, batch_size=1)  # as the direct call
        new = dataclasses.replace(spec, infer=config)
        infer_shard(new, paths, 0)
        out = paths.inference(inference_key(new))
        assert json.loads((out.root / "checkpoint.json").read_text())["step"] == step
        records = [json.loads(line) for line in out.manifest().read_text().splitlines()]
        assert {r["checkpoint_step"] for r in records} == {step}
        with Image.open(out.root / records[0]["image"]) as image:
            seen[choice] = np.asarray(image.convert("RGB"))
    from cover_hpc.stages.infer import book_seed
    from cover_hpc.store.captions import book_caption

    snapshot = load_generator(spec.model, paths.snapshot(4), spec.data.max_caption_tokens)
    config = spec.infer
    (direct,), _ = snapshot.generate([book_caption(book)], [book_seed(config.seed, book.book_id)], config.steps,
                                     config.guidance, config.size)  # fmt: skip
    assert np.array_equal(seen["4"], np.asarray(direct.convert("RGB")))  # made with snapshot 4's LoRA
    assert not np.array_equal(seen["4"], seen["final"])
    assert np.array_equal(seen["best"], seen["4" if selection["best"]["step"] == 4 else "final"])


def test_two_validations_at_once_share_the_points(trained: tuple[ExperimentSpec, RunPaths]) -> None:
    """A point held by another process is left to it (no failure, no double work); the process that
    scores the last point selects."""
    spec, paths = trained
    one = dataclasses.replace(spec, validate=dataclasses.replace(spec.validate, num_prompts=1))
    out = paths.validation(validation_key(one))
    step4 = 4 + 2  # the lock byte of the point at step 4 (cover_hpc.stages.validate.PointJob.slot)
    holder = lock_holder(out.lock, slot=step4)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        assert validate(one, paths) is None  # scored base and final; step 4 is the holder's
        assert (out.point(f"step-{8:08d}") / "metrics.json").is_file()
        assert not (out.point(f"step-{4:08d}") / "metrics.json").exists() and not out.result.exists()
    finally:
        holder.kill()
        holder.wait()
    result = validate(one, paths)
    assert result is not None and [p["step"] for p in result["points"]] == [0, 4, 8]


# --------------------------------------------------------------------------------------------
# A refused input leaves the experiment as it was


def tree(root: Path) -> dict[str, bytes | None]:
    """Every path under ``root`` (and root itself), with each file's bytes."""
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in [root, *root.rglob("*")]}


@pytest.fixture
def finished_run(tmp_path: Path, tiny_model_dir: Path, demo_data_dir: Path) -> tuple[Path, Path]:
    """A spec file and its one run, which has finished training (its files stand in for a LoRA:
    nothing here gets as far as loading one)."""
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps({
        "name": "refused", "output_dir": str(tmp_path / "experiments"), "model": {"pretrained": str(tiny_model_dir)},
        "data": {"train_dir": str(demo_data_dir / "train_set"), "test_dir": str(demo_data_dir / "test_set"),
                 "size": [64, 64]},
        "validate": {"every_steps": 4, "num_prompts": 2},
        "infer": {"books_file": str(demo_data_dir / "books.jsonl"), "shards": 2},
    }))  # fmt: skip
    spec = load_spec(spec_file)
    (run,) = expand(spec)
    paths = prepare_run(spec, run)
    paths.snapshot(4).mkdir(parents=True)
    (paths.snapshot(4) / "pytorch_lora_weights.safetensors").write_bytes(b"snapshot 4")
    paths.lora_weights.write_bytes(b"final")
    paths.train_result.write_text(json.dumps({"steps": 8}))
    return spec_file, paths.root


def refused(spec_file: Path, overrides: list[str], root: Path) -> tuple[ExperimentSpec, RunPaths]:
    """The finished run with the spec as ``overrides`` change it (a new model would be another run id:
    here the same run is asked to use it)."""
    (run,) = expand(load_spec(spec_file, overrides))
    return run.spec, RunPaths(root)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["infer.books_file=missing.jsonl"], FileNotFoundError, "books file not found: missing.jsonl"),
        (["infer.books_file=EMPTY"], ValueError, "holds no usable books"),
        (["infer.checkpoint=6"], CheckpointError, "no snapshot at step 6; its LoRA points are at steps 4, 8"),
        (["infer.checkpoint=best"], CheckpointError, "has 2 LoRA points and no selection yet"),
        (
            ["model.pretrained=no-such-model", "infer.checkpoint=final"],
            FileNotFoundError,
            "model.pretrained: folder 'no-such-model' does not",
        ),
    ],
    ids=["books-file", "empty-books-file", "step", "no-selection", "model"],
)
def test_a_refused_inference_input_leaves_the_experiment_as_it_was(
    finished_run: tuple[Path, Path], tmp_path: Path, overrides: list[str], error: type[Exception], message: str
) -> None:
    """The books file, the LoRA infer.checkpoint names and the model are read before the shard's lock
    or folder is made: no empty <run>/infer/<key>/ with lock files is left behind."""
    from cover_hpc.stages.infer import check_inputs, infer_run

    spec_file, root = finished_run
    emptied = tmp_path / "emptied.jsonl"
    emptied.write_text('{"id": "a", "title": "A"}\n{"id": "b", "title": "B"}\n')
    spec, paths = refused(spec_file, [o.replace("EMPTY", str(emptied)) for o in overrides], root)
    emptied.write_text("\n")  # since planned (the spec's checks refuse it then)
    before = tree(root.parent)
    for shard in (0, 1):
        with pytest.raises(error, match=message):
            infer_shard(spec, paths, shard)
    with pytest.raises(error, match=message):
        check_inputs(spec, paths)
    with pytest.raises(error, match=message):
        infer_run(paths.root, 0, spec)
    assert tree(root.parent) == before


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        (["validate.prompts=missing.jsonl"], FileNotFoundError, "books file not found: missing.jsonl"),
        (["data.test_dir=missing_test_set"], DataError, "data folder not found: missing_test_set"),
        (["validate.prompts=BOOKS", "data.test_dir=missing_test_set", "validate.select_by=cmmd"], DataError,
         r"data folder not found: missing_test_set; set data\.test_dir"),
        (["validate.clip_model=./no-clip"], FileNotFoundError, "validate.clip_model: folder 'no-clip' does not"),
        (["model.pretrained=no-such-model"], FileNotFoundError, "model.pretrained: folder 'no-such-model' does not"),
        (["UNTRAINED"], ValueError, "has not finished training"),
    ],
    ids=["prompts-file", "test-dir-prompts", "test-dir-select-by", "clip-model", "model", "untrained"],
)  # fmt: skip
def test_a_refused_validation_input_leaves_the_experiment_as_it_was(
    finished_run: tuple[Path, Path], demo_data_dir: Path, overrides: list[str], error: type[Exception], message: str
) -> None:
    from cover_hpc.stages.validate import check_inputs, validate_run

    spec_file, root = finished_run
    if overrides == ["UNTRAINED"]:
        (root / "train" / "train_result.json").unlink()
        overrides = []
    overrides = [o.replace("BOOKS", str(demo_data_dir / "books.jsonl")) for o in overrides]
    spec, paths = refused(spec_file, overrides, root)
    before = tree(root.parent)
    for task in (None, 0):
        with pytest.raises(error, match=message):
            validate(spec, paths, task)
    with pytest.raises(error, match=message):
        check_inputs(spec, paths)
    with pytest.raises(error, match=message):
        validate_run(paths.root, spec)
    assert tree(root.parent) == before


def test_a_folder_that_is_not_a_run_is_refused_by_every_stage(tmp_path: Path) -> None:
    from cover_hpc.stages.infer import infer_run
    from cover_hpc.stages.validate import validate_run

    folder = tmp_path / "experiments" / "x" / "not-a-run"
    folder.mkdir(parents=True)
    before = tree(tmp_path)
    for stage in (lambda: infer_run(folder, 0), lambda: validate_run(folder)):
        with pytest.raises(FileNotFoundError, match=r"config\.json not found: .*not-a-run is not a run folder"):
            stage()
    assert tree(tmp_path) == before
