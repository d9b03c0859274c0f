"""Job spec validation: normalization and every bad input gets an error naming its field."""

import pytest

from mlp.core.spec import SpecError, parse_duration, validate_spec

SRC = {"inline": "print('hi')"}


def spec(**kw):
    base = {"name": "train", "source": SRC}
    base.update(kw)
    return base


def test_minimal_spec_gets_defaults():
    s = validate_spec(spec())
    assert list(s.tasks) == ["worker"]
    assert s.tasks["worker"].count == 1
    assert s.tasks["worker"].memory == 2 * 1024**3
    assert s.max_runtime == 86400


def test_ps_job_gets_a_chief_and_roles_in_order():
    s = validate_spec(spec(tasks={"worker": {"count": 1}, "ps": {"count": 2, "memory": "512Mi"}}))
    assert list(s.tasks) == ["chief", "ps", "worker"]
    assert s.tasks["ps"].memory == 512 * 1024**2
    assert s.task_count == 4


@pytest.mark.parametrize("memory,expected", [("4Gi", 4 * 1024**3), ("512Mi", 512 * 1024**2)])
def test_memory_units(memory, expected):
    assert validate_spec(spec(tasks={"worker": {"memory": memory}})).tasks["worker"].memory == (
        expected
    )


@pytest.mark.parametrize(
    "raw,field",
    [
        (spec(tasks={"worker": {"memory": "abc"}}), "tasks.worker.memory"),
        (spec(tasks={"worker": {"count": 0}}), "tasks.worker.count"),
        (spec(tasks={"worker": {"count": -2}}), "tasks.worker.count"),
        (spec(tasks={"worker": {"count": "2"}}), "tasks.worker.count"),
        (spec(tasks={"worker": {"count": True}}), "tasks.worker.count"),
        (spec(tasks={"worker": {"cpu": "lots"}}), "tasks.worker.cpu"),
        (spec(tasks={"worker": {"cpu": 0}}), "tasks.worker.cpu"),
        (spec(tasks={"worker": {"gpu": -1}}), "tasks.worker.gpu"),
        (spec(tasks={"worker": {"mem": "1Gi"}}), "tasks.worker.mem"),
        (spec(tasks={"evaluator": {}}), "tasks.evaluator"),
        (spec(tasks={}), "tasks"),
        (spec(tasks={"ps": {"count": 1}}), "tasks.worker"),
        (spec(tasks={"chief": {"count": 2}}), "tasks.chief.count"),
        (spec(colour="blue"), "colour"),
        (spec(name="a/b"), "name"),
        (spec(name=".."), "name"),
        (spec(name="../etc"), "name"),
        (spec(name="tr\u00e4ining"), "name"),
        (spec(name="x" * 1000), "name"),
        (spec(name=""), "name"),
        (spec(name=None), "name"),
        (spec(name="Upper"), "name"),
        (spec(source={}), "source"),
        (spec(source={"inline": "  "}), "source.inline"),
        (spec(source={"inline": "x", "path": "a.py"}), "source"),
        (spec(source={"path": "../other/train.py"}), "source.path"),
        (spec(source={"path": "/etc/passwd"}), "source.path"),
        (spec(source={"git": "not a url"}), "source.git"),
        (spec(source={"git": "https://example.org/r.git", "ref": "../x"}), "source.ref"),
        (spec(source={"git": "https://example.org/r.git", "branch": "x"}), "source.branch"),
        (spec(env={"TF_CONFIG": "{}"}), "env.TF_CONFIG"),
        (spec(env={"1BAD": "x"}), "env.1BAD"),
        (spec(args="--lr 1"), "args"),
        (spec(max_runtime="forever"), "max_runtime"),
        (spec(max_runtime=-5), "max_runtime"),
        (spec(max_runtime=0), "max_runtime"),
        ({"source": SRC}, "name"),
        ({"name": "x"}, "source"),
        ([1, 2], "spec"),
        (None, "spec"),
    ],
)
def test_bad_input_names_the_field(raw, field):
    with pytest.raises(SpecError) as e:
        validate_spec(raw)
    assert e.value.field == field
    assert field in str(e.value)


def test_unknown_field_lists_valid_ones():
    with pytest.raises(SpecError, match="valid fields are: alerts, args, batch, depends_on, env, group, max_runtime"):
        validate_spec(spec(colour="blue"))


def test_memory_error_says_what_is_accepted():
    with pytest.raises(SpecError) as e:
        validate_spec(spec(tasks={"worker": {"memory": "abc"}}))
    assert "Gi" in e.value.message


def test_max_runtime_limit():
    with pytest.raises(SpecError, match="at most 3600"):
        validate_spec(spec(max_runtime="2h"), max_runtime_limit=3600)


@pytest.mark.parametrize("raw,seconds", [(90, 90), ("90s", 90), ("30m", 1800), ("2h", 7200),
                                         ("1d", 86400), ("1.5h", 5400)])
def test_durations(raw, seconds):
    assert parse_duration(raw, "max_runtime") == seconds


def test_git_source_defaults():
    s = validate_spec(spec(source={"git": "https://example.org/r.git"}))
    assert s.source == {"git": "https://example.org/r.git", "ref": "HEAD", "path": "train.py"}


def test_path_is_normalized():
    s = validate_spec(spec(source={"path": "./jobs//train.py"}))
    assert s.source == {"path": "jobs/train.py"}


def test_round_trip_through_dict():
    s = validate_spec(spec(tasks={"worker": {"count": 2}, "ps": {"count": 1}}, params={"lr": 0.1}))
    assert validate_spec(s.to_dict()) == s


def test_normalized_git_spec_validates_again():
    s = validate_spec(spec(source={"git": "https://example.org/r.git", "path": "a/b.py"}))
    assert validate_spec(s.to_dict()).source["git"] == "https://example.org/r.git"
