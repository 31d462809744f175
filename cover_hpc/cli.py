"""The ``cover-hpc`` command: argument parsing that calls the library, nothing more."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cover_hpc.runtime import env
from cover_hpc.spec.load import load_spec
from cover_hpc.spec.schema import DataConfig, ExperimentSpec, Problem, SpecError, field_help, to_dict
from cover_hpc.spec.sweep import Run, expand
from cover_hpc.store.locks import Busy
from cover_hpc.store.paths import ExperimentPaths, RunPaths
from cover_hpc.store.runs import adopt_earlier_runs

DEMO_SPEC = Path("configs/demo.yaml")
DEMO_DIR = Path("demo")


def _format_value(value: Any) -> str:
    return json.dumps(value) if isinstance(value, (list, tuple, dict)) else str(value)


def render_plan(spec: ExperimentSpec, runs: Sequence[Run]) -> str:
    """A table of the runs: id and swept values."""
    keys = list(runs[0].swept) if runs else []
    header = ["run_id", *keys]
    rows = [[run.run_id, *(_format_value(run.swept[k]) for k in keys)] for run in runs]
    widths = [max(len(str(cell)) for cell in column) for column in zip(header, *rows, strict=True)]
    lines = [
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in [header, *rows]
    ]
    folder = ExperimentPaths.of(spec.output_dir, spec.name).root
    lines.append(f"\n{len(runs)} run{'s' if len(runs) != 1 else ''} of experiment '{spec.name}' in {folder}")
    return "\n".join(lines)


def _plan_search(args: argparse.Namespace, spec: ExperimentSpec) -> int:
    """A search's plan: its trials where they can be known in advance (random), and what is already decided."""
    from cover_hpc.orchestrate import search

    config = spec.sweep.search
    exp = ExperimentPaths.of(spec.output_dir, spec.name)
    trials = search.planned_trials(spec)
    claimed = {claim.index: claim for claim in search.claimed(exp, spec)}
    if args.json:
        known = [{"task": i, "run_id": run.run_id, **to_dict(run.swept)} for i, run in enumerate(trials or [])]
        print(json.dumps(known or [{"task": i, "run_id": c.run.run_id, **to_dict(c.run.swept)}
                                   for i, c in sorted(claimed.items())], indent=2))  # fmt: skip
        return 0
    rungs = search.rung_steps(spec)
    print(f"search of experiment '{spec.name}' in {exp.root}: {config.trials} trials, {config.sampler} sampler "
          f"(seed {config.seed}), ranked by {config.metric} ({search.direction(config.metric)})")  # fmt: skip
    for key, dist in config.space.items():
        print(f"  {key}: {json.dumps(dist)}")
    if rungs:
        print(f"early stopping: validated at steps {', '.join(map(str, rungs))} of {spec.train.max_steps}; "
              f"at each, only the top 1/{config.reduction_factor} of the trials that reached it go on")  # fmt: skip
    else:
        print("early stopping: off (sweep.search.grace_steps is 0); every trial trains to the end")
    if trials is not None:
        print(render_plan(spec, trials))
    else:
        print(f"the trials are not known in advance: {config.sampler} chooses each from the results of the trials "
              "before it, as its array task starts")  # fmt: skip
        for index, claim in sorted(claimed.items()):
            print(f"  task {index}: trial {claim.number} {claim.run.run_id} {json.dumps(to_dict(claim.run.swept))}")
    return 0


def cmd_plan(args: argparse.Namespace) -> int:
    from cover_hpc.orchestrate.submit import preflight_problems

    spec = load_spec(args.spec, args.overrides)
    runs = expand(spec)
    adopted = adopt_earlier_runs(ExperimentPaths.of(spec.output_dir, spec.name), runs)
    for each in adopted:  # on stderr: --json output stays machine-readable
        print(
            f"cover-hpc: adopted run folder {each.folder} (an earlier release's id) as {each.run_id}", file=sys.stderr
        )
    if args.resources:
        from cover_hpc.orchestrate import resources

        estimated = resources.resource_runs(spec, runs)
        if args.json:
            print(json.dumps(resources.estimates_json(estimated, args.gpu, args.train_images), indent=2))
        else:
            print(resources.render_resources(spec, estimated, args.gpu, args.train_images))
        return 0
    if spec.sweep.search.sampler != "none":
        return _plan_search(args, spec)
    if args.json:
        print(json.dumps([{"run_id": run.run_id, **to_dict(run.swept)} for run in runs], indent=2))
    else:
        print(render_plan(spec, runs))
    problems = preflight_problems(runs)  # on stderr: --json output stays machine-readable
    for problem in problems:
        print(f"cover-hpc: warning: {problem.render()} (submit would refuse this)", file=sys.stderr)
    hint = fetch_hint(args, problems)
    if hint:
        print(f"cover-hpc: {hint}", file=sys.stderr)
    return 0


