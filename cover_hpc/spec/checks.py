"""Value checks of a built spec: ranges, sizes, cross-field rules and the sweep.

Type checks happen while the spec is built (:mod:`cover_hpc.spec.schema`); this module checks what
types cannot say. Every rule reports the dotted key, the bad value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import re
import unicodedata
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from cover_hpc.spec.schema import LR_SCHEDULES, SIZE_MULTIPLE, ExperimentSpec, Problem
from cover_hpc.spec.vocab import FONT_ROLES, METRICS

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # used with fullmatch: `$` also matches before a \n
#: Keys a sweep may not vary: they name the experiment or the sweep itself.
UNSWEEPABLE = ("name", "output_dir", "sweep")

Rule = tuple[str, Callable[[Any], bool], str]

#: How early SLURM may send a job's --signal warning ("up to 60 seconds earlier than specified").
SIGNAL_EARLY_S = 60


def _rules(spec: ExperimentSpec) -> list[Rule]:
    positive = (lambda v: v >= 1, "must be 1 or more")
    non_negative = (lambda v: v >= 0, "must be 0 or more")
    above_zero = (lambda v: v > 0, "must be greater than 0")
    optional_positive = (lambda v: v is None or v >= 1, "must be 1 or more (or empty)")
    rules: list[Rule] = [
        ("name", lambda v: bool(_NAME_RE.fullmatch(v)), "must be letters, digits, '.', '_' or '-'"),
        ("data.max_caption_tokens", *positive),
        ("data.num_workers", *non_negative),
        ("data.caption_dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
        ("lora.rank", *positive),
        ("lora.alpha", *above_zero),
        ("lora.dropout", lambda v: 0 <= v < 1, "must be in [0, 1)"),
        ("lora.parts", lambda v: len(v) > 0, "must name at least one part to train"),
        ("lora.parts", lambda v: len(set(v)) == len(v), "must not repeat a part"),
        ("optim.lr_unet", *above_zero),
        ("optim.lr_text_encoder", *above_zero),
        ("optim.lr_text_encoder_2", *above_zero),
        ("optim.weight_decay", *non_negative),
        ("optim.betas", lambda v: all(0 <= b < 1 for b in v), "both betas must be in [0, 1)"),
        ("optim.eps", *above_zero),
        ("optim.max_grad_norm", *non_negative),
        ("optim.schedule", lambda v: v in LR_SCHEDULES, f"must be one of {', '.join(LR_SCHEDULES)}"),
        ("optim.warmup_steps", *non_negative),
        ("train.batch_size", *positive),
        ("train.epochs", *positive),
        ("train.max_steps", *optional_positive),
        ("train.grad_accum", *positive),
        ("train.checkpoint_every", *positive),
        ("train.checkpoints_kept", *positive),
        ("train.min_snr_gamma", lambda v: v is None or v > 0, "must be greater than 0 (or empty)"),
        ("train.noise_offset", *non_negative),
        ("train.log_every", *positive),
        ("train.ema_decay", lambda v: 0 < v < 1, "must be in (0, 1)"),
        ("train.ema_warmup_steps", *non_negative),
        (
            "distributed.zero_stage",
            lambda v: 0 <= v <= 2,
            "must be 0, 1 or 2 (stage 3 partitions the frozen base weights, which LoRA saving here does not gather)",
        ),
        ("distributed.timeout_min", *positive),
        ("validate.num_prompts", *positive),
        ("validate.steps", *positive),
        ("validate.guidance", *non_negative),
        ("validate.batch_size", *positive),
        ("validate.every_steps", *optional_positive),
        ("validate.at_steps", lambda v: all(s >= 1 for s in v), "every step must be 1 or more"),
        ("validate.select_by", lambda v: v in METRICS, f"must be one of {', '.join(METRICS)}"),
        ("validate.tasks", *positive),
        ("validate.loss_images", *non_negative),
        (
            "validate.loss_timesteps",
            lambda v: len(v) > 0 and all(0 <= t < 1000 for t in v),
            "must list timesteps in 0..999 (the scheduler's training range)",
        ),
        ("infer.checkpoint", _is_checkpoint, "must be best, final or a step number (1 or more)"),
        ("infer.shards", *positive),
        ("infer.steps", *positive),
        ("infer.guidance", *non_negative),
        ("infer.batch_size", *positive),
        ("slurm.nodes", *positive),
        ("slurm.gpus_per_node", *non_negative),
        ("slurm.tasks_per_node", *optional_positive),
        ("slurm.cpus_per_gpu", *positive),
        ("slurm.mem_per_gpu_gb", *positive),
        ("slurm.time_min", *positive),
        ("slurm.signal_lead_s", *non_negative),
        ("slurm.max_requeues", *non_negative),
        ("slurm.array_parallelism", *positive),
    ]
    for part in ("unet", "text_encoder", "text_encoder_2"):
        if part in spec.lora.parts:
            rules.append((f"lora.{part}_targets", lambda v: len(v) > 0, f"must list modules ({part} is trained)"))
    return rules


def _is_checkpoint(value: str) -> bool:
    from cover_hpc.spec.vocab import parse_checkpoint

    try:
        parse_checkpoint(value)
    except ValueError:
        return False
    return True


def _get(spec: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        spec = getattr(spec, part)
    return spec


def _size_problems(key: str, size: tuple[int, int]) -> list[Problem]:
    problems = []
    for side, value in zip(("height", "width"), size, strict=True):
        if value <= 0 or value % SIZE_MULTIPLE:
            near = max(SIZE_MULTIPLE, round(value / SIZE_MULTIPLE) * SIZE_MULTIPLE)
            problems.append(
                Problem(
                    key,
                    f"{side} {value} is not a positive multiple of {SIZE_MULTIPLE} (the VAE's 8x "
                    f"downsampling times 8 for the UNet); use {near}, e.g. [1152, 896].",
                )
            )
    return problems


def count_books(path: Path) -> int:
    """Non-blank lines of a books JSONL file, counted on bytes: a line that is not UTF-8 is reported
    (file and line) and skipped by cover_hpc.store.captions.read_books, not refused here without either."""
    with path.open("rb") as handle:
        return sum(1 for line in handle if line.strip().removeprefix(b"\xef\xbb\xbf").strip())


def _step_problems(spec: ExperimentSpec) -> list[Problem]:
    """A chosen step that training never reaches (when train.max_steps says where it ends): no LoRA
    would ever be there. (validate.at_steps beyond a run's end are left out of that run, as
    snapshot_steps does: a sweep over train.max_steps may list steps only its longer runs reach.)"""
    from cover_hpc.spec.vocab import parse_checkpoint

    last = spec.train.max_steps
    if last is None:
        return []
    problems: list[Problem] = []
    try:
        chosen = parse_checkpoint(spec.infer.checkpoint)
    except ValueError:
        return problems  # reported by its own rule
    if isinstance(chosen, int) and chosen > last:
        problems.append(Problem("infer.checkpoint", f"got {chosen}; training ends at train.max_steps ({last}), so "
                                "no LoRA has that step; use best, final or a snapshot step."))  # fmt: skip
    return problems


def _cover_size_problems(spec: ExperimentSpec) -> list[Problem]:
    """infer.cover_size: two sides in the typesetter's range, and only where covers are finished."""
    size = spec.infer.cover_size
    assert size is not None
    if len(size) != 2 or not all(isinstance(side, int) and 16 <= side <= 12000 for side in size):
        return [Problem("infer.cover_size", f"got {list(size)}; give [height, width] in pixels, each 16 to 12000, "
                        "e.g. [2560, 1600] for an ebook, or leave it empty for the art's own size.")]  # fmt: skip
    if not spec.infer.typeset:
        return [Problem("infer.cover_size", f"got {list(size)} with infer.typeset off: only finished covers are "
                        "resized; turn infer.typeset on or remove infer.cover_size.")]  # fmt: skip
    return []


