import pytest

from convcli.core.errors import InputError
from convcli.core.tensors import parse_input_spec


def test_parses_static_dynamic_and_range() -> None:
    spec = parse_input_spec("ids:batch=3xseq:int64:0..1000")
    assert spec.name == "ids"
    assert [d.name for d in spec.shape] == ["batch", "seq"]
    assert spec.example_shape() == (3, 8)
    assert spec.example_shape({"seq": 5}) == (3, 5)
    assert spec.value_range() == (0, 1000)
    assert spec.dynamic_dims == {0: "batch", 1: "seq"}
    assert parse_input_spec("x:1x3x32x32").dtype == "float32"
    assert parse_input_spec(spec.text()) == spec


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("x", "expected NAME:SHAPE"),
        ("x:1x3:float99", "dtype 'float99'"),
        ("x:1x-3:float32", "dimension '-3'"),
        ("x:2:int64:5..1", "is empty"),
        ("x:2:int64:a..b", "LOW..HIGH"),
    ],
)
def test_rejects_bad_specs_with_the_value_named(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        parse_input_spec(text)
    assert fragment in err.value.one_line()
    assert text.split(":")[0] in err.value.one_line()


@pytest.mark.parametrize(
    ("text", "names", "shape"),
    [
        ("ids:batch=2xmax_len=5:int64:0..100", ["batch", "max_len"], (2, 5)),
        ("ids:max_len=5:int64", ["max_len"], (5,)),
        ("x:xdim=3", ["xdim"], (3,)),
        ("x:box=4", ["box"], (4,)),
        ("x:box", ["box"], (2,)),
        ("x:batch=2xbox", ["batch", "box"], (2, 2)),
        ("x:batch=2xxdim=3x4", ["batch", "xdim", None], (2, 3, 4)),
        ("ids:batch=2,max_len:int64", ["batch", "max_len"], (2, 2)),
        ("ids:batch=2,maxlen=5,3:int64", ["batch", "maxlen", None], (2, 5, 3)),
        ("x:1X3X8x8", [None, None, None, None], (1, 3, 8, 8)),
    ],
)
def test_dimension_names_may_contain_x(text: str, names: list[str | None], shape: tuple[int, ...]) -> None:
    """An ``x`` separates dims only after a digit (or ``,`` does): ``max_len`` is one name, not ``ma`` x ``_len``."""
    spec = parse_input_spec(text)
    assert [d.name for d in spec.shape] == names
    assert spec.example_shape() == shape
    assert parse_input_spec(spec.text()) == spec


@pytest.mark.parametrize(
    ("text", "fragment", "fixes"),
    [
        ("x:batchx3x32x32", "'batch' x '3' x '32' x '32'", ["batchx3x32x32=2", "batch=2x3x32x32"]),
        ("ids:batch=2xmaxlen:int64", "'ma' x 'len'", ["batch=2xmaxlen=2", "batch=2,maxlen"]),
        ("x:dim1x3", "'dim1' x '3'", ["dim1x3=2", "dim1=2x3"]),
    ],
)
def test_ambiguous_bare_name_is_refused_with_both_spellings(text: str, fragment: str, fixes: list[str]) -> None:
    with pytest.raises(InputError) as err:
        parse_input_spec(text)
    line = err.value.one_line()
    assert text in line and "reads as one dimension or as" in line and fragment in line
    for fix in fixes:
        assert fix in line
        parse_input_spec(f"{text.split(':')[0]}:{fix}")  # each suggested spelling parses


@pytest.mark.parametrize(("text", "fragment"), [("x:2x3,seq", "dimension '2x3'"), ("x:1x3x", "dimension '3x'"),
                                                ("x:batch=2,", "dimension ''")])
def test_malformed_shapes_name_the_bad_piece(text: str, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        parse_input_spec(text)
    assert fragment in err.value.one_line()
