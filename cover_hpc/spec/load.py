"""Loading a spec: YAML with line numbers and within limits, defaults < YAML < overrides."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import yaml

from cover_hpc.spec.schema import (
    ExperimentSpec,
    Problem,
    SpecError,
    build,
    field_type,
    set_dotted,
)

# --------------------------------------------------------------------------------------------
# YAML with line numbers, within limits

#: A spec is a few KB; a bigger file is not a spec (or not the right file).
MAX_SPEC_BYTES = 1 << 20
#: Values (scalars, lists, mappings) a document may hold once its aliases are expanded. The shipped
#: specs hold under 200; the limit stops alias bombs ("billion laughs") before they fill memory.
MAX_NODES = 10_000
#: Levels of values inside each other. A spec needs 6 (top level > sweep > grid > data.size: [[h, w]]
#: > numbers); PyYAML composes recursively, so without a limit a deep document ends in RecursionError.
MAX_DEPTH = 32
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A YAML document the loader will not read, and the line where it found out."""

    def __init__(self, message: str, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.line = line


def _too_many(aliases: bool) -> str:
    how = " once its aliases are expanded" if aliases else ""
    fix = "remove the repeated aliases (*name)" if aliases else "is this the right file?"
    return f"more than {MAX_NODES:,} values{how}; a spec needs a few hundred: {fix}"


def _too_deep() -> str:
    return f"nesting deeper than {MAX_DEPTH} levels (lists or mappings inside each other); a spec needs 6"


def _line(node: yaml.Node) -> int:
    return int(node.start_mark.line) + 1


class _SpecLoader(yaml.SafeLoader):
    """The safe loader, composing at most MAX_NODES nodes nested at most MAX_DEPTH deep."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self._depth = 0
        self._composed = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        self._depth += 1
        self._composed += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(_too_deep(), self.peek_event().start_mark.line + 1)
            if self._composed > MAX_NODES:
                raise _Refused(_too_many(aliases=False), self.peek_event().start_mark.line + 1)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep)
        except ValueError as error:  # e.g. an integer of more digits than Python converts
            reason = str(error).split(";")[0]  # without Python's advice to raise its limit
            raise _Refused(f"cannot read this value: {reason}", _line(node)) from None


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Refuse aliases that expand past MAX_NODES values or MAX_DEPTH levels, or into themselves.

    Each node's expanded size is counted once (aliases share nodes), so this costs what the
    document's text does, however big its expansion would be.
    """
    expanded: dict[int, tuple[int, int]] = {}  # id(node) -> (values, levels) once counted
    open_nodes: set[int] = set()

    def visit(node: yaml.Node, depth: int) -> tuple[int, int]:
        if depth > MAX_DEPTH:
            raise _Refused(_too_deep(), _line(node))
        if id(node) in open_nodes:
            message = "an alias refers to the list or mapping that holds it, so the value never ends; remove it"
            raise _Refused(message, _line(node))
        if id(node) not in expanded:
            open_nodes.add(id(node))
            values, levels = 1, 1
            for child in _children(node):
                child_values, child_levels = visit(child, depth + 1)
                values, levels = values + child_values, max(levels, child_levels + 1)
                if values > MAX_NODES:
                    raise _Refused(_too_many(aliases=True), _line(node))
            open_nodes.discard(id(node))
            expanded[id(node)] = (values, levels)
        values, levels = expanded[id(node)]
        if depth + levels - 1 > MAX_DEPTH:
            raise _Refused(_too_deep(), _line(node))
        return values, levels

    visit(root, 1)


@dataclass(frozen=True)
class _Repeated:
    """A key given more than once in one mapping."""

    key: str
    lines: tuple[int, ...]
    section: bool  # its values are mappings: a later one would replace the earlier whole

    def problem(self, origin: str | None = None) -> Problem:
        times = "twice" if len(self.lines) == 2 else f"{len(self.lines)} times"
        where = "" if origin else f", on lines {', '.join(map(str, self.lines[:-1]))} and {self.lines[-1]}"
        name = self.key.rsplit(".", 1)[-1]
        fix = f": write its keys under one {name}: (a later one replaces the earlier whole)" if self.section else ""
        return Problem(self.key, f"given {times}{where}; keep one{fix}.", None if origin else self.lines[-1], origin)


def _key_lines(root: yaml.Node, prefix: str = "") -> tuple[dict[str, int], list[_Repeated]]:
    """Each dotted key (and list item) of a composed document with its 1-based line; repeated keys.

    Keys merged in with ``<<: *anchor`` get the line where the anchored mapping sets them, and an
    explicit key overrides a merged one without counting as repeated.
    """
    lines: dict[str, int] = {}
    repeated: list[_Repeated] = []
    checked: set[int] = set()  # mappings already checked for repeats (an alias reaches one again)

    def join(path: str, key: str) -> str:
        return f"{path}.{key}" if path else key

    def walk(node: yaml.Node, path: str) -> None:
        if isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                lines[f"{path}[{index}]"] = _line(item)
                walk(item, f"{path}[{index}]")
            return
        if not isinstance(node, yaml.MappingNode):
            return
        merges = [value for key, value in node.value if key.tag == _MERGE_TAG]
        for value in merges:
            sources = value.value if isinstance(value, yaml.SequenceNode) else [value]
            for source in reversed(sources):  # the first mapping merged wins
                walk(source, path)
        seen: dict[str, list[tuple[yaml.Node, yaml.Node]]] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = str(key_node.value)
            lines[join(path, key)] = _line(key_node)
            walk(value_node, join(path, key))
            if isinstance(key_node, yaml.ScalarNode):
                seen.setdefault(key, []).append((key_node, value_node))
        if id(node) in checked:
            return
        checked.add(id(node))
        for key, pairs in seen.items():
            if len(pairs) > 1:
                section = any(isinstance(value, yaml.MappingNode) for _, value in pairs)
                repeated.append(_Repeated(join(path, key), tuple(_line(k) for k, _ in pairs), section))

    walk(root, prefix)
    return lines, sorted(repeated, key=lambda repeat: repeat.lines[-1])


@dataclass(frozen=True)
class _Document:
    data: Any
    lines: dict[str, int]
    repeated: list[_Repeated]


def _load_yaml(text: str, prefix: str = "") -> _Document:
    """Read YAML with the safe loader within the limits above; ``prefix`` is put before its keys.

    Raises ``_Refused`` past a limit and ``yaml.YAMLError`` for malformed YAML.
    """
    loader = _SpecLoader(text)
    try:
        root = loader.get_single_node()
        if root is None:
            return _Document(None, {}, [])
        _check_expansion(root)
        lines, repeated = _key_lines(root, prefix)
        return _Document(loader.construct_document(root), lines, repeated)
    except RecursionError:  # not expected within MAX_DEPTH; never a traceback all the same
        raise _Refused(_too_deep()) from None
    finally:
        loader.dispose()


def _spec_text(path: Path) -> str:
    """The text of a spec file, or SpecError saying why it cannot be read and what to do."""

    def refuse(message: str, line: int | None = None) -> NoReturn:
        raise SpecError([Problem("", message, line)], str(path))

    if path.is_dir():
        refuse(f"{path} is a folder, not a spec file; give the YAML file")
    if not path.exists():
        raise SpecError([Problem("", f"spec file not found: {path}")])
    if not path.is_file():
        refuse(f"{path} is not a regular file; give a YAML spec file")
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_SPEC_BYTES + 1)
    except PermissionError:
        refuse(f"cannot read {path}: permission denied; give yourself read access (chmod u+r) or copy it")
    except OSError as error:
        refuse(f"cannot read {path}: {error.strerror or error}")
    if len(raw) > MAX_SPEC_BYTES:
        refuse(f"{path} is larger than 1 MiB; a spec is a few KB: is this the right file?")
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is fine
    except UnicodeDecodeError as error:
        text = error.object  # without the byte-order mark, which error.start does not count
        line_start = text.rfind(b"\n", 0, error.start) + 1
        column = len(text[line_start : error.start].decode("utf-8", errors="replace")) + 1
        line = text.count(b"\n", 0, error.start) + 1
        refuse(f"byte 0x{text[error.start]:02x} at column {column} is not UTF-8; save the file as UTF-8.", line)