def value_problems(spec: ExperimentSpec) -> list[Problem]:
    """Range and cross-field problems of one resolved spec (no line numbers yet)."""
    problems: list[Problem] = []
    for key, ok, expect in _rules(spec):
        value = _get(spec, key)
        if not ok(value):
            problems.append(Problem(key, f"got {value!r}; {expect}."))
    problems += _size_problems("data.size", spec.data.size)
    problems += _size_problems("infer.size", spec.infer.size)
    slurm = spec.slurm
    if slurm.signal_lead_s + SIGNAL_EARLY_S > slurm.time_min * 60:
        # slurmctld checks for warnings every 30 s and sends them when due within that period, and
        # its documentation allows 60 s: a job whose warning comes before it could do any work
        # would be requeued again and again without progress.
        problems.append(
            Problem(
                "slurm.signal_lead_s",
                f"got {slurm.signal_lead_s}; must be shorter than slurm.time_min "
                f"({slurm.time_min} min = {slurm.time_min * 60} s) by at least {SIGNAL_EARLY_S} s, since "
                f"SLURM may send the warning up to {SIGNAL_EARLY_S} s early; lower it or raise slurm.time_min.",
            )
        )
    if slurm.gpus_per_node > 0 and slurm.tasks_per_node not in (None, slurm.gpus_per_node):
        problems.append(
            Problem(
                "slurm.tasks_per_node",
                f"got {slurm.tasks_per_node}; with GPUs there is one process per GPU "
                f"({slurm.gpus_per_node}): leave it empty.",
            )
        )
    validate = spec.validate
    needs = {"cmmd": (validate.cmmd, "validate.cmmd: true"), "ocr_similarity": (validate.ocr, "validate.ocr: true"),
             "ocr_exact": (validate.ocr, "validate.ocr: true"),
             "heldout_loss": (validate.loss_images > 0, "validate.loss_images of 1 or more")}  # fmt: skip
    if validate.select_by in needs and not needs[validate.select_by][0]:
        problems.append(Problem("validate.select_by", f"got {validate.select_by!r}, a metric that is switched off; "
                                f"set {needs[validate.select_by][1]} or choose another metric."))  # fmt: skip
    problems += _step_problems(spec)
    problems += track_problems(spec)
    if spec.infer.cover_size is not None:
        problems += _cover_size_problems(spec)
    if spec.infer.typeset and spec.infer.typeset_font:
        # a role or a readable font file: found here, not when the first cover is typeset
        refused = font_problem(spec.infer.typeset_font)
        if refused:
            problems.append(Problem("infer.typeset_font", f"{refused}; use serif, sans, display or a .ttf/.otf file."))
    books = spec.infer.books_file
    if books and Path(books).is_file():
        count = count_books(Path(books))
        if count == 0:
            problems.append(Problem("infer.books_file", f"{books} holds no books; add JSONL lines."))
        elif spec.infer.shards > count:
            problems.append(
                Problem(
                    "infer.shards",
                    f"got {spec.infer.shards}, more shards than the {count} books in {books}; use at most {count}.",
                )
            )
    return problems


