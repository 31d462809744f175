"""What early stopping saves in a search: the same trials run twice, with successive halving and trained
to the end, each through `cover-hpc submit`.

    python benchmarks/search_early_stopping.py [--config configs/demo_search.yaml] [--workdir DIR]
        [--trials 6] [--max-steps 16] [--repeat 1] [key=value ...] [--json out.json]

Side "early stopping" is the spec as written (sweep.search.grace_steps and reduction_factor); side
"to the end" is the same spec with sweep.search.grace_steps=0. A random search is seeded per task, so
both sides train the same trials (the script checks that their run ids match). Each side gets its own
output_dir and latent cache under the work folder (<workdir>/round-<i>/<side>; both start cold) and
runs as one `cover-hpc submit SPEC --executor local --wait` command, early stopping first; with
--repeat N the rounds alternate the order (ABBA) and the times reported are medians, and the
fastest round of each side (the one least slowed by other work). --trials and
--max-steps become sweep.search.trials= and train.max_steps= overrides; further key=value overrides
go to both sides. The demo assets (tiny model, covers, CLIP scorer) are built under demo/ if missing.

Read back from each experiment folder:
  steps:    <exp>/<run>/train/train_result.json "steps" and "status" (finished / pruned), per trial;
  value:    the trial's value by the search metric (its best validation point) and its state, from
            the search's Optuna journal;
  time:     wall-clock around the whole command (start-up, training, rung scoring, validation, report)
            and the sum of the trials' training wall_time_s;
  winner:   <exp>/best/search.json "winner" (run_id, value).
The load average is printed before and after each side: other work on the machine slows both, and
by far more than the difference measured (the same trial's training took 3 s in one round and 130 s
in another on a 2-core box running test suites). CPU seconds (user + system of the command and the
processes it waited for) are printed too, but grow with the load as well (threads that wait for a
busy core spin). On a shared machine, run several rounds and trust the fastest of each side.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, header, table, write_json

SIDES = {"early stopping": [], "to the end": ["sweep.search.grace_steps=0"]}
TASK_LINE = re.compile(r"^\[search task (\d+)\] .*\((\d+) s\)$")


def cli() -> list[str]:
    exe = Path(sys.executable).parent / "cover-hpc"
    return [str(exe)] if exe.is_file() else [sys.executable, "-m", "cover_hpc.cli"]


def cpu_seconds() -> float:
    """User + system CPU seconds of every finished child process (and the children they waited for)."""
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def load() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def ensure_demo() -> None:
    from cover_hpc.cli import prepare_demo_assets

    prepare_demo_assets(REPO / "demo")


def run_side(name: str, config: Path, overrides: list[str], out: Path) -> dict[str, Any]:
    """One `cover-hpc submit` of the search into ``out``; its figures, read from the experiment folder."""
    from cover_hpc.orchestrate.search import leaderboard
    from cover_hpc.spec.load import load_spec
    from cover_hpc.store.paths import ExperimentPaths

    every = [*overrides, f"output_dir={out / 'experiments'}", f"data.cache_dir={out / 'cache'}"]
    command = [*cli(), "submit", str(config), *every, "--executor", "local", "--wait"]
    spec = load_spec(config, every)
    exp = ExperimentPaths.of(spec.output_dir, spec.name)
    if exp.root.exists():
        sys.exit(f"{exp.root} exists already: give --workdir an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    before = load()
    print(f"# {name}: load average {before} before; {' '.join(command)}", flush=True)
    cpu0, t0 = cpu_seconds(), time.perf_counter()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=3600,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    wall, cpu = time.perf_counter() - t0, cpu_seconds() - cpu0
    after = load()
    (out / "submit.log").write_text(done.stdout + done.stderr)
    if done.returncode:
        sys.exit(
            f"{name}: cover-hpc submit failed ({done.returncode}); see {out / 'submit.log'}\n{done.stderr[-2000:]}"
        )
    task_s = {int(m[1]): int(m[2]) for m in map(TASK_LINE.match, done.stdout.splitlines()) if m}

    trials = {}
    for row in leaderboard(exp, spec):
        run = exp.run(row["run_id"]).root
        result = json.loads((run / "train" / "train_result.json").read_text())
        points = [len(json.loads(p.read_text())["points"]) for p in run.glob("validate/*/validation.json")]
        trials[row["task"]] = {"task": row["task"], "run_id": row["run_id"], "params": row["params"],
                               "status": result["status"], "steps": result["steps"], "state": row["state"],
                               "value": row["value"], "train_wall_s": result["wall_time_s"],
                               "points": sum(points), "task_s": task_s.get(row["task"])}  # fmt: skip
    best = exp.best / "search.json"
    winner = json.loads(best.read_text())["winner"] if best.is_file() else None
    rungs = exp.search_decisions.read_text().splitlines() if exp.search_decisions.is_file() else []
    side = {"name": name, "command": command, "experiment": str(exp.root), "wall_s": wall, "cpu_s": cpu,
            "load_before": before, "load_after": after, "trials": [trials[t] for t in sorted(trials)],
            "steps": sum(t["steps"] for t in trials.values()),
            "train_wall_s": sum(t["train_wall_s"] for t in trials.values()),
            "pruned": sum(t["status"] == "pruned" for t in trials.values()),
            "points": sum(t["points"] for t in trials.values()), "rung_decisions": len(rungs),
            "budget_steps": len(trials) * (spec.train.max_steps or 0),
            "winner": winner and {"run_id": winner["run_id"], "value": winner["value"]}}  # fmt: skip
    print(f"# {name}: {wall:.0f} s, load average {after} after", flush=True)
    return side


def outcome(side: dict[str, Any]) -> list[Any]:
    """What does not depend on the machine's speed: each trial's steps and status, and the winner."""
    return [[(t["run_id"], t["steps"], t["status"]) for t in side["trials"]], (side["winner"] or {}).get("run_id")]


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def short(run_id: str | None) -> str:
    return (run_id or "-").rsplit("-", 1)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "demo_search.yaml")
    parser.add_argument("--workdir", type=Path, default=None, help="an empty folder for both sides (default: temp)")
    parser.add_argument("--trials", type=int, default=None, help="sweep.search.trials (default: the config's)")
    parser.add_argument("--max-steps", type=int, default=None, help="train.max_steps (default: the config's)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds; odd rounds run the sides in reverse order (default 1)")  # fmt: skip
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="more overrides, for both sides")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    overrides = list(args.overrides)
    overrides += [f"sweep.search.trials={args.trials}"] if args.trials is not None else []
    overrides += [f"train.max_steps={args.max_steps}"] if args.max_steps is not None else []
    info = header("Early stopping in a search: the same trials with successive halving and trained to the end")
    config, json_out = args.config.resolve(), args.json and str(Path(args.json).resolve())
    workdir = args.workdir and args.workdir.resolve()
    os.chdir(REPO)  # where `cover-hpc submit` runs: the spec's relative paths (demo/...) resolve from here
    ensure_demo()

    rounds: list[dict[str, dict[str, Any]]] = []
    with tempfile.TemporaryDirectory() as scratch:
        root = workdir or Path(scratch).resolve()
        for index in range(args.repeat):
            order = list(SIDES) if index % 2 == 0 else list(SIDES)[::-1]  # ABBA: a drift in load hits both
            sides = {}
            for name in order:
                out = root / f"round-{index}" / name.replace(" ", "-")
                sides[name] = run_side(f"{name} (round {index})", config, [*overrides, *SIDES[name]], out)
            rounds.append(sides)
    stop, full = rounds[0]["early stopping"], rounds[0]["to the end"]

    ids = [[t["run_id"] for t in side["trials"]] for side in (stop, full)]
    same_trials = ids[0] == ids[1]
    if not same_trials:
        print(f"# WARNING: the sides trained different trials:\n#   {ids[0]}\n#   {ids[1]}")
    for index, sides in enumerate(rounds[1:], 1):
        for name, side in sides.items():
            first = rounds[0][name]
            if outcome(side) != outcome(first):
                print(f"# WARNING: round {index} of {name} trained or chose differently from round 0")
    by_run = {t["run_id"]: t for t in full["trials"]}
    rows = []
    for trial in stop["trials"]:
        other = by_run.get(trial["run_id"], {})
        rows.append({"task": trial["task"], "run": short(trial["run_id"]), "ES steps": trial["steps"],
                     "ES status": trial["status"], "ES points": trial["points"], "ES task s": trial["task_s"],
                     "ES value": fmt(trial["value"]), "end steps": other.get("steps"),
                     "end points": other.get("points"), "end task s": other.get("task_s"),
                     "end value": fmt(other.get("value"))})  # fmt: skip
    print("\nPer trial, round 0 (ES: early stopping; end: trained to the end; points: validation points scored;")
    print("task s: the trial's whole task as `cover-hpc submit` prints it; value: the trial's best held-out value)")
    print(table(rows, list(rows[0])))
    totals = [{"round": index, "side": name, "pruned": f"{side['pruned']} of {len(side['trials'])}",
               "steps trained": f"{side['steps']} of {side['budget_steps']}", "points scored": side["points"],
               "wall s": side["wall_s"], "CPU s": side["cpu_s"], "train wall_time_s": side["train_wall_s"],
               "load avg before -> after": f"{side['load_before']} -> {side['load_after']}",
               "winner": short((side["winner"] or {}).get("run_id")), "winner value":
               fmt((side["winner"] or {}).get("value"))}
              for index, sides in enumerate(rounds) for name, side in sorted(sides.items())]  # fmt: skip
    print()
    print(table(totals, list(totals[0])))
    median = {key: {name: statistics.median(sides[name][key] for sides in rounds) for name in SIDES}
              for key in ("wall_s", "cpu_s", "train_wall_s")}  # fmt: skip
    fastest = {name: min(sides[name]["wall_s"] for sides in rounds) for name in SIDES}
    same_winner = (stop["winner"] or {}).get("run_id") == (full["winner"] or {}).get("run_id")
    es, end = "early stopping", "to the end"
    summary = {"rounds": len(rounds), "median": median, "fastest_wall_s": fastest,
               "steps_ratio": ratio(stop["steps"], full["steps"]),
               "wall_ratio": ratio(median["wall_s"][es], median["wall_s"][end]),
               "cpu_ratio": ratio(median["cpu_s"][es], median["cpu_s"][end]),
               "train_wall_ratio": ratio(median["train_wall_s"][es], median["train_wall_s"][end]),
               "fastest_wall_ratio": ratio(fastest[es], fastest[end]),
               "same_trials": same_trials, "same_winner": same_winner}  # fmt: skip
    what = f"medians of {len(rounds)} rounds" if len(rounds) > 1 else "one round"
    print(f"\nearly stopping trained {stop['steps']} of {full['steps']} steps ({summary['steps_ratio']:.2f}x) in "
          f"{median['wall_s'][es]:.0f} s wall / {median['cpu_s'][es]:.0f} s CPU against {median['wall_s'][end]:.0f} s"
          f" / {median['cpu_s'][end]:.0f} s ({summary['wall_ratio']:.2f}x wall, {summary['cpu_ratio']:.2f}x CPU, "
          f"{what}; fastest {fastest[es]:.0f} s against {fastest[end]:.0f} s, {summary['fastest_wall_ratio']:.2f}x);"
          f" winner {'the same' if same_winner else 'differs'}: "
          f"{short((stop['winner'] or {}).get('run_id'))} ({fmt((stop['winner'] or {}).get('value'))}) against "
          f"{short((full['winner'] or {}).get('run_id'))} ({fmt((full['winner'] or {}).get('value'))})")  # fmt: skip
    write_json(json_out, {**info, "overrides": overrides, "rounds": rounds, "summary": summary})


if __name__ == "__main__":
    main()
