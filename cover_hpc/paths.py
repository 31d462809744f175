"""Every file and folder name of an experiment. Nothing else in cover-hpc builds these paths.

<output_dir>/<name>/                 the experiment folder
    experiment.json                  the spec, the runs, job ids per stage, requeue counts
    <run_id>/config.json             the run's resolved config
    <run_id>/train/                  checkpoints/, LoRA weights, train_result.json, metrics.jsonl
    <run_id>/validate/               images/, validation.json
    <run_id>/infer/                  images/, manifest-<k>.jsonl, manifest.jsonl
    report/                          index.html, summary.md, plots
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

LORA_WEIGHTS = "pytorch_lora_weights.safetensors"
KOHYA_WEIGHTS = "lora_kohya.safetensors"


@dataclass(frozen=True)
class RunPaths:
    """Paths of one run inside an experiment."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def checkpoints(self) -> Path:
        return self.train / "checkpoints"

    @property
    def lora_weights(self) -> Path:
        return self.train / LORA_WEIGHTS

    @property
    def kohya_weights(self) -> Path:
        return self.train / KOHYA_WEIGHTS

    @property
    def train_result(self) -> Path:
        return self.train / "train_result.json"

    @property
    def metrics(self) -> Path:
        return self.train / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.train / "tensorboard"

    @property
    def validate(self) -> Path:
        return self.root / "validate"

    @property
    def validation_result(self) -> Path:
        return self.validate / "validation.json"

    @property
    def infer(self) -> Path:
        return self.root / "infer"

    @property
    def validate_images(self) -> Path:
        return self.validate / "images"

    @property
    def infer_images(self) -> Path:
        return self.infer / "images"

    def infer_manifest(self, shard: int | None = None) -> Path:
        return self.infer / ("manifest.jsonl" if shard is None else f"manifest-{shard}.jsonl")

    def infer_shard_done(self, shard: int) -> Path:
        return self.infer / f"shard-{shard}.json"

    def error(self, stage: str) -> Path:
        """Where a stage that failed leaves its error message (for status and the report)."""
        return self.root / stage / "error.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def experiment(self) -> ExperimentPaths:
        return ExperimentPaths(self.root.parent)


@dataclass(frozen=True)
class ExperimentPaths:
    """Paths of an experiment folder."""

    root: Path

    @classmethod
    def of(cls, output_dir: str | Path, name: str) -> ExperimentPaths:
        return cls(Path(output_dir).absolute() / name)

    @property
    def state(self) -> Path:
        return self.root / "experiment.json"

    @property
    def report(self) -> Path:
        return self.root / "report"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def run(self, run_id: str) -> RunPaths:
        return RunPaths(self.root / run_id)

    def baseline(self, key: str) -> Path:
        """Base-model validation images and scores, shared by every run with the same settings."""
        return self.root / "baseline" / key

    @property
    def report_html(self) -> Path:
        return self.report / "index.html"

    @property
    def report_summary(self) -> Path:
        return self.report / "summary.md"

    def run_dirs(self) -> list[RunPaths]:
        """Runs that have a folder with a config, sorted by id."""
        if not self.root.is_dir():
            return []
        return [RunPaths(p) for p in sorted(self.root.iterdir()) if (p / "config.json").is_file()]