#: The library each tracker key needs, installed by the ``track`` extra.
TRACK_LIBRARIES = {"track.wandb": "wandb", "track.mlflow_uri": "mlflow"}
_URI_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")


def track_problems(spec: ExperimentSpec) -> list[Problem]:
    """A tracker turned on whose library is not installed, and values no tracker takes."""
    import importlib.util

    track = spec.track
    problems = []
    wanted = {"track.wandb": track.wandb != "off", "track.mlflow_uri": bool(track.mlflow_uri.strip())}
    for key, on in wanted.items():
        library = TRACK_LIBRARIES[key]
        if on and importlib.util.find_spec(library) is None:
            value = track.wandb if key == "track.wandb" else track.mlflow_uri
            problems.append(Problem(key, f"got {value!r}, but the {library} library is not installed; install it with "
                                    "pip install 'cover-hpc[track]' (or turn the tracker off)."))  # fmt: skip
    uri = track.mlflow_uri.strip()
    if uri and _URI_SCHEME_RE.match(uri) is None and uri.startswith(("http:", "https:", "sqlite:")):
        problems.append(Problem("track.mlflow_uri", f"got {uri!r}; write http://host:port, https://... or "
                                "sqlite:///path/mlflow.db."))  # fmt: skip
    if track.images < 0:
        problems.append(Problem("track.images", f"got {track.images}; must be 0 or more."))
    for tag in track.tags:
        if not tag.strip() or len(tag) > 64:
            problems.append(Problem("track.tags", f"got {tag!r}; a tag is 1 to 64 characters."))
    return problems