def _yaml_problem(error: yaml.YAMLError, text: str) -> Problem:
    if isinstance(error, yaml.reader.ReaderError) and isinstance(error.character, int):
        char, at = chr(error.character), text.count("\n", 0, error.position) + 1
        return Problem("", f"character {char!r} (U+{ord(char):04X}) is not allowed in a YAML file; remove it.", at)
    mark = getattr(error, "problem_mark", None) or getattr(error, "context_mark", None)
    line = mark.line + 1 if mark is not None else None
    problem = getattr(error, "problem", None) or str(error)
    return Problem("", f"malformed YAML: {problem}; fix the syntax on that line", line)


def read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, int]]:
    """Read a spec file with the safe loader, within limits; returns the data and its key lines."""
    text = _spec_text(path)
    try:
        document = _load_yaml(text)
    except _Refused as refused:
        raise SpecError([Problem("", refused.message, refused.line)], str(path)) from None
    except yaml.YAMLError as error:
        raise SpecError([_yaml_problem(error, text)], str(path)) from None
    if document.repeated:
        raise SpecError([repeat.problem() for repeat in document.repeated], str(path))
    data = {} if document.data is None else document.data
    if not isinstance(data, dict):
        raise SpecError([Problem("", "the top level must be a mapping of sections (model:, data:, ...)")], str(path))
    return data, document.lines


