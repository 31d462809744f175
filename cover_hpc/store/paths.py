"""Every file and folder name of an experiment. Nothing else in cover-hpc builds these paths.

<output_dir>/<name>/                 the experiment folder
    experiment.json                  the spec, the runs, job ids per stage, requeue counts
    <run_id>/config.json             the run's resolved config
    <run_id>/train/                  checkpoints/, LoRA weights, train_result.json, metrics.jsonl, provenance.json
    <run_id>/train/snapshots/step-N/ LoRA-only snapshots (validate.every_steps, at_steps), never pruned
    <run_id>/validate/<key>/         points/<step-N|base>/ (images/, metrics.json), validation.json,
                                     selection.json (key: prompts source + settings hash)
    <run_id>/validate/selection.json the selection that made best/
    <run_id>/best/                   the chosen LoRA (diffusers + kohya), model card README.md, samples/
    <run_id>/infer/<key>/            images/, manifest-<k>.jsonl, manifest.jsonl, checkpoint.json
                                     (key: books file + settings hash)
    report/                          index.html, summary.md, plots
"""

from __future__ import annotations

import os
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
    def ema(self) -> Path:
        """The folder of the EMA of the LoRA weights (train.ema): its diffusers file and kohya export."""
        return self.train / "ema"

    @property
    def train_result(self) -> Path:
        return self.train / "train_result.json"

    @property
    def provenance(self) -> Path:
        """What the training depends on (code, libraries, data, base model, spec, nodes, job): written once."""
        return self.train / "provenance.json"

    @property
    def train_lock(self) -> Path:
        """Held by each rank of a training (byte = rank) for as long as it runs."""
        return self.train / ".lock"

    @property
    def starts(self) -> Path:
        """One line per start of the training (job, restart count, host, time): the requeue count."""
        return self.train / "starts.jsonl"

    @property
    def metrics(self) -> Path:
        return self.train / "metrics.jsonl"

    @property
    def tensorboard(self) -> Path:
        return self.train / "tensorboard"

    @property
    def snapshots(self) -> Path:
        return self.train / "snapshots"

    def snapshot(self, step: int) -> Path:
        """The folder of the LoRA-only snapshot at ``step`` (diffusers format)."""
        return self.snapshots / f"step-{step:08d}"

    @property
    def best(self) -> Path:
        """The LoRA that validation chose, ready to upload (weights, kohya export, model card)."""
        return self.root / "best"

    @property
    def selection(self) -> Path:
        """The selection (every point's metrics, the choice) that made ``best/``."""
        return self.validate / "selection.json"

    @property
    def validate(self) -> Path:
        return self.root / "validate"

    @property
    def infer(self) -> Path:
        return self.root / "infer"

    def validation(self, key: str) -> ValidationPaths:
        """One validation of this run: its settings' key names the folder (cover_hpc.store.runs.validation_key)."""
        return ValidationPaths(self.validate / key)

    def inference(self, key: str) -> InferencePaths:
        """One books file's covers from this run (cover_hpc.store.runs.inference_key)."""
        return InferencePaths(self.infer / key)

    def latest_validation(self) -> ValidationPaths | None:
        """The most recently finished validation of this run, whatever its settings."""
        results = sorted(self.validate.glob("*/validation.json"), key=lambda p: p.stat().st_mtime)
        return ValidationPaths(results[-1].parent) if results else None

    def latest_inference(self) -> InferencePaths | None:
        """The most recently finished inference of this run, whatever its books file."""
        manifests = sorted(self.infer.glob("*/manifest.jsonl"), key=lambda p: p.stat().st_mtime)
        return InferencePaths(manifests[-1].parent) if manifests else None

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
class ValidationPaths:
    """``<run>/validate/<key>/``: images, ``validation.json`` (written last) and the stage lock."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def result(self) -> Path:
        return self.root / "validation.json"

    @property
    def selection(self) -> Path:
        return self.root / "selection.json"

    def point(self, name: str) -> Path:
        """One point of the step axis: ``base`` or ``step-N`` (images/, metrics.json)."""
        return self.root / "points" / name

    def point_metrics(self, name: str) -> Path:
        """A point's scores (cover_hpc.store.records.ValidationPoint), written once it is scored."""
        return self.point(name) / "metrics.json"

    @property
    def real_embeddings(self) -> Path:
        """CLIP embeddings of the real held-out covers (CMMD's reference set), computed once."""
        return self.root / "real_embeddings.safetensors"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"


@dataclass(frozen=True)
class InferencePaths:
    """``<run>/infer/<key>/``: images, per-shard manifests and markers, the merged manifest."""

    root: Path

    @property
    def images(self) -> Path:
        return self.root / "images"

    @property
    def art(self) -> Path:
        """The raw generated art of typeset covers (infer.typeset)."""
        return self.root / "art"

    def manifest(self, shard: int | None = None) -> Path:
        return self.root / ("manifest.jsonl" if shard is None else f"manifest-{shard}.jsonl")

    def shard_done(self, shard: int) -> Path:
        return self.root / f"shard-{shard}.json"

    @property
    def checkpoint(self) -> Path:
        """Which LoRA the covers of this folder come from, recorded by the first shard to start."""
        return self.root / "checkpoint.json"

    @property
    def lock(self) -> Path:
        """Held by each shard (byte = shard) while it generates."""
        return self.root / ".lock"


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
    def submit_lock(self) -> Path:
        """Held while a submission plans and queues (or, locally, runs) this experiment."""
        return self.root / ".submit.lock"

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
        """Runs that have a folder with a config, sorted by id; a folder adopted from an earlier
        release is listed once, by the link that names it with today's id."""
        if not self.root.is_dir():
            return []
        entries = sorted(self.root.iterdir())
        linked = {os.readlink(p) for p in entries if p.is_symlink()}
        skipped = linked | {self.best.name}  # best/ is a copy of the winning run's, with its config
        return [RunPaths(p) for p in entries if (p / "config.json").is_file() and p.name not in skipped]

    @property
    def search(self) -> Path:
        """A search's state: Optuna's journal, the trial of each array task, the decision log."""
        return self.root / "search"

    @property
    def search_journal(self) -> Path:
        return self.search / "journal.log"

    def search_task(self, index: int) -> Path:
        """Which trial (and run) array task ``index`` trains: written once, when the task first starts."""
        return self.search / "tasks" / f"{index:05d}.json"

    @property
    def search_decisions(self) -> Path:
        """One JSON line per early-stopping decision, with the values it was made on."""
        return self.search / "decisions.jsonl"

    @property
    def search_lock(self) -> Path:
        return self.search / ".lock"

    @property
    def best(self) -> Path:
        """The experiment's own best: the winning trial's best LoRA, with a model card."""
        return self.root / "best"