def font_problem(font: str) -> str | None:
    """Why ``font`` is neither a typesetting role nor a font file that can be read, or None."""
    if font in FONT_ROLES:
        return None
    path = Path(font).expanduser()
    if not path.is_file():
        return f"font {font!r}: not a role ({', '.join(FONT_ROLES)}) and no such font file"
    try:  # the two readers the typesetter uses: fontTools for the character map, FreeType to draw
        from fontTools.ttLib import TTFont
        from PIL import ImageFont

        with TTFont(str(path), fontNumber=0, lazy=True) as face:
            face.getBestCmap()
        ImageFont.truetype(str(path), size=12, index=0)
    except Exception as error:  # fontTools and FreeType each raise their own kinds
        return f"font {font!r}: not a font file that can be read ({error})"
    return None


DISTRIBUTIONS = ("uniform", "log_uniform", "int", "choice")


def _number(value: Any) -> bool:
    """A finite number, or its text (YAML reads 1e-6, written without a dot, as a string)."""
    if isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _distribution_problems(path: str, key: str, dist: Any) -> list[Problem]:
    """The problems of one ``sweep.search.space`` entry (``path``), a distribution over ``key``."""
    from cover_hpc.spec.schema import _Invalid, coerce, field_type

    if not isinstance(dist, dict):
        return [
            Problem(path, f"got {dist!r}; give a mapping such as {{distribution: log_uniform, low: 1e-5, high: 1e-3}}.")
        ]
    kind = dist.get("distribution")
    if kind not in DISTRIBUTIONS:
        return [Problem(f"{path}.distribution", f"got {kind!r}; use one of {', '.join(DISTRIBUTIONS)}.")]
    allowed = {"distribution", "values"} if kind == "choice" else {"distribution", "low", "high", "step"}
    unknown = sorted(set(dist) - allowed)
    if unknown:
        return [
            Problem(f"{path}.{unknown[0]}", f"is not a setting of a {kind} distribution; it takes {sorted(allowed)}.")
        ]
    tp = field_type(key)
    if kind == "choice":
        values = dist.get("values")
        if not isinstance(values, list) or not values:
            return [Problem(f"{path}.values", f"got {values!r}; give a non-empty list of values.")]
        problems = []
        for index, value in enumerate(values):
            try:
                coerce(value, tp)
            except _Invalid as invalid:
                problems.append(Problem(f"{path}.values[{index}]", f"got {value!r}; expected {invalid}."))
        return problems
    for name in ("low", "high"):
        if not _number(dist.get(name)):
            return [Problem(f"{path}.{name}", f"got {dist.get(name)!r}; give a finite number.")]
    low, high = float(dist["low"]), float(dist["high"])
    if kind == "int" and not all(float(v).is_integer() for v in (low, high)):
        return [Problem(path, f"an int distribution needs whole numbers; got low {low!r}, high {high!r}.")]
    if low >= high:
        return [Problem(f"{path}.low", f"got low {low!r} >= high {high!r}; low must be below high.")]
    if kind == "log_uniform" and low <= 0:
        return [Problem(f"{path}.low", f"got {low!r}; a log scale needs low > 0 (use uniform for a range through 0).")]
    if "step" in dist and (not _number(dist["step"]) or float(dist["step"]) <= 0):
        return [Problem(f"{path}.step", f"got {dist['step']!r}; give a positive number.")]
    problems = []
    for name, value in (("low", low), ("high", high)):
        try:
            coerce(int(value) if kind == "int" else value, tp)
        except _Invalid as invalid:
            problems.append(Problem(f"{path}.{name}", f"got {value!r}, not a value of {key}: expected {invalid}."))
    return problems


