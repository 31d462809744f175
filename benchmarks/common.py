"""Shared by the benchmark scripts: where they ran, timing statistics, spec building, printing.

Every script prints its figures (and, with ``--json FILE``, writes them) and never asserts a target:
benchmarks measure, tests check behaviour. Figures that compare two things are ratios taken in one
run of one script, so the machine's noise hits both sides alike.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import cover_hpc  # noqa: E402,F401  (installs the torchvision hook before any model library import)


def machine() -> str:
    """One line naming the machine: CPU model and cores, memory, GPU if any, torch version."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [f"{cpu}, {os.cpu_count()} cores, {mem_gib:.0f} GiB"]
    if torch.cuda.is_available():
        parts.append(
            f"{torch.cuda.get_device_name(0)} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)"
        )
    else:
        parts.append("no GPU")
    parts.append(f"torch {torch.__version__}")
    return "; ".join(parts)


def header(title: str) -> dict[str, Any]:
    info = {"benchmark": title, "machine": machine(), "date": datetime.date.today().isoformat(),
            "command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]])}  # fmt: skip
    print(f"# {title}\n# machine: {info['machine']}\n# date: {info['date']}\n# command: {info['command']}", flush=True)
    return info


def summary(samples: Sequence[float]) -> dict[str, float]:
    values = sorted(samples)
    return {"median": statistics.median(values), "min": values[0], "max": values[-1], "n": len(values)}


def table(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table (what docs/PERFORMANCE.md holds)."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: str | None, payload: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(payload, indent=2, default=str) + "\n")
        print(f"# wrote {path}")


def demo_assets(root: Path, num_books: int = 8) -> tuple[Path, Path]:
    """The tiny SDXL-structured model and a small synthetic cover set under ``root`` (built once)."""
    from cover_hpc.demo.covers import make_demo_data
    from cover_hpc.demo.tiny_model import build_tiny_sdxl

    model, data = root / "tiny-sdxl", root / "data"
    if not (model / "model_index.json").is_file():
        build_tiny_sdxl(model, seed=0)
    if not (data / "books.jsonl").is_file():
        make_demo_data(data, num_books=num_books, extra_books=2)
    return model, data


def spec_dict(model_dir: Path, data_dir: Path, out: Path, **sections: dict[str, Any]) -> dict[str, Any]:
    """An experiment spec for the tiny model, with the given sections merged in."""
    spec: dict[str, Any] = {
        "name": "bench",
        "output_dir": str(out / "experiments"),
        "model": {"pretrained": str(model_dir)},
        "data": {
            "train_dir": str(data_dir / "train_set"),
            "test_dir": str(data_dir / "test_set"),
            "size": [192, 128],
            "num_workers": 0,
            "cache_dir": str(out / "cache"),
        },
        "lora": {"rank": 4, "alpha": 4},
        "train": {"batch_size": 4, "mixed_precision": "no", "checkpoint_every": 100000, "log_every": 100000},
        "slurm": {"gpus_per_node": 0, "cpus_per_gpu": 1, "mem_per_gpu_gb": 2, "time_min": 30, "signal_lead_s": 30},
    }
    for section, values in sections.items():
        spec.setdefault(section, {}).update(values)
    return spec


def run_trainer(spec: dict[str, Any], threads: int, timeout: int = 3600) -> list[dict[str, Any]]:
    """Train with cover-hpc's trainer in a fresh process (jobs/train.py, as on the cluster) and
    return its per-step metrics."""
    from cover_hpc.spec.schema import spec_from_dict
    from cover_hpc.spec.sweep import expand
    from cover_hpc.store.runs import prepare_run

    built = spec_from_dict(spec)
    (run,) = expand(built)
    run_dir = prepare_run(built, run).root
    env = {**os.environ, "COVER_HPC_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    subprocess.run([sys.executable, str(REPO / "jobs" / "train.py"), str(run_dir)], check=True, env=env,
                   timeout=timeout, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    metrics = run_dir / "train" / "metrics.jsonl"
    return [json.loads(line) for line in metrics.read_text().splitlines()]


def step_seconds(metrics: Sequence[dict[str, Any]], samples_per_step: int, skip: int) -> list[float]:
    """Per-step wall time from the trainer's metrics (samples per step / samples per second),
    without the first ``skip`` steps (warm-up)."""
    return [samples_per_step / m["samples_per_s"] for m in metrics[skip:]]
