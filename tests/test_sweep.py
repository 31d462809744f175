"""Expansion into runs and the stability of run ids."""

from __future__ import annotations

from cover_hpc.spec.load import load_spec
from cover_hpc.spec.sweep import expand

from .conftest import REPO

SWEEP = REPO / "configs" / "sweep_lr_rank.yaml"


def ids(*overrides: str) -> list[str]:
    return [run.run_id for run in expand(load_spec(SWEEP, overrides))]


def test_grid_times_zip() -> None:
    runs = expand(load_spec(SWEEP))
    assert len(runs) == 6
    assert [(r.swept["optim.lr_unet"], r.swept["lora.rank"], r.swept["lora.alpha"]) for r in runs] == [
        (5e-5, 16, 16.0), (5e-5, 32, 32.0), (1e-4, 16, 16.0), (1e-4, 32, 32.0), (2e-4, 16, 16.0), (2e-4, 32, 32.0)
    ]  # fmt: skip
    assert runs[0].spec.optim.lr_unet == 5e-5 and runs[0].spec.lora.rank == 16
    assert runs[0].spec.sweep.grid == {}  # the resolved config holds values, not axes


def test_same_spec_same_ids() -> None:
    first = ids()
    assert first == ids()
    assert len(set(first)) == 6
    assert first[0].startswith("lr_unet5e-5_rank16_alpha16-")


def test_result_bearing_change_gives_new_ids() -> None:
    base = ids()
    changed = ids("optim.lr_text_encoder=6e-5")
    assert not set(base) & set(changed)


def test_queue_settings_keep_ids() -> None:
    assert ids() == ids("slurm.partition=other", "slurm.account=lab", "slurm.time_min=60", "slurm.array_parallelism=1")


def test_unswept_spec_is_one_run() -> None:
    runs = expand(load_spec(REPO / "configs" / "book_covers_sdxl.yaml"))
    assert len(runs) == 1 and runs[0].run_id.startswith("run-")


def test_changing_a_swept_value_changes_only_that_run() -> None:
    base = ids()
    changed = ids("sweep.grid.optim.lr_unet=[5e-5, 1e-4, 3e-4]")
    assert base[:4] == changed[:4]
    assert base[4:] != changed[4:]


def test_run_ids_depend_only_on_what_changes_the_trained_weights() -> None:
    """Validation, inference, bookkeeping and queueing settings keep the id (a trained run can
    generate covers for a new books file); anything that changes the weights makes a new one."""
    (base,) = expand(load_spec(None, ["data.train_dir=/d/train"]))
    same = [
        "infer.books_file=new.jsonl",
        "infer.steps=7",
        "validate.num_prompts=3",
        "validate.prompts=b.jsonl",
        "data.test_dir=/elsewhere",
        "data.num_workers=0",
        "data.cache_dir=/c",
        "train.checkpoint_every=3",
        "train.checkpoints_kept=1",
        "train.log_every=1",
        "slurm.partition=x",
        "distributed.timeout_min=5",
    ]
    for override in same:
        (run,) = expand(load_spec(None, ["data.train_dir=/d/train", override]))
        assert run.run_id == base.run_id, override
    for override in ("optim.lr_unet=3e-4", "data.size=[512, 512]", "train.seed=1", "slurm.gpus_per_node=2",
                     "model.pretrained=/m", "data.train_dir=/other"):  # fmt: skip
        (run,) = expand(load_spec(None, ["data.train_dir=/d/train", override]))
        assert run.run_id != base.run_id, override