def _search_problems(spec: ExperimentSpec) -> list[Problem]:
    from cover_hpc.spec.schema import field_type

    search = spec.sweep.search
    if search.sampler == "none":
        if search.space:
            return [Problem("sweep.search.sampler", "is none, but sweep.search.space is set; choose random or tpe.")]
        return []
    problems = []
    if search.trials < 1:
        problems.append(Problem("sweep.search.trials", f"got {search.trials}; a search needs 1 trial or more."))
    if not search.space:
        problems.append(Problem("sweep.search.space", "is empty; give at least one dotted key and its distribution."))
    if spec.sweep.grid or spec.sweep.zip:
        both = sorted(set(search.space) & (set(spec.sweep.grid) | set(spec.sweep.zip)))
        where = (
            f"sweep.grid.{both[0]}" if both and both[0] in spec.sweep.grid else "sweep.zip" if both else "sweep.grid"
        )
        what = (
            f"{both[0]} is both searched and on a grid" if both else "a search cannot be combined with grid or zip axes"
        )
        problems.append(Problem(where, f"{what}; search it with a choice distribution (sweep.search.space) instead."))
    for key, dist in search.space.items():
        path = f"sweep.search.space.{key}"
        if key.split(".")[0] in UNSWEEPABLE or key.startswith("slurm."):
            problems.append(Problem(path, f"{key!r} cannot be searched; search a model, data, LoRA or training key."))
            continue
        try:
            field_type(key)
        except KeyError as error:
            problems.append(Problem(path, f"searches an unknown key {key!r}. {error.args[0]}".rstrip()))
            continue
        problems += _distribution_problems(path, key, dist)
    if search.metric not in METRICS:
        problems.append(Problem("sweep.search.metric", f"got {search.metric!r}; use one of {', '.join(METRICS)}."))
    elif spec.validate.select_by != search.metric:
        problems.append(Problem("validate.select_by", f"is {spec.validate.select_by!r} but the search ranks trials by "
                                f"{search.metric!r} (sweep.search.metric); set both to the same metric."))  # fmt: skip
    if search.reduction_factor < 2:
        problems.append(Problem("sweep.search.reduction_factor", f"got {search.reduction_factor}; use 2 or more."))
    max_steps = spec.train.max_steps
    if search.grace_steps and max_steps is None:
        problems.append(Problem("train.max_steps", "is not set; early stopping (sweep.search.grace_steps) places "
                                "its rungs at training steps, so set the trials' length in steps."))  # fmt: skip
    elif search.grace_steps < 0 or (max_steps is not None and search.grace_steps >= max_steps):
        problems.append(Problem("sweep.search.grace_steps", f"got {search.grace_steps}; the first rung must come "
                                f"before train.max_steps ({max_steps}), or 0 for no early stopping."))  # fmt: skip
    if search.parallelism < 0:
        problems.append(Problem("sweep.search.parallelism", f"got {search.parallelism}; use 0 or more."))
    return problems


def _sweep_problems(spec: ExperimentSpec) -> list[Problem]:
    from cover_hpc.spec.schema import _Invalid, coerce, field_type

    problems: list[Problem] = _search_problems(spec)
    axes = [("grid", key, values) for key, values in spec.sweep.grid.items()]
    axes += [("zip", key, values) for key, values in spec.sweep.zip.items()]
    for kind, key, values in axes:
        path = f"sweep.{kind}.{key}"
        if key.split(".")[0] in UNSWEEPABLE:
            problems.append(Problem(path, f"{key!r} cannot be swept; sweep a model, data or training key."))
            continue
        if key.startswith("slurm."):
            problems.append(Problem(path, f"{key!r} cannot be swept: the training runs of an experiment form one "
                                          "SLURM array, which has one set of resources. Set it in slurm: and "
                                          "make one experiment per value."))  # fmt: skip
            continue
        try:
            tp = field_type(key)
        except KeyError as error:
            problems.append(Problem(path, f"sweeps an unknown key {key!r}. {error.args[0]}".rstrip()))
            continue
        if not isinstance(values, tuple):
            problems.append(Problem(path, f"got {values!r}; give a list of values."))
            continue
        if not values:
            problems.append(Problem(path, "is an empty list, so the sweep yields no runs; give at least one value."))
            continue
        for index, value in enumerate(values):
            try:
                coerce(value, tp)
            except _Invalid as invalid:
                problems.append(Problem(f"{path}[{index}]", f"got {value!r}; expected {invalid}."))
    both = set(spec.sweep.grid) & set(spec.sweep.zip)
    for key in sorted(both):
        problems.append(Problem(f"sweep.zip.{key}", "is also a grid axis; keep it in one of grid or zip."))
    lengths = {key: len(v) for key, v in spec.sweep.zip.items() if isinstance(v, tuple)}
    if len(set(lengths.values())) > 1:
        listed = ", ".join(f"{k} has {n}" for k, n in lengths.items())
        problems.append(Problem("sweep.zip", f"zipped axes must have equal lengths: {listed}."))
    return problems


