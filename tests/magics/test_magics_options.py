"""`%%mlp_train` option parsing and every bad input of issue 5, without a service."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlp_magics.options import (
    GridError,
    OptionError,
    TrainDefaults,
    build_plan,
    expand_grid,
    grid_size,
    parse_git,
    parse_grid,
    parse_train_line,
    parse_value,
)

CODE = "import mlp_magics\nmlp_magics.report(step=1, loss=0.5)\n"


def plan(line: str, cell: str | None = CODE, **defaults):
    return build_plan(parse_train_line(line), cell, TrainDefaults(**defaults),
                      home=Path("/nonexistent-home"), cwd=Path("/nonexistent-cwd"))


def error(line: str, cell: str | None = CODE, **defaults) -> OptionError:
    with pytest.raises(OptionError) as info:
        plan(line, cell, **defaults)
    return info.value


def test_defaults_one_worker_inline_source():
    p = plan("")
    (spec,) = p.specs
    assert spec == {"name": "train", "source": {"inline": CODE},
                    "tasks": {"worker": {"count": 1}}, "params": {}}
    assert p.batch is None and not p.wait and not p.dry_run


def test_every_option_maps_to_the_spec():
    p = plan("--name ctr --workers 2 --ps 2 --cpu 2 --memory 4Gi --gpu 1 --ps-memory 8Gi "
             "--ps-cpu 500m --chief-cpu 1 --chief-memory 1Gi --chief-gpu 0 --worker-gpu 2 "
             "--worker-cpu 3 --worker-memory 6Gi --ps-gpu 0 "
             "--max-runtime 2h --pool production --priority 5 --runtime tf-2.21 "
             "--env A=1 --env B=x=y --param lr=0.01 --param opt=adam --param flag=true "
             "--after 3 --after 4,5 --arg=--epochs --arg 3 --wait --dry-run")
    (spec,) = p.specs
    assert spec["name"] == "ctr"
    assert spec["tasks"] == {
        "chief": {"count": 1, "cpu": "1", "memory": "1Gi", "gpu": "0"},
        "ps": {"count": 2, "cpu": "500m", "memory": "8Gi", "gpu": "0"},
        "worker": {"count": 2, "cpu": "3", "memory": "6Gi", "gpu": "2"},
    }
    assert spec["max_runtime"] == "2h" and spec["runtime"] == "tf-2.21"
    assert spec["pool"] == "production" and spec["priority"] == 5
    assert spec["depends_on"] == [3, 4, 5]
    assert spec["env"] == {"A": "1", "B": "x=y"}
    assert spec["params"] == {"lr": 0.01, "opt": "adam", "flag": True}
    assert spec["args"] == ["--epochs", "3"]
    assert p.wait and p.dry_run


def test_general_resources_apply_to_every_role_but_gpu_only_to_workers():
    (spec,) = plan("--ps 1 --cpu 2 --memory 3Gi --gpu 1").specs
    assert spec["tasks"]["chief"] == {"count": 1, "cpu": "2", "memory": "3Gi"}
    assert spec["tasks"]["ps"] == {"count": 1, "cpu": "2", "memory": "3Gi"}
    assert spec["tasks"]["worker"] == {"count": 1, "cpu": "2", "memory": "3Gi", "gpu": "1"}


def test_configurable_defaults_are_used():
    (spec,) = plan("", workers=3, ps=1, memory="1Gi", name="exp", max_runtime="30m",
                   pool="default").specs
    assert spec["name"] == "exp" and spec["tasks"]["worker"]["count"] == 3
    assert spec["tasks"]["ps"] == {"count": 1, "memory": "1Gi"}
    assert spec["max_runtime"] == "30m" and spec["pool"] == "default"


def test_from_file_and_git_sources(tmp_path: Path):
    home = tmp_path / "home"
    (home / "proj").mkdir(parents=True)
    (home / "proj" / "train.py").write_text("print('hi')\n")
    args = parse_train_line("--from-file train.py")
    p = build_plan(args, "", TrainDefaults(), home=home, cwd=home / "proj")
    assert p.specs[0]["source"] == {"path": "proj/train.py"}  # relative to the home folder
    p = build_plan(parse_train_line("--from-file proj/train.py"), None, TrainDefaults(),
                   home=home, cwd=tmp_path)
    assert p.specs[0]["source"] == {"path": "proj/train.py"}
    (home / "bad.py").write_text("def f(:\n")
    with pytest.raises(OptionError, match=r"--from-file: Python syntax error on line 1"):
        build_plan(parse_train_line("--from-file bad.py"), "", TrainDefaults(), home=home,
                   cwd=home)
    (spec,) = plan("--git https://example.com/r.git@v1.2:src/train.py", cell="").specs
    assert spec["source"] == {"git": "https://example.com/r.git", "ref": "v1.2",
                              "path": "src/train.py"}


@pytest.mark.parametrize(("text", "expected"), [
    ("https://h/r.git", ("https://h/r.git", "HEAD", "train.py")),
    ("https://h/r.git@main", ("https://h/r.git", "main", "train.py")),
    ("git@github.com:org/r.git", ("git@github.com:org/r.git", "HEAD", "train.py")),
    ("git@github.com:org/r.git@abc123:a/b.py", ("git@github.com:org/r.git", "abc123", "a/b.py")),
    ("ssh://git@h/r.git@release/1:x.py", ("ssh://git@h/r.git", "release/1", "x.py")),
    ("https://u@h/r.git", ("https://u@h/r.git", "HEAD", "train.py")),
])
def test_parse_git(text, expected):
    g = parse_git(text)
    assert (g["git"], g["ref"], g["path"]) == expected


@pytest.mark.parametrize(("text", "value"), [
    ("1", 1), ("-2", -2), ("0.01", 0.01), ("1e-3", 0.001), ("true", True), ("False", False),
    ("null", None), ("adam", "adam"), ('"8"', "8"), ("[1, 2]", [1, 2]), ("nan", "nan"),
])
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_grid_makes_a_batch_of_every_combination():
    p = plan('--name sweep --grid "lr=0.01,0.1 dim=8,16,32" --param epochs=2')
    assert len(p.specs) == 6 and p.batch and p.batch.startswith("sweep-")
    assert [s["name"] for s in p.specs] == [f"sweep-{i}" for i in range(1, 7)]
    assert {s["batch"] for s in p.specs} == {p.batch}
    assert p.specs[0]["params"] == {"epochs": 2, "lr": 0.01, "dim": 8}
    assert p.specs[-1]["params"] == {"epochs": 2, "lr": 0.1, "dim": 32}
    assert grid_size(p.grid) == 6
    assert plan('--name sweep --grid "lr=1,2"').batch != p.batch  # no merging of sweeps


def test_grid_parser():
    assert parse_grid("lr=0.01,0.1  opt=adam") == [("lr", [0.01, 0.1]), ("opt", ["adam"])]
    assert expand_grid([("a", [1, 2]), ("b", ["x"])]) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]


@pytest.mark.parametrize(("text", "column", "words"), [
    ("lr=0.1,,0.2", 8, "empty value for 'lr'"),
    ("lr=0.1 dim", 8, "expected name=value"),
    ("lr=", 4, "empty value"),
    ("=1,2", 1, "missing parameter name"),
    ("lr=1 lr=2", 6, "appears twice"),
    ("lr=1,1", 6, "value '1' of 'lr' appears twice"),
    ("l-r=1", 1, "not an identifier"),
    ("  ", 1, "empty grid"),
])
def test_grid_syntax_errors_say_where(text, column, words):
    with pytest.raises(GridError) as info:
        parse_grid(text)
    assert info.value.column == column and words in str(info.value)
    assert "^" in str(info.value).splitlines()[-1]  # a caret under the culprit


def test_grid_syntax_error_through_the_magic():
    e = error('--grid "lr=0.1,,0.2"')
    assert e.option == "--grid" and "column 8" in str(e)


def test_huge_grid_is_refused_above_the_configurable_limit():
    values = ",".join(str(i) for i in range(100))
    e = error(f'--grid "a={values} b={values}"')
    assert "10,000 combinations" in str(e) and "TrainMagics.max_grid_size" in str(e)
    assert len(plan(f'--grid "a={values} b=1,2"', max_grid_size=200).specs) == 200


def test_grid_and_param_conflict():
    assert "also set by --param" in str(error('--param lr=1 --grid "lr=1,2"'))


def test_unknown_option_lists_the_valid_ones():
    e = error("--worker 2")
    assert e.option == "--worker" and "did you mean --workers?" in str(e)
    assert "--grid" in str(e) and "--ps-memory" in str(e)
    assert "unknown option" in str(error("--mem 4Gi"))  # no silent abbreviations
    assert "unexpected argument 'oops'" in str(error("oops"))


def test_option_without_value():
    e = error("--workers")
    assert "expected one argument" in str(e) and "usage:" in str(e)


def test_empty_cell():
    for cell in ("", "   \n\n", None):
        assert "the cell is empty" in str(error("", cell=cell))


def test_python_syntax_error_is_refused_with_the_line():
    e = error("", cell="import os\nx = = 1\n")
    assert e.option == "cell" and "line 2" in str(e) and "x = = 1" in str(e)
    e = error("", cell="%pip install x\n")
    assert "IPython magics" in str(e)


@pytest.mark.parametrize(("line", "option", "words"), [
    ("--memory lots", "--memory", "'lots' is not a valid quantity"),
    ("--ps 1 --ps-memory lots", "--ps-memory", "not a valid quantity"),
    ("--cpu 0", "--cpu", "more than 0"),
    ("--gpu 1.5", "--gpu", "whole number"),
    ("--workers 0", "--workers", "at least 1 worker is needed, got 0"),
    ("--workers two", "--workers", "expected a whole number"),
    ("--workers 100", "--workers", "at most 64"),
    ("--ps -1", "--ps", "at least 0"),
    ("--ps-memory 1Gi", "--ps-memory", "no ps tasks without --ps"),
    ("--name Bad_Name", "--name", "not a valid name"),
    ("--max-runtime soon", "--max-runtime", "expected a duration"),
    ("--env 1A=x", "--env", "not a valid environment variable name"),
    ("--env MLP_JOB_ID=3", "--env", "reserved"),
    ("--env NOVALUE", "--env", "expected NAME=VALUE"),
    ("--param lr", "--param", "expected NAME=VALUE"),
    ("--priority high", "--priority", "expected a whole number"),
    ("--after latest", "--after", "expected a job id"),
    ("--pool Prod!", "--pool", "not a pool name"),
    ("--git notaurl@main", "--git", "expected a git URL"),
])
def test_bad_values_name_the_option(line, option, words):
    e = error(line, cell="" if "--git" in line else CODE)
    assert e.option == option and words in e.message, str(e)


def test_cell_and_file_are_exclusive():
    assert "the cell must be empty" in str(error("--from-file x.py"))
    assert "not both" in str(error("--from-file x.py --git https://h/r", cell=""))


def test_unbalanced_quotes():
    assert "unbalanced quotes" in str(error('--grid "lr=1'))