def parse_override(text: str) -> tuple[str, Any]:
    """Split ``dotted.key=value``; the value is read as YAML (so lists and numbers work), within limits."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise SpecError([Problem("", f"override {text!r} is not of the form dotted.key=value")])
    if not raw.strip():
        return key, None
    try:
        document = _load_yaml(raw, key)
    except _Refused as refused:
        raise SpecError([Problem(key, refused.message, origin="command line")]) from None
    except yaml.YAMLError:
        return key, raw
    if document.repeated:
        raise SpecError([repeat.problem("command line") for repeat in document.repeated])
    return key, document.data


def load_spec(
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    base: Mapping[str, Any] | None = None,
) -> ExperimentSpec:
    """Load and validate a spec: defaults < ``base`` < YAML file < ``key=value`` overrides.

    Raises :class:`SpecError` listing every problem found (type errors and value errors alike).
    """
    from cover_hpc.spec.checks import control_character_problem, spec_problems

    data: dict[str, Any] = json.loads(json.dumps(base)) if base else {}
    lines: dict[str, int] = {}
    source = str(path) if path is not None else None
    if path is not None:
        file_data, lines = read_yaml(Path(path))
        _merge(data, file_data)
    problems: list[Problem] = []
    from_command_line: set[str] = set()
    for text in overrides:
        # checked before YAML reads it: YAML folds a raw line break into a space or a comment
        raw_key, _, raw = text.partition("=")
        control = control_character_problem(raw_key.strip(), raw)
        if control is not None:
            problems.append(dataclasses.replace(control, origin="command line"))
            continue
        key, value = parse_override(text)
        if not key.startswith(("sweep.grid.", "sweep.zip.")):
            try:
                field_type(key)
            except KeyError as error:
                hint = error.args[0]
                problems.append(
                    Problem(key, f"unknown key in override {text!r}. {hint}".rstrip(), origin="command line")
                )
                continue
        set_dotted(data, key, value)
        from_command_line.add(key)
        lines = {k: v for k, v in lines.items() if k != key and not k.startswith((f"{key}.", f"{key}["))}
    spec = build(ExperimentSpec, data, "", problems, lines)
    problems += spec_problems(spec, lines)
    if problems:
        raise SpecError([_mark_origin(p, from_command_line) for p in problems], source)
    return spec


def _mark_origin(problem: Problem, from_command_line: set[str]) -> Problem:
    key = problem.key.split("[")[0]
    if problem.origin is None and any(key == k or key.startswith(f"{k}.") for k in from_command_line):
        return dataclasses.replace(problem, origin="command line", line=None)
    return problem


def _merge(into: dict[str, Any], new: Mapping[str, Any]) -> None:
    for key, value in new.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict) and key != "sweep":
            _merge(into[key], value)
        elif isinstance(value, Mapping) and isinstance(into.get(key), dict):
            for axis, axis_value in value.items():
                if isinstance(axis_value, Mapping) and isinstance(into[key].get(axis), dict):
                    into[key][axis].update(axis_value)
                else:
                    into[key][axis] = axis_value
        else:
            into[key] = value
