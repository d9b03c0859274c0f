"""Resource vectors and the user-facing quantity parsers."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlp.scheduling.resources import (
    Resources,
    format_cpu,
    format_memory,
    parse_cpu,
    parse_gpu,
    parse_memory,
    parse_resources,
)

GI = 2**30


@pytest.mark.parametrize(
    ("raw", "cores"),
    [
        ("2", 2.0),
        (2, 2.0),
        ("500m", 0.5),
        (0.5, 0.5),
        ("0.25", 0.25),
        (0, 0.0),
        (0.1, 0.1),
        ("1.0001", 1.001),
        (" 3 ", 3.0),
    ],
)
def test_parse_cpu_accepts(raw: object, cores: float) -> None:
    assert parse_cpu(raw) == cores


@pytest.mark.parametrize(
    "raw",
    [
        "abc",
        "-1",
        -1,
        -0.5,
        math.nan,
        math.inf,
        "inf",
        "nan",
        True,
        False,
        None,
        "2Gi",
        "",
        [1],
        "1e3",
    ],
)
def test_parse_cpu_rejects_with_field_and_forms(raw: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_cpu(raw, "tasks[0].cpu")
    message = str(info.value)
    assert message.startswith("tasks[0].cpu:")
    assert "millicores" in message


@pytest.mark.parametrize(
    ("raw", "size"),
    [
        ("4Gi", 4 * GI),
        ("512Mi", 512 * 2**20),
        ("1G", 10**9),
        ("1.5Gi", 3 * GI // 2),
        (1024, 1024),
        ("1024", 1024),
        ("1k", 1000),
        ("2Ki", 2048),
        (0, 0),
        (1.5, 2),
    ],
)
def test_parse_memory_accepts(raw: object, size: int) -> None:
    assert parse_memory(raw) == size


@pytest.mark.parametrize(
    "raw",
    ["abc", "-1Gi", -5, math.nan, math.inf, True, "4GB", "4 gib", None, "Gi"],
)
def test_parse_memory_rejects_with_field_and_forms(raw: object) -> None:
    with pytest.raises(ValueError) as info:
        parse_memory(raw)
    message = str(info.value)
    assert message.startswith("memory:")
    assert "'4Gi'" in message


@pytest.mark.parametrize(("raw", "count"), [(0, 0), (2, 2), ("3", 3), (1.0, 1)])
def test_parse_gpu_accepts(raw: object, count: int) -> None:
    assert parse_gpu(raw) == count


@pytest.mark.parametrize("raw", ["abc", -1, "1.5", 1.5, True, math.nan, math.inf, "1m", None])
def test_parse_gpu_rejects(raw: object) -> None:
    with pytest.raises(ValueError, match=r"^gpu: .*whole number"):
        parse_gpu(raw)


def test_parse_resources_names_unknown_resource() -> None:
    with pytest.raises(ValueError, match="unknown resource 'gpus'; known resources are cpu"):
        parse_resources({"gpus": 1})
    assert parse_resources({"rdma": 2}, extra_names=["rdma"])["rdma"] == 2
    assert parse_resources({"cpu": "500m", "memory": "1Gi"}) == Resources(cpu=0.5, memory=GI)
    with pytest.raises(ValueError, match=r"quota\.cpu: 'x'"):
        parse_resources({"cpu": "x"}, field="quota")
    with pytest.raises(ValueError, match="expected a mapping"):
        parse_resources([1, 2])  # type: ignore[arg-type]


def test_vector_arithmetic_is_exact() -> None:
    total = Resources.zero()
    for _ in range(10):
        total = total + Resources(cpu=0.1)
    assert total == Resources(cpu=1)
    a = Resources(cpu=2, memory=4 * GI, gpu=1)
    b = Resources(cpu=1, memory=GI)
    assert (a - b) == Resources(cpu=1, memory=3 * GI, gpu=1)
    assert b <= a and b.fits(a) and not a.fits(b)
    assert a >= b
    assert (b - a).clamp() == Resources.zero()
    assert (b - a).exceeding(Resources.zero()) == []
    assert a.exceeding(b) == ["cpu", "gpu", "memory"]
    assert a.scale(2) == Resources(cpu=4, memory=8 * GI, gpu=2)
    assert a.min(Resources(cpu=5)) == Resources(cpu=2)
    assert Resources.zero().fits(Resources.zero())
    assert not Resources.zero().fits(Resources(cpu=-1))
    assert hash(Resources(cpu=1, gpu=0)) == hash(Resources(cpu=1))
    assert repr(a) == "Resources(cpu=2, gpu=1, memory=4Gi)"
    assert a.to_dict() == {"cpu": 2.0, "memory": 4 * GI, "gpu": 1}
    with pytest.raises(ValueError):
        Resources(cpu=math.nan)
    with pytest.raises(ValueError):
        Resources(cpu=True)


def test_formatting() -> None:
    assert format_memory(4 * GI) == "4Gi"
    assert format_memory(3 * GI // 2) == "1.5Gi"
    assert format_memory(100) == "100"
    assert format_cpu(0.5) == "500m"
    assert format_cpu(2) == "2"


@given(st.integers(min_value=0, max_value=2**50))
def test_memory_roundtrip_exact_units(n: int) -> None:
    text = format_memory(n)
    if "." not in text:
        assert parse_memory(text) == n


@given(
    st.dictionaries(st.sampled_from(["cpu", "memory", "gpu"]), st.integers(-1000, 1000)),
    st.dictionaries(st.sampled_from(["cpu", "memory", "gpu"]), st.integers(-1000, 1000)),
)
def test_add_sub_inverse_and_fits_matches_components(x: dict[str, int], y: dict[str, int]) -> None:
    a, b = Resources(x), Resources(y)
    assert (a + b) - b == a
    assert a.fits(b) == all(a[n] <= b[n] for n in ("cpu", "memory", "gpu"))


@pytest.mark.parametrize(
    "parse,value",
    [
        (parse_cpu, 1.1e308),
        (parse_cpu, "99999999999999999999m"),
        (parse_memory, "19831999999999.92Gi"),
        (parse_memory, 10**30),
        (parse_gpu, 10**12),
    ],
)
def test_absurd_quantities_are_refused_not_crashed(parse, value):
    with pytest.raises(ValueError, match="too large"):
        parse(value)
