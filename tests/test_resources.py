"""``cover-hpc plan --resources``: the memory breakdown, its scaling, the warnings and the table.

Every model here is full-size SDXL built on the meta device from its configs (no weights, no download).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from cover_hpc import cli
from cover_hpc.orchestrate import resources
from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import ExperimentSpec
from cover_hpc.spec.sweep import expand

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "book_covers_sdxl.yaml"


def spec_of(*overrides: str) -> ExperimentSpec:
    return load_spec(CONFIG, list(overrides))


def test_breakdown_sums_to_total() -> None:
    for overrides in [(), ("slurm.gpus_per_node=0", "train.mixed_precision=bf16")]:
        memory = resources.estimate_memory(spec_of(*overrides))
        assert sum(memory.parts().values()) == memory.total
        assert memory.total_gib == pytest.approx(memory.total / 2**30)
        assert all(value >= 0 for value in memory.parts().values())


def test_full_size_sdxl_parameters() -> None:
    memory = resources.estimate_memory(spec_of())
    # UNet 2,567,463,684 + CLIP-L 123,060,480 + bigG 694,659,840 + VAE 83,653,863 (ml-probe.md section 8)
    assert memory.frozen_params == 2_567_463_684 + 123_060_480 + 694_659_840 + 83_653_863
    # fp16 UNet and text encoders; the VAE is not held when latents are cached
    assert memory.frozen_weights == 2 * (2_567_463_684 + 123_060_480 + 694_659_840)
    rank_16 = resources.estimate_memory(spec_of("lora.rank=16"))
    assert rank_16.adapter_params * 2 == memory.adapter_params


def test_zero2_over_8_ranks_shrinks_optimizer_states_8x() -> None:
    one = resources.estimate_memory(spec_of("distributed.backend=deepspeed", "distributed.zero_stage=2",
                                            "slurm.gpus_per_node=1"))  # fmt: skip
    eight = resources.estimate_memory(spec_of("distributed.backend=deepspeed", "distributed.zero_stage=2",
                                              "slurm.nodes=2", "slurm.gpus_per_node=4"))  # fmt: skip
    assert one.optimizer == pytest.approx(8 * eight.optimizer, rel=1e-6)
    assert eight.gradients < one.gradients
    ddp = resources.estimate_memory(spec_of("slurm.nodes=2", "slurm.gpus_per_node=4"))
    assert ddp.optimizer == 8 * ddp.adapter_params  # fp32 m and v on every rank: DDP splits nothing


def test_batch_and_gradient_checkpointing_move_activations() -> None:
    base = resources.estimate_memory(spec_of("train.batch_size=1"))
    doubled = resources.estimate_memory(spec_of("train.batch_size=2"))
    assert doubled.activations == 2 * base.activations
    checkpointed = resources.estimate_memory(spec_of("train.batch_size=1", "train.gradient_checkpointing=true"))
    assert checkpointed.activations < base.activations / 3
    assert checkpointed.frozen_weights == base.frozen_weights


def test_cpu_run_holds_weights_in_the_training_dtype_and_loads_them_in_fp32() -> None:
    memory = resources.estimate_memory(spec_of("slurm.gpus_per_node=0", "train.mixed_precision=bf16",
                                               "data.size=[512,512]", "train.batch_size=1"))  # fmt: skip
    assert memory.device == "cpu"
    assert memory.frozen_weights == 2 * (2_567_463_684 + 123_060_480 + 694_659_840)
    assert memory.loading > 0  # every part read in fp32 before the cast
    assert memory.total >= memory.frozen_params * 4


def test_warnings_on_small_memory_and_short_time_limit() -> None:
    (run,) = expand(spec_of())
    assert resources.estimate_run(run).warnings == ()
    (small,) = expand(spec_of("slurm.mem_per_gpu_gb=8"))
    assert any("slurm.mem_per_gpu_gb=8" in text for text in resources.estimate_run(small).warnings)
    (short,) = expand(spec_of("slurm.time_min=5", "train.checkpoint_every=20000"))
    assert any("slurm.time_min=5" in text for text in resources.estimate_run(short).warnings)
    (big,) = expand(spec_of("train.batch_size=16"))
    assert any("exceeds the H100 SXM's 80 GiB" in text for text in resources.estimate_run(big).warnings)
    (cpu,) = expand(spec_of("slurm.gpus_per_node=0", "slurm.mem_per_gpu_gb=4"))
    assert any("resident memory" in text for text in resources.estimate_run(cpu).warnings)


def test_gpu_kind_from_constraint_or_option() -> None:
    assert resources.gpu_kind(spec_of(), "a100")[0] == "a100"
    assert resources.gpu_kind(spec_of("slurm.constraint=h100"))[0] == "h100"
    assert resources.gpu_kind(spec_of("slurm.constraint=a100|h100"))[0] == "a100"  # the slowest it may get
    (run,) = expand(spec_of("train.max_steps=1000"))
    h100, a100 = resources.estimate_run(run, "h100"), resources.estimate_run(run, "a100")
    assert h100.step_s is not None and a100.step_s is not None
    assert a100.step_s == pytest.approx(h100.step_s * 989 / 312)
    assert h100.gpu_hours == pytest.approx(1000 * h100.step_s / 3600 * 3)


def test_steps_from_the_data_folder(tmp_path: Path) -> None:
    folder = tmp_path / "train"
    folder.mkdir()
    (folder / "metadata.jsonl").write_text("".join(f'{{"file_name": "{i}.jpg", "text": "x"}}\n' for i in range(100)))
    steps, _ = resources.total_steps(spec_of(f"data.train_dir={folder}", "train.epochs=2"))
    assert steps == 2 * (100 // 3 // 3)  # batch 3 per GPU on 3 GPUs


def test_configs_match_the_benchmark() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        module_spec = importlib.util.spec_from_file_location("sdxl_benchmark", ROOT / "benchmarks" / "sdxl.py")
        assert module_spec is not None and module_spec.loader is not None
        sdxl = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(sdxl)
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    # the benchmark builds (and times) the very configurations the estimate counts
    assert sdxl.UNET is resources.SDXL_UNET and sdxl.VAE is resources.SDXL_VAE
    assert sdxl.TEXT is resources.SDXL_TEXT and sdxl.TEXT_2 is resources.SDXL_TEXT_2


def test_cli_prints_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["plan", str(CONFIG), "--resources", "--train-images", "12000"]) == 0
    out = capsys.readouterr().out
    header, row = out.splitlines()[:2]
    assert header.split()[:3] == ["run_id", "weights", "adapters"] and "GPU-h" in header
    assert row.startswith("run-")
    assert "25 epochs x 1333 steps of 12000 images" in out
    assert "GPU-hours of the sweep" in out