def fetch_hint(args: argparse.Namespace, problems: Sequence[Problem]) -> str | None:
    """The exact fetch command for this spec and overrides, when a model is missing from the cache."""
    import shlex

    from cover_hpc.model.weights import is_fetchable

    if not any(is_fetchable(problem) for problem in problems):
        return None
    command = shlex.join(["cover-hpc", "fetch", str(args.spec), *args.overrides])
    return f"to fetch the missing models, run on a machine with network access: {command}"


def cmd_keys(args: argparse.Namespace) -> int:
    rows = field_help()
    wanted = args.section
    shown = [row for row in rows if not wanted or row[0] == wanted or row[0].startswith(f"{wanted}.")]
    if not shown:
        import difflib

        sections = list(dict.fromkeys(key.split(".")[0] for key, _, _ in rows if "." in key))
        top_level = [key for key, _, _ in rows if "." not in key]
        close = difflib.get_close_matches(wanted, [*sections, *top_level, *(key for key, _, _ in rows)], n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        print(f"cover-hpc: no section or key {wanted!r}; {hint}sections: {', '.join(sections)}; "
              f"top-level keys: {', '.join(top_level)}", file=sys.stderr)  # fmt: skip
        return 2
    for key, default, text in shown:
        print(f"{key} = {default}\n    {text}")
    return 0


def cmd_make_tiny_model(args: argparse.Namespace) -> int:
    env.set_offline_defaults()
    from cover_hpc.demo.tiny_model import build_tiny_sdxl

    folder = build_tiny_sdxl(args.dir, seed=args.seed)
    print(f"tiny SDXL pipeline written to {folder}")
    return 0


def cmd_make_demo_data(args: argparse.Namespace) -> int:
    from cover_hpc.demo.covers import make_demo_data

    demo = make_demo_data(args.dir, num_books=args.num_books, extra_books=args.extra_books, seed=args.seed)
    print(f"demo covers in {demo.root}: {demo.train} train, {demo.test} test, {demo.books} books in books.jsonl")
    return 0


def cmd_prepare_data(args: argparse.Namespace) -> int:
    from cover_hpc.stages.prepare.pipeline import PrepareOptions, Progress, default_workers, describe, prepare

    options = PrepareOptions(
        source=args.source, out=args.out, format=args.format, test_fraction=args.test_fraction, seed=args.seed,
        min_side=args.min_side, orientation=args.orientation, workers=args.workers or default_workers(),
        lowercase=args.lowercase, overwrite=args.overwrite, dry_run=args.dry_run,
        max_caption_tokens=args.max_caption_tokens,
    )  # fmt: skip
    try:
        result = prepare(options, Progress(sys.stderr))
    except KeyboardInterrupt:
        print("\ncover-hpc: interrupted; every file written is whole; run the same command again to go on",
              file=sys.stderr)  # fmt: skip
        return 130
    except OSError as error:  # disk full, permissions: the file and the cause, no traceback
        print(f"cover-hpc: {error}", file=sys.stderr)
        return 1
    print(describe(result))
    return 0


def prepare_demo_assets(workdir: Path) -> tuple[Path, Path]:
    """Build the tiny model and demo covers under ``workdir`` unless they are already there."""
    from cover_hpc.demo.covers import make_demo_data
    from cover_hpc.demo.tiny_clip import build_tiny_transformers_clip
    from cover_hpc.demo.tiny_model import build_tiny_sdxl

    model_dir, data_dir, clip_dir = workdir / "tiny-sdxl", workdir / "data", workdir / "tiny-clip"
    if not (model_dir / "model_index.json").is_file():
        print(f"building the tiny SDXL model in {model_dir}", flush=True)
        build_tiny_sdxl(model_dir)
    if not (data_dir / "books.jsonl").is_file():
        print(f"drawing the demo covers in {data_dir}", flush=True)
        make_demo_data(data_dir)
    if not (clip_dir / "config.json").is_file():
        print(f"building the tiny CLIP scorer in {clip_dir}", flush=True)
        build_tiny_transformers_clip(clip_dir)
    return model_dir, data_dir


def cmd_demo(args: argparse.Namespace) -> int:
    env.set_offline_defaults()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from cover_hpc.store import locks

    # two demos at once: the second waits for the first to finish building the shared assets
    with locks.held(DEMO_DIR / ".lock", f"building the demo assets in {DEMO_DIR}", wait_s=900):
        prepare_demo_assets(DEMO_DIR)
    spec = load_spec(args.spec, args.overrides)
    runs = expand(spec)
    print(render_plan(spec, runs), flush=True)
    from cover_hpc.orchestrate.submit import submit

    submit(spec, runs, executor="local")
    return 0


def default_executor() -> str:
    """slurm where sbatch and a slurm.conf exist (a client without its conf hangs ~60 s), else local."""
    import shutil

    conf = Path(os.environ.get("SLURM_CONF", "/etc/slurm/slurm.conf"))
    return "slurm" if shutil.which("sbatch") and conf.is_file() else "local"


def cmd_submit(args: argparse.Namespace) -> int:
    env.set_offline_defaults()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from cover_hpc.orchestrate.submit import SubmitError, render_dry_run, submit

    spec = load_spec(args.spec, args.overrides)
    runs = expand(spec)
    executor = args.executor or default_executor()
    try:
        plan, submission = submit(spec, runs, executor=executor, profile=args.profile, dry_run=args.dry_run)
    except SubmitError as error:
        print(f"cover-hpc: {error}", file=sys.stderr)
        return 1
    except SpecError as error:
        hint = fetch_hint(args, error.problems)
        print(f"cover-hpc: {error}" + (f"\ncover-hpc: {hint}" if hint else ""), file=sys.stderr)
        return 2
    for each in plan.adopted:
        print(
            f"cover-hpc: adopted run folder {each.folder} (an earlier release's id) as {each.run_id}", file=sys.stderr
        )
    if submission is None:
        print(render_dry_run(plan))
        hint = fetch_hint(args, plan.warnings)
        if hint:
            print(f"# {hint}")
        return 0
    if plan.search_tasks is not None:
        trials = spec.sweep.search.trials
        print(f"{len(plan.search_tasks)} of {trials} search trials to {'submit' if executor == 'slurm' else 'run'}"
              f" ({executor} executor); experiment folder {plan.exp.root}")  # fmt: skip
        for key, jobs in submission.runs.items():
            print(f"  {key}: {jobs.train}")
        if submission.report:
            print(f"  report job {submission.report}")
        return wait_for(plan.exp.root) if args.wait and executor == "slurm" else 0
    todo = {run_id: stages for run_id, stages in plan.stages.items() if stages}
    print(f"{len(todo)} of {len(runs)} runs had stages to {'submit' if executor == 'slurm' else 'run'}"
          f" ({executor} executor); experiment folder {plan.exp.root}")  # fmt: skip
    for run_id, jobs in submission.runs.items():
        infer = ",".join(jobs.infer) or "-"
        print(f"  {run_id}: train {jobs.train or '-'}  validate {jobs.validate or '-'}  infer {infer}")
    if submission.report:
        print(f"  report job {submission.report}")
    if args.wait and executor == "slurm":
        return wait_for(plan.exp.root)
    return 0


def wait_for(experiment: Path) -> int:
    import time

    from cover_hpc.orchestrate.submit import ACTIVE_STATES, job_ids, job_states, read_state, status
    from cover_hpc.store.paths import ExperimentPaths

    exp = ExperimentPaths(experiment)
    unknown_since: float | None = None
    while True:
        last = read_state(exp)["submissions"][-1]
        ids = [j for jobs in last["runs"].values() for j in job_ids(jobs)]
        ids += [last["report"]] if last.get("report") else []
        states = job_states(ids)
        if not any(states.get(j) in ACTIVE_STATES for j in ids):
            if all(j in states for j in ids):
                break
            unknown_since = unknown_since or time.monotonic()
            if time.monotonic() - unknown_since > 120:  # accounting never heard of them: stop waiting
                print(f"cover-hpc: SLURM has no record of {sorted(set(ids) - set(states))}; not waiting for them")
                break
        else:
            unknown_since = None
        time.sleep(5)
    rows = status(experiment)
    failed = [
        r["run_id"] for r in rows if "failed" in (r["stages"]["train"]["state"], r["stages"]["validate"]["state"])
    ]
    print(f"finished; {len(failed)} run(s) failed" + (f": {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def cmd_fetch(args: argparse.Namespace) -> int:
    """Download the models of every run into the Hugging Face cache, then show where each resolves."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from cover_hpc.model import weights

    spec = load_spec(args.spec, args.overrides)
    failed = 0
    for ref, result in weights.fetch_all(weights.models_of(run.spec for run in expand(spec))):
        if isinstance(result, weights.FetchError):
            print(f"cover-hpc: {result}", file=sys.stderr)
        elif not result.ok:
            print(f"cover-hpc: {weights.problem_after_fetch(result).render()}", file=sys.stderr)
        else:
            print(f"{ref.key}: {ref.describe()} -> {result.path}")
            continue
        failed += 1
    if failed:
        print(f"cover-hpc: {failed} model(s) not ready; jobs would fail to load them", file=sys.stderr)
    return 1 if failed else 0


def cmd_status(args: argparse.Namespace) -> int:
    from cover_hpc.orchestrate.submit import render_decisions, render_status, status

    rows = status(args.experiment)
    if args.json:
        from cover_hpc.orchestrate.search import decisions

        print(json.dumps({"runs": rows, "decisions": decisions(ExperimentPaths(Path(args.experiment).absolute()))}
                         if (Path(args.experiment) / "search").is_dir() else rows, indent=2))  # fmt: skip
        return 0
    print(render_status(rows))
    made = render_decisions(args.experiment)
    if made:
        print("\n" + made)
    return 0


def cmd_logs(args: argparse.Namespace) -> int:
    from cover_hpc.orchestrate.submit import log_files

    files = log_files(args.experiment, args.run, args.stage)
    if not files:
        print(f"cover-hpc: no {args.stage} logs for run {args.run} in {args.experiment}", file=sys.stderr)
        return 1
    for path in files:
        print(f"==> {path} <==\n{path.read_text(errors='replace')}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from cover_hpc.orchestrate.submit import cancel

    cancelled = cancel(args.experiment)
    print(f"cancelled jobs {', '.join(cancelled)}" if cancelled else "nothing to cancel")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    env.set_offline_defaults()
    from cover_hpc.stages.validate import check_inputs, validate
    from cover_hpc.store.runs import prepare_run

    spec = load_spec(args.spec, args.overrides)
    for run in stage_runs(spec, args.run):
        check_inputs(run.spec, run_paths(spec, run))  # a refused input writes nothing, not even config.json
        result = validate(run.spec, prepare_run(spec, run), args.task)
        if result is None:
            print(f"{run.run_id}: points done here; other points are being scored by another task or process, "
                  "and whichever finishes last selects the best point")  # fmt: skip
            continue
        for point in result["points"]:
            values = "  ".join(f"{k} {_format_metric(v)}" for k, v in point["metrics"].items())
            print(f"{run.run_id} {point['kind']:8} step {point['step']:>6}: {values}")
        best = result["best"]
        print(f"{run.run_id}: best is step {best['step']} ({result['select_by']} {_format_metric(best['value'])}), "
              f"copied to {best['folder']}")  # fmt: skip
    return 0


def _format_metric(value: Any) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def cmd_infer(args: argparse.Namespace) -> int:
    env.set_offline_defaults()
    from cover_hpc.stages.infer import check_inputs, infer_shard
    from cover_hpc.store.runs import prepare_run

    spec = load_spec(args.spec, args.overrides)
    for run in stage_runs(spec, args.run, "infer"):
        check_inputs(run.spec, run_paths(spec, run))  # a refused input writes nothing, not even config.json
        paths = prepare_run(spec, run)
        shards = [args.shard] if args.shard is not None else range(run.spec.infer.shards)
        for shard in shards:
            result = infer_shard(run.spec, paths, shard)
            print(f"{run.run_id} shard {shard}: {result.generated} generated, {result.skipped} already done")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from cover_hpc.orchestrate.accounting import experiment_accounting
    from cover_hpc.stages.report import build_report

    print(f"report: {build_report(args.experiment, experiment_accounting(Path(args.experiment)))}")
    return 0


def cover_size(text: str) -> tuple[int, int]:
    """``WxH`` (e.g. 1600x2560) as (width, height), for argparse."""
    parts = text.lower().replace("×", "x").split("x")
    if len(parts) != 2 or not all(part.strip().isdigit() for part in parts):
        raise argparse.ArgumentTypeError(f"{text!r}: give the size as WIDTHxHEIGHT in pixels, e.g. 1600x2560")
    width, height = (int(part) for part in parts)
    if not (16 <= width <= 12000 and 16 <= height <= 12000):
        raise argparse.ArgumentTypeError(f"{text!r}: each side must be 16 to 12000 px")
    return width, height


def cmd_typeset(args: argparse.Namespace) -> int:
    """Typeset a title (and author) over an image; print the layout record (and the OCR read-back)."""
    from cover_hpc.typeset import TypesetError, read_back, typeset_file

    genres = [genre.strip() for value in args.genres or () for genre in value.split(",") if genre.strip()]
    readers: tuple[Any, Any] | None = None
    if args.verify:  # the OCR engines first: a missing one writes no cover
        from cover_hpc.metrics import ocr

        try:
            readers = (ocr.load_ocr(args.ocr_engine),
                       None if args.ocr_second == "none" else ocr.load_second_reader())  # fmt: skip
        except (ocr.OcrUnavailable, ValueError) as error:
            print(f"cover-hpc: --verify: {error}; no cover written", file=sys.stderr)
            return 1
    try:
        result = typeset_file(args.image, args.out, title=args.title, author=args.author, genres=genres, font=args.font,
                              size=args.size, page_reader="auto" if args.page_read == "auto" else None)  # fmt: skip
    except TypesetError as error:
        print(f"cover-hpc: {args.image}: {error}; no cover written", file=sys.stderr)
        return 1
    except OSError as error:  # unreadable image, an output folder that cannot be written: no traceback
        print(f"cover-hpc: {error}", file=sys.stderr)
        return 1
    record = {"output": str(args.out), **result.layout.to_dict()}
    status = 0
    if readers is not None:
        record["ocr"] = read_back(result, readers[0], second=readers[1])
        misread = [role for role in ("title", "author") if role in record["ocr"] and not record["ocr"][role]["exact"]]
        if misread:
            print(f"cover-hpc: {args.out} written, but OCR did not read back the {' and '.join(misread)} exactly "
                  "(see ocr in the record); check the cover", file=sys.stderr)  # fmt: skip
            status = 4
    print(json.dumps(record, indent=2, ensure_ascii=False))
    return status


def cmd_make_tiny_clip(args: argparse.Namespace) -> int:
    env.set_offline_defaults()
    from cover_hpc.demo.tiny_clip import build_tiny_open_clip, build_tiny_transformers_clip

    build = build_tiny_open_clip if args.backend == "open_clip" else build_tiny_transformers_clip
    print(f"tiny {args.backend} CLIP written to {build(args.dir, seed=args.seed)}")
    return 0


def stage_runs(spec: ExperimentSpec, wanted: Sequence[str] | None, command: str = "") -> list[Run]:
    """The runs a stage command works on, with folders of an earlier release adopted first. Of a
    search, its trials that have started; ``infer`` without --run uses the experiment's best."""
    exp = ExperimentPaths.of(spec.output_dir, spec.name)
    if spec.sweep.search.sampler != "none":
        from cover_hpc.orchestrate import search

        runs = [claim.run for claim in search.claimed(exp, spec)]
        if not runs:
            raise SpecError([Problem("sweep.search", f"no trial of the search in {exp.root} has started; submit it")])
        winner = search.winner(exp)
        if command == "infer" and not wanted:
            if winner is None:
                raise SpecError([Problem("sweep.search", "the search has no best run yet (no trial finished and "
                                         "validated); name one with --run, or wait")])  # fmt: skip
            print(f"cover-hpc: the search's best run is {winner}: covers with its best LoRA", file=sys.stderr)
            wanted = [winner]
        return select_runs(runs, wanted)
    runs = expand(spec)
    for each in adopt_earlier_runs(exp, runs):
        print(f"cover-hpc: {each.describe()}", file=sys.stderr)
    return select_runs(runs, wanted)


def run_paths(spec: ExperimentSpec, run: Run) -> RunPaths:
    return ExperimentPaths.of(spec.output_dir, spec.name).run(run.run_id)


def select_runs(runs: Sequence[Run], wanted: Sequence[str] | None) -> list[Run]:
    if not wanted:
        return list(runs)
    by_id = {run.run_id: run for run in runs}
    unknown = [w for w in wanted if w not in by_id]
    if unknown:
        raise SpecError([Problem("", f"no run {u!r} in this spec; runs: {', '.join(by_id)}") for u in unknown])
    return [by_id[w] for w in wanted]


def cmd_train(args: argparse.Namespace) -> int:
    """Train runs in this process (or, under torchrun/srun, in every rank of it)."""
    env.set_offline_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cover_hpc.stages.train import TrainingDiverged, check_inputs, finished_result, train
    from cover_hpc.store.data import DataError
    from cover_hpc.store.runs import prepare_run

    spec = load_spec(args.spec, args.overrides)
    status = 0
    for run in stage_runs(spec, args.run):
        if finished_result(run_paths(spec, run)) is not None:
            print(f"{run.run_id}: already finished ({run_paths(spec, run).train_result}); left as it is")
            continue
        try:
            check_inputs(run.spec)  # a refused input writes nothing, not even config.json
            paths = prepare_run(spec, run)
            result = train(run.spec, paths, stop_after=args.stop_after)
        except (DataError, TrainingDiverged, FileNotFoundError) as error:
            print(f"cover-hpc: run {run.run_id}: {error}", file=sys.stderr)
            return 1
        print(f"{run.run_id}: {result.status} at step {result.steps}/{result.total_steps}, loss {result.final_loss}")
        status = max(status, 0 if result.status == "finished" else 3)
    return status


def cmd_resume(args: argparse.Namespace) -> int:
    """Train a run that a search stopped early to its last step, then validate it."""
    env.set_offline_defaults()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cover_hpc.stages.train import train
    from cover_hpc.stages.validate import validate
    from cover_hpc.store.records import TrainResult, read_record

    spec = load_spec(args.spec, args.overrides)
    (run,) = stage_runs(spec, [args.run_id])
    paths = run_paths(spec, run)
    result = read_record(paths.train_result, TrainResult) if paths.train_result.is_file() else None
    if result is None or result.status != "pruned":
        state = "has not finished training" if result is None else f"finished ({result.status})"
        print(f"cover-hpc: run {run.run_id} was not stopped early: it {state}; `cover-hpc train` continues an "
              "unfinished run", file=sys.stderr)  # fmt: skip
        return 1
    os.replace(paths.train_result, paths.train / "stopped_early.json")  # kept: where and why the search stopped it
    print(f"{run.run_id}: stopped early at step {result.steps}; training on to step {result.total_steps}", flush=True)
    trained = train(run.spec, paths)
    if trained.status != "finished":
        print(f"{run.run_id}: {trained.status} at step {trained.steps}; run resume again to go on", flush=True)
        return 3
    validation = validate(run.spec, paths)
    chosen = ""
    if validation and validation.get("best"):
        best = validation["best"]
        chosen = f"; best is step {best['step']} ({validation['select_by']} {_format_metric(best['value'])})"
    print(f"{run.run_id}: finished at step {trained.steps}{chosen}. The search's ranking keeps the trial as stopped "
          "early.")  # fmt: skip
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cover-hpc",
        description="Fine-tune SDXL with LoRA for book covers, from a YAML spec to SLURM arrays.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    overrides_help = "dotted.key=value overrides, applied after the YAML file (e.g. optim.lr_unet=2e-4)"
    plan = commands.add_parser(
        "plan",
        help="validate a spec and list its runs; submits nothing",
        description="Validate a spec and print the runs it expands to.",
    )
    plan.add_argument("spec", type=Path, help="experiment spec (YAML)")
    plan.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    plan.add_argument("--json", action="store_true", help="print a JSON list of {run_id, swept values}")
    plan.add_argument(
        "--resources",
        action="store_true",
        help="estimate each run's peak memory per rank (weights, adapters, gradients, optimiser, activations, "
        "latents), step time, hours and the GPU-hours of the sweep or search",
    )
    plan.add_argument(
        "--gpu",
        choices=["h100", "h200", "a100", "l40s", "a40", "a10", "l4", "v100"],
        default="h100",
        help="GPU kind of the step-time estimate when slurm.constraint names none (default h100)",
    )
    plan.add_argument(
        "--train-images",
        type=int,
        metavar="N",
        help="training images, for runs counted in epochs whose data.train_dir cannot be read here",
    )
    plan.set_defaults(func=cmd_plan)

    keys = commands.add_parser(
        "keys",
        help="list every spec key with its default and meaning",
        description="List every spec key with its default and meaning.",
    )
    keys.add_argument(
        "section", nargs="?", help="only this section (model, data, lora, optim, ...) or one dotted key (optim.lr_unet)"
    )
    keys.set_defaults(func=cmd_keys)

    tiny = commands.add_parser(
        "make-tiny-model",
        help="build the tiny random SDXL pipeline into DIR",
        description="Build a tiny SDXL-structured pipeline with random weights.",
    )
    tiny.add_argument("dir", type=Path, help="output folder (loadable with StableDiffusionXLPipeline.from_pretrained)")
    tiny.add_argument("--seed", type=int, default=0, help="weight seed (default 0)")
    tiny.set_defaults(func=cmd_make_tiny_model)

    data = commands.add_parser(
        "make-demo-data",
        help="draw the synthetic book-cover set into DIR",
        description="Draw synthetic book covers in imagefolder layout.",
    )
    data.add_argument("dir", type=Path, help="output folder (train_set/, test_set/, books.jsonl)")
    data.add_argument("--seed", type=int, default=42, help="seed of books, covers and split (default 42)")
    data.add_argument("--num-books", type=int, default=64, help="books split into train and test (default 64)")
    data.add_argument("--extra-books", type=int, default=8, help="unseen books added to books.jsonl (default 8)")
    data.set_defaults(func=cmd_make_demo_data)

    prep = commands.add_parser(
        "prepare-data",
        help="build train_set/ and test_set/ (imagefolder) and a data report from raw book records and covers",
        description="Read book records and cover images (bookdb: text/<sub>/<id>.txt with image/<sub>/<id>.jpg; "
        "or a JSONL or CSV file of id, title, publisher, genres, description, author, image), decode and check "
        "every cover, drop unusable books and duplicate covers (with their reasons), caption the rest with the "
        "book-cover template and split them by a hash of the id. Writes OUT/train_set, OUT/test_set, "
        "OUT/test_books.jsonl and OUT/report/. Running it again redoes only what changed.",
    )
    prep.add_argument("source", type=Path, help="raw data: a bookdb folder, a .jsonl or .csv file, or a folder of them")
    prep.add_argument("out", type=Path, help="output folder (not inside SOURCE)")
    prep.add_argument("--format", default="auto", choices=["auto", "bookdb", "jsonl", "csv"],
                      help="source format (default auto: from the file name or the folder's contents)")  # fmt: skip
    prep.add_argument("--test-fraction", type=float, default=0.08,
                      help="share of books held out in test_set, reached on average (default 0.08)")  # fmt: skip
    prep.add_argument("--seed", type=int, default=42, help="seed of the train/test split (default 42)")
    prep.add_argument("--min-side", type=int, default=305, help="drop covers with a side under N px (default 305)")
    prep.add_argument("--orientation", choices=["portrait", "any"], default="portrait",
                      help="portrait (default): keep only covers with width < height; any: keep all")  # fmt: skip
    prep.add_argument("--workers", type=int, default=0, metavar="N",
                      help="decoding processes (default: the CPUs this process may use)")  # fmt: skip
    prep.add_argument("--lowercase", action="store_true",
                      help="research captions: lower case, punctuation spaced. The template that training, "
                      "validation and inference share always writes them, so this changes nothing")  # fmt: skip
    prep.add_argument("--max-caption-tokens", type=int, default=DataConfig().max_caption_tokens, metavar="N",
                      help="caption budget drawn in the report's token plot (data.max_caption_tokens, default "
                      "%(default)s)")  # fmt: skip
    prep.add_argument("--overwrite", action="store_true",
                      help="replace a dataset in OUT prepared from another source, or files prepare-data did not "
                      "write (only train_set/, test_set/, test_books.jsonl and report/ are removed)")  # fmt: skip
    prep.add_argument("--dry-run", action="store_true", help="report what would be kept and dropped; write nothing")
    prep.set_defaults(func=cmd_prepare_data)

    train = commands.add_parser(
        "train",
        help="train runs of a spec here (one process, or each rank under torchrun/srun)",
        description="Train the runs of a spec in this process, resuming from their newest complete checkpoint. "
        "Exit status: 0 finished, 3 stopped on request (run again to resume), 1 failed, 2 bad spec.",
    )
    train.add_argument("spec", type=Path, help="experiment spec (YAML)")
    train.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    train.add_argument("--run", action="append", metavar="RUN_ID", help="train only this run (repeatable)")
    train.add_argument(
        "--stop-after", type=int, metavar="N", help="checkpoint and stop after step N, as a preemption would"
    )
    train.set_defaults(func=cmd_train)

    resume = commands.add_parser(
        "resume",
        help="train a run that a search stopped early on to its last step (a re-submit never does)",
        description="Resume, on purpose, a search trial that early stopping ended: train it to train.max_steps "
        "in this process, then validate it. Exit status: 0 done, 3 stopped on request, 1 not a stopped run.",
    )
    resume.add_argument("spec", type=Path, help="experiment spec (YAML)")
    resume.add_argument("run_id", help="the run (trial) to resume, as status lists it")
    resume.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    resume.set_defaults(func=cmd_resume)

    submit = commands.add_parser(
        "submit",
        help="queue every unfinished stage of every run (SLURM), or run them here (local, debug)",
        description="Expand the spec and submit: a SLURM array for training, validation after each run, "
        "sharded inference after that, a report at the end. Finished stages are skipped and runs with "
        "queued or running jobs are left alone, so submitting again is safe.",
    )
    submit.add_argument("spec", type=Path, help="experiment spec (YAML)")
    submit.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    submit.add_argument("--executor", choices=["slurm", "local", "debug"],
                        help="slurm (default where sbatch answers), local (submitit's local executor, this machine), "
                        "debug (in this process)")  # fmt: skip
    submit.add_argument(
        "--profile", help="cluster profile NAME.yaml from $COVER_HPC_PROFILES, ./slurm/profiles or the package's own"
    )
    submit.add_argument("--dry-run", action="store_true", help="print the sbatch scripts and the graph; submit nothing")
    submit.add_argument("--wait", action="store_true", help="wait until every job of this submission has ended")
    submit.set_defaults(func=cmd_submit)

    fetch = commands.add_parser(
        "fetch",
        help="download the models a spec names into the Hugging Face cache (needs network: the login node)",
        description="Download every model the spec's runs name (model.pretrained, model.vae, "
        "validate.clip_model) into the local Hugging Face cache, only the files their loaders read "
        "(model.variant's weights, no flax/onnx/single-file duplicates), then check offline that each "
        "resolves and print where. Compute nodes then load them with HF_HUB_OFFLINE=1.",
    )
    fetch.add_argument("spec", type=Path, help="experiment spec (YAML)")
    fetch.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    fetch.set_defaults(func=cmd_fetch)

    status = commands.add_parser("status", help="a table of the runs of a submitted experiment",
                                 description="Per run: swept values, stage states, SLURM states, progress, loss, "
                                 "CLIP score, requeues.")  # fmt: skip
    status.add_argument("experiment", type=Path, help="experiment folder (<output_dir>/<name>)")
    status.add_argument("--json", action="store_true", help="machine-readable (documented in the README)")
    status.set_defaults(func=cmd_status)

    logs = commands.add_parser("logs", help="print the job logs of one run's stage",
                               description="Print the submitit logs of a run's stage.")  # fmt: skip
    logs.add_argument("experiment", type=Path, help="experiment folder")
    logs.add_argument("run", help="run id")
    logs.add_argument("--stage", choices=["train", "validate", "infer"], default="train")
    logs.set_defaults(func=cmd_logs)

    cancel = commands.add_parser("cancel", help="cancel the queued and running jobs of an experiment",
                                 description="scancel every job of the experiment's last submission.")  # fmt: skip
    cancel.add_argument("experiment", type=Path, help="experiment folder")
    cancel.set_defaults(func=cmd_cancel)

    validate = commands.add_parser(
        "validate", help="score every snapshot of trained runs on held-out books and pick the best",
        description="Validate trained runs: every LoRA point (base model, snapshots, final) scored on held-out "
        "books (CLIP score, CMMD, OCR title legibility, held-out loss); the best by validate.select_by is copied "
        "to <run>/best/. Writes <run>/validate/<key>/validation.json and selection.json.",
    )  # fmt: skip
    validate.add_argument("spec", type=Path, help="experiment spec (YAML)")
    validate.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    validate.add_argument("--run", action="append", metavar="RUN_ID", help="only this run (repeatable)")
    validate.add_argument("--task", type=int, help="only this task's points (of validate.tasks; default: all)")
    validate.set_defaults(func=cmd_validate)

    infer = commands.add_parser("infer", help="generate covers for a books file with trained runs",
                                description="Batch inference over infer.books_file, shard by shard.")  # fmt: skip
    infer.add_argument("spec", type=Path, help="experiment spec (YAML)")
    infer.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    infer.add_argument("--run", action="append", metavar="RUN_ID", help="only this run (repeatable)")
    infer.add_argument("--shard", type=int, help="only this shard (default: all, one after another)")
    infer.set_defaults(func=cmd_infer)

    report = commands.add_parser("report", help="write the HTML report and markdown summary of an experiment",
                                 description="Write <experiment>/report/index.html and summary.md.")  # fmt: skip
    report.add_argument("experiment", type=Path, help="experiment folder (<output_dir>/<name>)")
    report.set_defaults(func=cmd_report)

    clip = commands.add_parser("make-tiny-clip", help="build a tiny random CLIP scorer into DIR",
                               description="Build a tiny random CLIP model for the CLIP-score path.")  # fmt: skip
    clip.add_argument("dir", type=Path, help="output folder")
    clip.add_argument("--backend", choices=["transformers", "open_clip"], default="transformers")
    clip.add_argument("--seed", type=int, default=3, help="weight seed (default 3)")
    clip.set_defaults(func=cmd_make_tiny_clip)

    typeset = commands.add_parser(
        "typeset",
        help="typeset a title (and author) over an image: a finished cover",
        description="Set the title as large as fits in at most 3 lines and the author at no less than 0.4 of "
        "its size, off the art's subject and faces, each over calm art or with the least treatment that makes "
        "the pixels around its letters reach 4.5:1 (a shadow, a wash, a panel in from the edge). Prints the "
        "layout record as JSON. "
        "Exit status: 0 written, 1 not written (text that does not fit, a character no font has, a bad "
        "image), 4 written but --verify's OCR did not read the text back exactly.",
    )
    typeset.add_argument("image", type=Path, help="the art (any image PIL reads)")
    typeset.add_argument("--title", required=True, help="the book's title, exactly as it must appear")
    typeset.add_argument("--author", help="the author line (optional)")
    typeset.add_argument("--genres", action="append", metavar="G1,G2",
                         help="the book's genres, comma-separated (repeatable): they choose the face")  # fmt: skip
    typeset.add_argument("--font", help="serif, sans, display, or a font file (default: by genre)")
    typeset.add_argument("-o", "--out", type=Path, required=True, help="the finished cover (PNG, JPEG...)")
    typeset.add_argument("--size", type=cover_size, metavar="WxH",
                         help="the cover's size in pixels, e.g. 1600x2560 (default: the art's own); the art is "
                         "resampled once, cropped to the aspect, never stretched")  # fmt: skip
    typeset.add_argument("--page-read", choices=("auto", "off"), default="auto",
                         help="read the finished cover whole with tesseract's Latin model and, where it does not "
                         "find a text, wash the art or change the faces and lay out again (auto, the default, "
                         "where tesseract-ocr-script-latn is installed; the record's page_read says what it did), "
                         "or not (off)")  # fmt: skip
    typeset.add_argument("--verify", action="store_true", help="read the text back with OCR and report it")
    typeset.add_argument("--ocr-engine", default="auto", help="OCR engine for --verify (default auto)")
    typeset.add_argument("--ocr-second", choices=("auto", "none"), default="auto",
                         help="--verify: a line the first engine misses is read again by tesseract's Latin "
                         "model (auto, the default; needs tesseract-ocr-script-latn), or not (none)")  # fmt: skip
    typeset.set_defaults(func=cmd_typeset)

    demo = commands.add_parser(
        "demo",
        help="build the tiny model and covers, then run the demo spec end to end",
        description="Build the tiny model and demo covers under ./demo and run the demo spec.",
    )
    demo.add_argument("--spec", type=Path, default=DEMO_SPEC, help=f"spec to run (default {DEMO_SPEC})")
    demo.add_argument("overrides", nargs="*", metavar="key=value", help=overrides_help)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # argparse stops collecting positional overrides at the first option; take the rest too
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        status = int(args.func(args))
        sys.stdout.flush()  # a closed pipe is found here, not in the interpreter's flush at exit
        return status
    except SpecError as error:
        print(f"cover-hpc: {error}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as error:  # bad input named by the stage: no traceback
        print(f"cover-hpc: {error}", file=sys.stderr)
        return 1
    except Busy as error:  # another process works on the same experiment or run
        print(f"cover-hpc: {error}; wait for it to finish, or stop it, then run this again", file=sys.stderr)
        return 3
    except BrokenPipeError:
        if not stdout_reader_gone():  # a pipe to a child process broke: that is an error of the command's
            raise
        # the reader of our output went away (`cover-hpc keys | head`): stop quietly; the rest of what is
        # printed, and the interpreter's flush at exit, go nowhere instead of raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as a shell reports a command ended by SIGPIPE


def stdout_reader_gone() -> bool:
    """Whether standard output is a pipe whose reading end has been closed."""
    import select

    try:
        descriptor = sys.stdout.fileno()
    except (OSError, ValueError):  # replaced by an object without a descriptor (a test's capture)
        return False
    poller = select.poll()
    poller.register(descriptor, select.POLLOUT)
    return any(events & select.POLLERR for _, events in poller.poll(0))


if __name__ == "__main__":
    sys.exit(main())
