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
