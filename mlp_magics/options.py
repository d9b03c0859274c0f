"""Turning `%%mlp_train` options and a cell into job specs: pure parsing, no I/O to the service.

Every error is an `OptionError` that names the option the user typed (not the spec field the
service would name), so the message can be acted on in the notebook. Specs are checked with the
service's own `mlp.core.spec.validate_spec`, so a spec refused here would be refused there too, with
the same words.

Longer than 500 lines because `build_plan` maps every option of the table in docs/notebooks.md
onto the spec in one place, next to the parsers it uses; splitting it would spread one option's
rules over two files.
"""

from __future__ import annotations

import argparse
import difflib
import itertools
import json
import math
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic_arguments import argument, magic_arguments
from IPython.utils.process import arg_split

from mlp.core.spec import NAME_RE, SPEC_FIELDS, SpecError, validate_spec

ROLES = ("chief", "ps", "worker")
RESOURCES = ("cpu", "memory", "gpu")
# Fields the scheduler adds to a spec; validated here, passed through to the service as given.
SCHEDULING_FIELDS = ("pool", "priority", "depends_on")
IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class OptionError(ValueError):
    """Bad magic input; `option` is what the user typed (`--memory`, `--grid`, `cell`)."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option = option
        self.message = message


class GridError(OptionError):
    """A `--grid` syntax error at `column` (1-based) of `text`."""

    def __init__(self, text: str, column: int, message: str):
        pointer = f"\n    {text}\n    {' ' * (column - 1)}^"
        super().__init__("--grid", f"{message} at column {column}{pointer}")
        self.text = text
        self.column = column


# ----------------------------------------------------------------------- the options
def _train_argument_list() -> list[Callable[[Any], Any]]:
    args: list[Callable[[Any], Any]] = [
        argument("--name", help="Job name (lowercase letters, digits, '-'). "
                 "Default: TrainMagics.default_name."),
        argument("--workers", metavar="N", help="Number of worker tasks (>= 1). "
                 "Default: TrainMagics.default_workers."),
        argument("--ps", metavar="N", help="Number of parameter-server tasks (0: no ps; with ps "
                 "a chief coordinates the training). Default: TrainMagics.default_ps."),
        argument("--cpu", help="CPU cores per task, e.g. 2 or 500m."),
        argument("--memory", help="Memory per task, e.g. 4Gi or 512Mi."),
        argument("--gpu", help="GPUs per worker task (ps and chief: --ps-gpu, --chief-gpu)."),
    ]
    for role in ROLES:
        for res in RESOURCES:
            args.append(argument(f"--{role}-{res}", metavar=res.upper(),
                                 help=f"{res} of each {role} task (overrides --{res})."))
    args += [
        argument("--max-runtime", metavar="DURATION",
                 help="Stop the job after this long: 3600, 90s, 30m, 2h, 1d."),
        argument("--pool", help="Resource pool, e.g. default or production."),
        argument("--priority", metavar="INT",
                 help="Priority among your own jobs (higher runs first)."),
        argument("--runtime", help="Runtime environment (image / framework version)."),
        argument("--env", action="append", default=[], metavar="K=V",
                 help="Environment variable of every task (repeatable)."),
        argument("--param", action="append", default=[], metavar="k=v",
                 help="Hyperparameter given to the code as mlp_magics.params() / $MLP_PARAMS "
                 "(repeatable; values parse as numbers, true/false, JSON or text)."),
        argument("--grid", metavar='"k=v1,v2 k2=v3,v4"',
                 help="Cartesian product of parameter values: one job per combination, "
                 "grouped in a batch (limit: TrainMagics.max_grid_size)."),
        argument("--after", action="append", default=[], metavar="JOB",
                 help="Start only after job JOB has succeeded (repeatable)."),
        argument("--from-file", metavar="PATH",
                 help="Train with this script from your home folder instead of the cell."),
        argument("--git", metavar="URL@REF:PATH",
                 help="Train with PATH (default train.py) of the git repository URL at REF."),
        argument("--arg", action="append", default=[], metavar="ARG",
                 help="Command-line argument of the script (repeatable)."),
        argument("--wait", action="store_true",
                 help="Block until the job ends (raises if it did not succeed)."),
        argument("--dry-run", action="store_true",
                 help="Show the job spec(s) without submitting."),
    ]
    return args


def train_arguments(func: Any) -> Any:
    """Decorate `func` with the `%%mlp_train` arguments (its `?` help comes from them)."""
    for deco in reversed(_train_argument_list()):
        func = deco(func)
    func = magic_arguments(name="mlp_train")(func)
    func.parser.allow_abbrev = False  # `--work 2` silently meaning --workers hides typos
    return func


@train_arguments
def _train_signature(line: str) -> None:
    """Launch the cell as a training job on the platform (see `%%mlp_train?`)."""


def option_names(parser: argparse.ArgumentParser) -> list[str]:
    return sorted(s for a in parser._actions for s in a.option_strings if s.startswith("--"))


def parse_line(func: Any, line: str) -> argparse.Namespace:
    """Parse a magic's line with its `@magic_arguments` parser; OptionError on bad input."""
    parser = func.parser
    try:
        argv = arg_split(line, posix=True, strict=True)
    except ValueError as e:
        raise OptionError("options", f"cannot split {line!r}: {e} (unbalanced quotes?)") from None
    try:
        ns, extra = parser.parse_known_args(argv)
    except UsageError as e:
        usage = parser.format_usage().replace("::", "").strip()
        raise OptionError("options", f"{e}\nusage: {usage}") from None
    if extra:
        valid = option_names(parser)
        first = extra[0]
        if first.startswith("-"):
            name = first.split("=", 1)[0]
            close = difflib.get_close_matches(name, valid, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise OptionError(
                name, f"unknown option{hint}; valid options are: {', '.join(valid)}"
            )
        raise OptionError(
            "options", f"unexpected argument {first!r}; valid options are: {', '.join(valid)}"
        )
    return ns


def parse_train_line(line: str) -> argparse.Namespace:
    return parse_line(_train_signature, line)


# ----------------------------------------------------------------------- values, grids
def parse_value(text: str) -> Any:
    """A parameter value: int, float, true/false, null, JSON ("x", [1, 2], {...}) or text."""
    low = text.strip().lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            number = convert(text)
        except ValueError:
            continue
        if isinstance(number, float) and not math.isfinite(number):
            return text  # 'nan', 'inf' are more likely names than numbers here
        return number
    if text[:1] in '"[{':
        try:
            return json.loads(text)
        except ValueError:
            pass
    return text


def parse_assignments(items: Sequence[str], option: str) -> dict[str, str]:
    """`K=V` items of a repeatable option into a dict (values kept as text)."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise OptionError(option, f"expected NAME=VALUE, got {item!r}")
        if key in out:
            raise OptionError(option, f"{key} is given twice")
        out[key] = value
    return out


def parse_grid(text: str) -> list[tuple[str, list[Any]]]:
    """`"lr=0.01,0.1 dim=8,16"` -> [("lr", [0.01, 0.1]), ("dim", [8, 16])]; GridError on
    a syntax error, naming the column."""
    if not text.strip():
        raise GridError(text, 1, "empty grid; expected name=value[,value...] ...")
    grid: list[tuple[str, list[Any]]] = []
    seen: set[str] = set()
    for m in re.finditer(r"\S+", text):
        token, start = m.group(), m.start() + 1
        name, sep, values = token.partition("=")
        if not sep:
            raise GridError(text, start, f"expected name=value[,value...], got {token!r}")
        if not name:
            raise GridError(text, start, "missing parameter name before '='")
        if not IDENT_RE.match(name):
            raise GridError(text, start, f"parameter name {name!r} is not an identifier")
        if name in seen:
            raise GridError(text, start, f"parameter {name!r} appears twice")
        seen.add(name)
        col = start + len(name) + 1
        parsed: list[Any] = []
        raw_seen: set[str] = set()
        for raw in values.split(","):
            if not raw:
                raise GridError(text, col, f"empty value for {name!r}")
            if raw in raw_seen:
                raise GridError(text, col, f"value {raw!r} of {name!r} appears twice")
            raw_seen.add(raw)
            parsed.append(parse_value(raw))
            col += len(raw) + 1
        grid.append((name, parsed))
    return grid


def grid_size(grid: Sequence[tuple[str, Sequence[Any]]]) -> int:
    return math.prod(len(values) for _, values in grid)


def expand_grid(grid: Sequence[tuple[str, Sequence[Any]]]) -> list[dict[str, Any]]:
    names = [name for name, _ in grid]
    return [dict(zip(names, combo, strict=True)) for combo in
            itertools.product(*(values for _, values in grid))]


# ----------------------------------------------------------------------- sources
def check_python(code: str, where: str) -> None:
    """Refuse code that does not compile, naming the line (before anything is submitted)."""
    try:
        compile(code, where, "exec", dont_inherit=True)
    except SyntaxError as e:
        text = (e.text or "").rstrip("\n")
        pointer = ""
        if text:
            offset = max(1, e.offset or 1)
            stripped = text.lstrip()
            offset -= len(text) - len(stripped)
            pointer = f"\n    {stripped}\n    {' ' * max(0, offset - 1)}^"
        hint = ""
        if text.lstrip().startswith(("%", "!")):
            hint = " (IPython magics and shell escapes do not work in a job script)"
        raise OptionError(
            "cell" if where.startswith("<") else where,
            f"Python syntax error on line {e.lineno}: {e.msg}{hint}{pointer}",
        ) from None


def parse_git(text: str) -> dict[str, str]:
    """`URL[@REF][:PATH]` -> {"git", "ref", "path"}; PATH defaults to train.py."""
    url, ref, path = text.strip(), "HEAD", "train.py"
    head, at, tail = url.rpartition("@")
    # URLs hold '@'s of their own (`git@host:org/r`, `https://user@host/r`): what follows the
    # last '@' is a ref only if what precedes it is a whole repository URL.
    whole = ("://" in head and "/" in head.split("://", 1)[1]) or (
        head.startswith("git@") and ":" in head
    )
    if at and whole:
        url = head
        ref, colon, rest = tail.partition(":")
        if colon:
            path = rest
    if not url or not ref or not path:
        raise OptionError("--git", f"expected URL@REF:PATH, got {text!r}")
    return {"git": url, "ref": ref, "path": path}


def resolve_file(path: str, *, home: Path | None, cwd: Path) -> tuple[str, Path | None]:
    """The spec path (relative to the home folder) and the local file when the kernel sees it.

    The notebook may sit in a subfolder: a path relative to it is made relative to the home
    folder the job runs from."""
    candidate = Path(path).expanduser()
    local = candidate if candidate.is_absolute() else cwd / candidate
    if home is not None and local.is_file():
        try:
            rel = local.resolve().relative_to(home.resolve())
        except ValueError:
            raise OptionError(
                "--from-file", f"{path!r} is outside your home folder {home}; jobs can only "
                "read files in it"
            ) from None
        return rel.as_posix(), local
    if candidate.is_absolute():
        raise OptionError("--from-file", f"{path!r}: no such file; give a path relative to "
                          "your home folder")
    if home is not None and (home / candidate).is_file():
        return candidate.as_posix(), home / candidate
    return path, None  # not visible here (another machine): the service checks it


# ----------------------------------------------------------------------- specs
@dataclass
class TrainDefaults:
    """What `%%mlp_train` uses for options not given (the TrainMagics traits)."""

    name: str = "train"
    workers: int = 1
    ps: int = 0
    cpu: str | None = None
    memory: str | None = None
    gpu: str | None = None
    max_runtime: str | None = None
    runtime: str | None = None
    pool: str | None = None
    max_grid_size: int = 256


@dataclass
class TrainPlan:
    """The specs `%%mlp_train` will submit: one, or a batch of one per grid combination."""

    specs: list[dict[str, Any]]
    batch: str | None = None
    grid: list[tuple[str, list[Any]]] = field(default_factory=list)
    wait: bool = False
    dry_run: bool = False


def _count(value: Any, option: str, minimum: int) -> int:
    try:
        number = int(str(value).strip())
    except ValueError:
        raise OptionError(option, f"expected a whole number, got {value!r}") from None
    if number < minimum:
        what = "at least 1 worker is needed" if option == "--workers" else f"at least {minimum}"
        raise OptionError(option, f"{what}, got {number}")
    return number


def _spec_error(e: SpecError, given: dict[str, str]) -> OptionError:
    """Name the option the user typed for a spec field the validator refused."""
    parts = e.field.split(".")
    option = {
        "name": "--name", "batch": "--name", "max_runtime": "--max-runtime",
        "runtime": "--runtime", "env": "--env", "params": "--param", "args": "--arg",
        "pool": "--pool", "priority": "--priority", "depends_on": "--after",
    }.get(parts[0], "options")
    if parts[0] == "source":
        option = "--git" if "git" in given else "--from-file" if "from_file" in given else "cell"
    if parts[0] == "tasks" and len(parts) >= 2:
        role = parts[1]
        if len(parts) == 3 and parts[2] in RESOURCES:
            res = parts[2]
            option = f"--{role}-{res}" if f"{role}_{res}" in given else f"--{res}"
        else:
            option = "--ps" if role == "ps" else "--workers"
    return OptionError(option, e.message)


def build_plan(
    args: argparse.Namespace,
    cell: str | None,
    defaults: TrainDefaults,
    *,
    home: Path | None = None,
    cwd: Path | None = None,
) -> TrainPlan:
    """Check the options and the code, and build the spec(s) to submit."""
    given = {k: v for k, v in vars(args).items() if v not in (None, [], False)}
    cwd = cwd or Path.cwd()

    # ---- the code
    body = cell if cell is not None else ""
    has_code = bool(body.strip())
    if "from_file" in given and "git" in given:
        raise OptionError("--from-file", "give either --from-file or --git, not both")
    source: dict[str, str]
    if "from_file" in given or "git" in given:
        if has_code:
            opt = "--from-file" if "from_file" in given else "--git"
            raise OptionError(opt, f"the cell must be empty with {opt} (it would be ignored)")
        if "git" in given:
            source = parse_git(args.git)
        else:
            rel, local = resolve_file(args.from_file, home=home, cwd=cwd)
            if local is not None and local.suffix == ".py":
                check_python(local.read_text(encoding="utf-8", errors="replace"), "--from-file")
            source = {"path": rel}
    else:
        if not has_code:
            raise OptionError(
                "cell", "the cell is empty: write the training script in the cell below "
                "%%mlp_train, or give --from-file PATH or --git URL@REF:PATH"
            )
        check_python(body, "<mlp_train cell>")
        source = {"inline": body}

    # ---- name and tasks
    name = args.name if args.name is not None else defaults.name
    if not NAME_RE.match(name or ""):
        raise OptionError("--name", f"{name!r} is not a valid name: use lowercase letters a-z, "
                          "digits and '-', starting and ending with a letter or digit")
    workers = _count(args.workers if args.workers is not None else defaults.workers,
                     "--workers", 1)
    ps = _count(args.ps if args.ps is not None else defaults.ps, "--ps", 0)
    roles = {"worker": workers}
    if ps:
        roles = {"chief": 1, "ps": ps, "worker": workers}
    for role in ("chief", "ps"):
        if role not in roles:
            for res in RESOURCES:
                if f"{role}_{res}" in given:
                    raise OptionError(f"--{role}-{res}", f"there are no {role} tasks without "
                                      "--ps N (parameter-server training)")
    tasks: dict[str, dict[str, Any]] = {}
    for role, count in roles.items():
        task: dict[str, Any] = {"count": count}
        for res in RESOURCES:
            value = getattr(args, f"{role}_{res}")
            if value is None and not (res == "gpu" and role != "worker"):
                value = getattr(args, res)
                if value is None:
                    value = getattr(defaults, res)
            if value is not None:
                task[res] = value
        tasks[role] = task

    spec: dict[str, Any] = {"name": name, "source": source, "tasks": tasks}
    max_runtime = args.max_runtime or defaults.max_runtime
    if max_runtime is not None:
        spec["max_runtime"] = max_runtime
    runtime = args.runtime or defaults.runtime
    if runtime:
        spec["runtime"] = runtime
    if args.arg:
        spec["args"] = list(args.arg)
    env = parse_assignments(args.env, "--env")
    if env:
        spec["env"] = env
    params = {k: parse_value(v) for k, v in parse_assignments(args.param, "--param").items()}
    spec["params"] = params

    # ---- scheduling (pool, priority, dependencies)
    pool = args.pool or defaults.pool
    if pool is not None:
        if not NAME_RE.match(pool):
            raise OptionError("--pool", f"{pool!r} is not a pool name (lowercase, digits, '-')")
        spec["pool"] = pool
    if args.priority is not None:
        try:
            spec["priority"] = int(args.priority)
        except ValueError:
            raise OptionError(
                "--priority", f"expected a whole number, got {args.priority!r}"
            ) from None
    if args.after:
        deps = []
        for item in args.after:
            for part in re.split(r"[\s,]+", item.strip()):
                if not part.isdigit() or int(part) < 1:
                    raise OptionError("--after", f"expected a job id (a number), got {part!r}")
                deps.append(int(part))
        spec["depends_on"] = sorted(set(deps))

    # ---- grid
    grid: list[tuple[str, list[Any]]] = []
    combos: list[dict[str, Any]] = [{}]
    batch: str | None = None
    if args.grid is not None:
        grid = parse_grid(args.grid)
        both = sorted({n for n, _ in grid} & set(params))
        if both:
            raise OptionError("--grid", f"{both[0]!r} is also set by --param; keep one")
        size = grid_size(grid)
        if size > defaults.max_grid_size:
            shape = " x ".join(f"{len(v)} {n}" for n, v in grid)
            raise OptionError(
                "--grid", f"{size:,} combinations ({shape}) exceed the limit of "
                f"{defaults.max_grid_size:,} jobs per grid; narrow the grid, or raise the limit "
                "with %config TrainMagics.max_grid_size = N"
            )
        combos = expand_grid(grid)
        # A fresh batch label per submission: re-running the cell must not merge two sweeps.
        batch = f"{name[:50].rstrip('-')}-{secrets.token_hex(3)}"

    specs: list[dict[str, Any]] = []
    width = len(str(len(combos)))
    for i, combo in enumerate(combos, 1):
        s = json.loads(json.dumps(spec))
        if batch is not None:
            s["name"] = f"{name[:55].rstrip('-')}-{i:0{width}d}"
            s["batch"] = batch
            s["params"] = {**params, **combo}
        specs.append(s)

    # ---- the service's own validation
    # Scheduling fields are checked by the service's validator once it knows them; until then
    # they are left out here and passed through for the service to judge.
    unknown_here = [f for f in SCHEDULING_FIELDS if f not in SPEC_FIELDS]
    for s in specs:
        core = {k: v for k, v in s.items() if k not in unknown_here}
        try:
            validate_spec(core, max_runtime_limit=None)
        except SpecError as e:
            raise _spec_error(e, given) from None
    return TrainPlan(specs=specs, batch=batch, grid=grid, wait=bool(args.wait),
                     dry_run=bool(args.dry_run))


def home_folder() -> Path | None:
    home = os.environ.get("HOME")
    return Path(home) if home else None

