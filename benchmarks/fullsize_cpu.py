"""Full-size SDXL through cover-hpc's production path on a CPU: peak memory and seconds per step.

Builds SDXL base 1.0 at full size from its configuration with random weights (benchmarks/sdxl.py,
bf16, ~7 GB, once per --workdir), then, each stage in its own process as on the cluster:

1. trains a LoRA on the UNet and both text encoders with cover-hpc's trainer (jobs/train.py):
   bf16 mixed precision, gradient checkpointing, DeepSpeed ZeRO-2 on one rank (--backend ddp: DDP's
   path, accelerate's autocast), a small demo cover set at a reduced resolution; it stops with a
   checkpoint after --stop-after steps, and a second start resumes it to --steps, then writes both
   exports (diffusers LoRA and kohya);
2. samples one image with the trained LoRA in --sample-steps steps (cover_hpc.model.sampling.load_generator).

    python benchmarks/fullsize_cpu.py [--workdir /tmp/cover-hpc-fullsize] [--size 256x256] [--steps 4]
        [--stop-after 2] [--sample-steps 2] [--backend deepspeed|ddp] [--max-gib 14] [--json out.json]

Both backends run at full size since fa73381 (DeepSpeed holds the model in bf16 and accelerate then
autocasts nothing, so the trainer hands the model its inputs in its dtype); docs/PERFORMANCE.md "Full
size on a CPU" has both. A full-size start peaks near 14.9 GiB while loading (the parts are read into
fp32), so pass --max-gib 16 or more there; --max-gib only guards a shared machine (see run_measured).

Peak memory is the training process's own peak resident set (ru_maxrss from os.wait4 on that
process, the per-child form of getrusage(RUSAGE_CHILDREN)), the larger of the two starts. Seconds
per step come from the run's metrics.jsonl (batch / samples_per_s), without the first step of the
run. The estimate is cover_hpc.orchestrate.resources.estimate_memory(spec).total_gib for one rank.
The last line printed is always ``peak <GiB> GiB, estimate <GiB|n/a> GiB, <s> s/step``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from common import REPO, header, spec_dict, write_json

BUILD = """
import sys, torch
torch.set_default_dtype(torch.bfloat16)  # random init straight in bf16: ~7 GB, not ~14 GB in fp32
sys.path.insert(0, {benchmarks!r})
import sdxl
from pathlib import Path
sdxl.build_folder(Path({folder!r}), "bf16")
"""

SAMPLE = """
import json, sys
sys.path.insert(0, {benchmarks!r})
import common  # noqa: F401  (the torchvision hook)
from pathlib import Path
from cover_hpc.model.sampling import load_generator
from cover_hpc.spec.schema import ModelConfig
generator = load_generator(ModelConfig(pretrained={model!r}), Path({lora!r}), {tokens}, precision="bf16")
images, seconds = generator.generate(["A book cover"], [0], steps={steps}, guidance=5.0, size=({h}, {w}))
images[0].save({image!r})
print(json.dumps({{"sample_s": seconds, "lora_loaded": generator.has_lora}}))
"""


def run_measured(
    args: list[str],
    env: dict[str, str],
    log: Path,
    timeout: float,
    max_gib: float,
    after: Callable[[], bool] | None = None,
) -> tuple[float, float, float]:
    """Run ``args`` with output to ``log``; return its peak RSS in GiB (ru_maxrss), wall seconds, and
    the largest RSS sampled (psutil, every 0.2 s) once ``after()`` holds (0 if never).
    Raises on failure.

    A guard, not the measurement: the process is killed if its resident set (psutil, every 0.2 s)
    passes ``max_gib`` or the machine's available memory falls under 1 GiB, so that a shared
    machine never runs out of memory."""
    import psutil

    started = time.perf_counter()
    with log.open("a") as out:
        process = subprocess.Popen(args, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        watched = psutil.Process(process.pid)
        deadline = started + timeout
        sampled = 0.0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            reason = f"ran past {timeout:.0f} s" if time.perf_counter() > deadline else None
            try:
                rss = watched.memory_info().rss / 2**30
            except psutil.Error:
                rss = 0.0
            if after is not None and after():
                sampled = max(sampled, rss)
            if rss > max_gib:
                reason = f"passed {max_gib} GiB resident ({rss:.2f} GiB)"
            elif psutil.virtual_memory().available < 1.5 * 2**30:
                reason = f"left under 1.5 GiB available on the machine (itself {rss:.2f} GiB resident)"
            if reason:
                process.kill()
                os.wait4(process.pid, 0)
                raise RuntimeError(f"killed {args[1]}: it {reason}; see {log}")
            time.sleep(0.2)
    process.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if process.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise RuntimeError(f"{args[1]} exited {process.returncode} after {wall:.0f} s:\n{tail}")
    return usage.ru_maxrss / 2**20, wall, sampled  # ru_maxrss is in KiB on Linux


def estimate(spec: Any) -> tuple[float | None, str]:
    """cover_hpc.orchestrate.resources.estimate_memory(spec).total_gib, or None and why not."""
    try:
        from cover_hpc.orchestrate.resources import estimate_memory
    except ImportError as error:
        return None, f"cover_hpc.orchestrate.resources.estimate_memory is not there ({error})"
    try:
        result = estimate_memory(spec)
    except Exception as error:  # reported, the measurement still stands
        return None, f"estimate_memory failed: {type(error).__name__}: {error}"
    return float(result.total_gib), repr(result)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/cover-hpc-fullsize"),
                        help="keeps the ~7 GB random SDXL between runs (never inside the repository)")  # fmt: skip
    parser.add_argument("--model", type=Path, default=None,
                        help="a diffusers SDXL folder instead (the tiny model checks the script)")  # fmt: skip
    parser.add_argument("--size", default="256x256", help="HEIGHTxWIDTH of the training covers")
    parser.add_argument("--steps", type=int, default=4, help="training steps in all")
    parser.add_argument("--stop-after", type=int, default=2, help="the first start checkpoints and stops here")
    parser.add_argument("--backend", choices=["deepspeed", "ddp"], default="deepspeed",
                        help="distributed.backend on the one rank (deepspeed: ZeRO-2)")  # fmt: skip
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--caption-tokens", type=int, default=75, help="data.max_caption_tokens (75 = one chunk)")
    parser.add_argument("--sample-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--timeout", type=float, default=7200, help="seconds per process")
    parser.add_argument("--max-gib", type=float, default=14.0, help="kill a process whose resident set passes this")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if not 0 < args.stop_after < args.steps:
        parser.error("--stop-after must be between 0 and --steps (a checkpoint, then a resume)")
    info = header("full-size SDXL on a CPU: cover-hpc's trainer, resume, sampling, exports")
    height, width = (int(v) for v in args.size.lower().split("x"))
    started = time.perf_counter()
    root = args.workdir
    root.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COVER_HPC_THREADS": str(args.threads), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    benchmarks = str(Path(__file__).resolve().parent)
    limits = (args.timeout, args.max_gib)

    model = args.model or root / "sdxl-bf16"
    if not (model / "model_index.json").is_file():
        code = BUILD.format(benchmarks=benchmarks, folder=str(model))
        gib, wall, _ = run_measured([sys.executable, "-c", code], env, root / "build.log", *limits)
        print(f"# built random full-size SDXL (bf16) in {model}: {wall:.0f} s, peak {gib:.2f} GiB", flush=True)
    size_gb = sum(f.stat().st_size for f in model.rglob("*.safetensors")) / 1e9
    print(f"# model: {model} ({size_gb:.2f} GB of weights)", flush=True)

    from cover_hpc.demo.covers import make_demo_data
    from cover_hpc.spec.schema import spec_from_dict
    from cover_hpc.spec.sweep import expand
    from cover_hpc.store.runs import prepare_run

    data = root / "data"
    if not (data / "books.jsonl").is_file():
        make_demo_data(data, num_books=max(8, 2 * args.batch * args.steps), extra_books=0)
    out = root / f"run-{time.strftime('%Y%m%d-%H%M%S')}"
    spec = spec_dict(
        model, data, out,
        data={"size": [height, width], "max_caption_tokens": args.caption_tokens},
        lora={"rank": args.rank, "alpha": args.rank, "parts": ["unet", "text_encoder", "text_encoder_2"]},
        train={"batch_size": args.batch, "max_steps": args.steps, "mixed_precision": "bf16",
               "gradient_checkpointing": True, "checkpoint_every": 100000, "log_every": 1},
        distributed={"backend": args.backend, "zero_stage": 2},
        slurm={"cpus_per_gpu": args.threads},
    )  # fmt: skip
    built = spec_from_dict(spec)
    (run,) = expand(built)
    paths = prepare_run(built, run)
    print(f"# run: {paths.root}", flush=True)
    train = [sys.executable, str(REPO / "jobs" / "train.py"), str(paths.root)]
    log = out / "train.log"
    metrics_file = paths.train / "metrics.jsonl"
    first_gib, first_s, first_steps = run_measured(
        [*train, "--stop-after", str(args.stop_after)], env, log, *limits, after=metrics_file.exists
    )
    checkpoints = sorted(p.name for p in paths.checkpoints.iterdir()) if paths.checkpoints.is_dir() else []
    if not checkpoints or paths.train_result.exists():
        raise RuntimeError(f"the first start left no checkpoint to resume from (see {log})")
    print(f"# start 1: steps 1-{args.stop_after}, {first_s:.0f} s, peak {first_gib:.2f} GiB "
          f"({first_steps:.2f} GiB sampled after step 1), "
          f"checkpoints {checkpoints}", flush=True)  # fmt: skip
    logged = len(metrics_file.read_text().splitlines())

    def resumed_step() -> bool:  # the second start has logged its first step
        return len(metrics_file.read_text().splitlines()) > logged

    second_gib, second_s, second_steps = run_measured(train, env, log, *limits, after=resumed_step)
    print(f"# start 2 (resumed): steps {args.stop_after + 1}-{args.steps}, {second_s:.0f} s, "
          f"peak {second_gib:.2f} GiB ({second_steps:.2f} GiB sampled after its first step)", flush=True)  # fmt: skip
    metrics = [json.loads(line) for line in (paths.train / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "samples_per_s" in m]
    if [m["step"] for m in steps] != list(range(1, args.steps + 1)):
        raise RuntimeError(f"metrics.jsonl has steps {[m['step'] for m in steps]}, expected 1-{args.steps}")
    seconds = [args.batch / m["samples_per_s"] for m in steps[1:]]
    per_step = sum(seconds) / len(seconds)
    print(f"# seconds per step (steps 2-{args.steps}): {', '.join(f'{s:.1f}' for s in seconds)}; "
          f"first step {args.batch / steps[0]['samples_per_s']:.1f} s; losses "
          f"{', '.join(format(m['loss'], '.4f') for m in steps)}", flush=True)  # fmt: skip
    exports = {p.name: p.stat().st_size for p in (paths.lora_weights, paths.kohya_weights) if p.is_file()}
    if len(exports) != 2:
        raise RuntimeError(f"expected both exports in {paths.train}, found {sorted(exports)}")
    print(f"# exports: {', '.join(f'{k} ({v / 1e6:.1f} MB)' for k, v in exports.items())}", flush=True)

    image = out / "sample.png"
    code = SAMPLE.format(benchmarks=benchmarks, model=str(model), lora=str(paths.train), tokens=args.caption_tokens,
                         steps=args.sample_steps, h=height, w=width, image=str(image))  # fmt: skip
    sample_gib, sample_s, _ = run_measured([sys.executable, "-c", code], env, out / "sample.log", *limits)
    sampled = json.loads((out / "sample.log").read_text().strip().splitlines()[-1])
    print(f"# sampling: {args.sample_steps} steps at {height}x{width} in bf16 with the LoRA "
          f"(loaded: {sampled['lora_loaded']}), {sampled['sample_s']:.1f} s to sample, {sample_s:.0f} s with "
          f"loading, peak {sample_gib:.2f} GiB -> {image}", flush=True)  # fmt: skip

    estimate_gib, note = estimate(built)
    print(f"# estimate: {note}", flush=True)
    peak = max(first_gib, second_gib)
    wall = time.perf_counter() - started
    print(f"# wall time of the script: {wall:.0f} s", flush=True)
    write_json(args.json, {**info, "size": [height, width], "steps": args.steps, "stop_after": args.stop_after,
                           "batch": args.batch, "rank": args.rank, "caption_tokens": args.caption_tokens,
                           "peak_gib": peak, "peak_gib_per_start": [first_gib, second_gib],
                           "training_phase_gib_per_start": [first_steps, second_steps],
                           "estimate_gib": estimate_gib, "estimate": note, "s_per_step": per_step,
                           "step_seconds": seconds, "sample_peak_gib": sample_gib, "wall_s": wall,
                           "run": str(paths.root)})  # fmt: skip
    shown = "n/a" if estimate_gib is None else f"{estimate_gib:.2f}"
    print(f"peak {peak:.2f} GiB, estimate {shown} GiB, {per_step:.1f} s/step", flush=True)


if __name__ == "__main__":
    main()