#: Free text that never reaches the sbatch script or a path, so line breaks and tabs may be in it.
FREE_TEXT_KEYS = ("infer.negative_prompt",)
_LINE_SEPARATORS = "\u2028\u2029"  # not control characters to Unicode, but line breaks to many readers
_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85" + _LINE_SEPARATORS


def _setting(path: str) -> str:
    """The key a value at ``path`` sets: a list item sets its list's key, a sweep value its axis's key."""
    key = path.split("[")[0]
    for axis in ("sweep.grid.", "sweep.zip."):
        if key.startswith(axis):
            return key[len(axis) :]
    return key


def control_character_problem(path: str, text: str) -> Problem | None:
    """A problem when ``text``, set at ``path``, holds a control character or a line separator.

    A line break in a value that reaches the sbatch script (job name, #SBATCH lines, setup lines)
    ends its line and runs the rest as a command; in a path it names another file.
    """
    key = _setting(path)
    allowed = "\n\t" if key in FREE_TEXT_KEYS else ""
    bad = [c for c in text if c not in allowed and (unicodedata.category(c) == "Cc" or c in _LINE_SEPARATORS)]
    if not bad:
        return None
    if key == "slurm.setup" and bad[0] in _LINE_BREAKS:
        fix = "a setup line with a line break is two lines; give each line as its own list item"
    elif key in FREE_TEXT_KEYS:
        fix = "only line breaks and tabs are allowed in this text"
    else:
        fix = "a value that reaches the sbatch script or a path must be one line of printable text"
    return Problem(path, f"got {text!r}; remove the control character {bad[0]!r} (U+{ord(bad[0]):04X}): {fix}.")


def _strings(value: Any, path: str) -> Iterator[tuple[str, str]]:
    """Every string in a spec (list items and sweep values too) with its dotted path."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from _strings(getattr(value, f.name), f"{path}.{f.name}" if path else f.name)
    elif isinstance(value, str):
        yield path, value
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _strings(item, f"{path}[{index}]")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")


def control_problems(spec: ExperimentSpec) -> list[Problem]:
    """Control characters in any string of the spec, walked generically so that new keys are covered."""
    found = (control_character_problem(path, text) for path, text in _strings(spec, ""))
    return [problem for problem in found if problem is not None]


def spec_problems(spec: ExperimentSpec, lines: Mapping[str, int]) -> list[Problem]:
    """Every problem of ``spec`` and of each run it expands to, located at its YAML line."""
    problems = _sweep_problems(spec)
    if problems:  # the runs cannot be built; still check the values outside the sweep
        problems += value_problems(spec)
    else:
        from cover_hpc.spec.sweep import expand_overrides, resolve

        combos = expand_overrides(spec)
        if not combos:
            problems.append(Problem("sweep", "the sweep yields no runs; give every axis at least one value."))
        seen: set[tuple[str, str]] = set()
        for combo in combos:
            label = ", ".join(f"{k}={v!r}" for k, v in combo.items())
            for problem in value_problems(resolve(spec, combo)):
                if (problem.key, problem.message) in seen:
                    continue
                seen.add((problem.key, problem.message))
                if problem.key in combo:
                    kind = "grid" if problem.key in spec.sweep.grid else "zip"
                    message = f"in the run with {label}: {problem.key} {problem.message}"
                    problems.append(Problem(f"sweep.{kind}.{problem.key}", message))
                else:
                    problems.append(problem)
    problems += control_problems(spec)
    return [
        Problem(p.key, p.message, p.line or lines.get(p.key) or lines.get(p.key.split("[")[0]), p.origin)
        for p in problems
    ]
