from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convcli.core.errors import InputError
from convcli.core.tensors import parse_input_spec
from convcli.parity.data import ImagePreprocess, list_images, load_data, load_images, random_data, split_labelled

ROOT = Path(__file__).resolve().parents[1]
SPEC = [parse_input_spec("x:batch=2x1x8x8:float32")]


def test_random_data_is_seeded_and_in_range() -> None:
    ids = [parse_input_spec("ids:batch=2xseq=5:int64:3..7")]
    a = random_data(ids, 10, seed=1)
    b = random_data(ids, 10, seed=1)
    assert np.array_equal(a.inputs["ids"], b.inputs["ids"])
    assert a.inputs["ids"].shape == (10, 5)
    assert a.inputs["ids"].min() >= 3 and a.inputs["ids"].max() < 7


def test_labelled_image_folder_uses_numeric_class_names() -> None:
    data = load_images(ROOT / "calibration_data/digits/val", SPEC, ImagePreprocess())
    assert len(data) == 360
    assert data.inputs["x"].shape == (360, 1, 8, 8)
    assert data.labels is not None and set(data.labels.tolist()) == set(range(10))
    assert data.inputs["x"].min() >= 0.0 and data.inputs["x"].max() <= 1.0


def test_limit_spreads_over_classes() -> None:
    data = load_images(ROOT / "calibration_data/digits/val", SPEC, ImagePreprocess(), limit=20)
    assert len(data) == 20
    assert data.labels is not None and len(set(data.labels.tolist())) >= 8


def test_csv_rgb_resize_mean_std_and_nhwc(tmp_path: Path) -> None:
    for i, color in enumerate([(255, 0, 0), (0, 0, 255)]):
        Image.new("RGB", (20, 10), color).save(tmp_path / f"{i}.png")
    (tmp_path / "labels.csv").write_text("file,label\n0.png,cat\n1.png,dog\n")
    spec = [parse_input_spec("img:1x4x4x3:float32")]
    pre = ImagePreprocess(layout="NHWC", mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5], color="bgr")
    data = load_images(tmp_path / "labels.csv", spec, pre)
    assert data.inputs["img"].shape == (2, 4, 4, 3)
    assert data.labels is not None and data.labels.tolist() == [0, 1]
    # red in BGR order: channel 2 is 1.0 after (1 - 0.5) / 0.5
    assert np.allclose(data.inputs["img"][0, 0, 0], [-1, -1, 1])


def test_npz_by_input_name_and_errors(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 1, 8, 8), np.float64), labels=np.arange(3))
    data = load_data(tmp_path / "d.npz", SPEC)
    assert data.inputs["x"].dtype == np.float32 and data.labels is not None
    np.savez(tmp_path / "bad.npz", y=np.zeros((3, 1, 8, 8)))
    with pytest.raises(InputError, match="no array for input"):
        load_data(tmp_path / "bad.npz", SPEC)
    with pytest.raises(InputError, match="does not exist"):
        load_data(tmp_path / "missing.npy", SPEC)


def test_tuning_split_is_stratified_disjoint_and_deterministic() -> None:
    """Labelled folders load class by class: a 'first half' split would tune on classes 0-4 and judge on 5-9.
    Each class must put its share in both parts, the parts must not overlap, and the same set splits the same."""
    labels = [c for c, n in enumerate([36, 36, 35, 37, 36, 37, 36, 36, 35, 36]) for _ in range(n)]  # sorted
    split = split_labelled(labels, 0.5)
    tuning, held = set(split.tuning), set(split.held_out)
    assert not tuning & held and tuning | held == set(range(len(labels)))
    for c in range(10):
        members = [i for i, lab in enumerate(labels) if lab == c]
        assert [i for i in members if i in tuning] == members[1::2]  # every 2nd sample of the class
    assert split.rule == "every 2nd sample per class" and split == split_labelled(labels, 0.5)
    assert split.describe("val") == "val: 360 samples, 178 for int8 tuning (every 2nd sample per class), " \
                                   "182 held out for accuracy"
    for fraction in (0.1, 0.25, 0.3, 0.75):
        part = split_labelled(labels, fraction)
        for c in range(10):
            n = labels.count(c)
            got = sum(labels[i] == c for i in part.tuning)
            assert got == int(n * fraction + 1e-9), (fraction, c, got)  # its share of every class, none skipped
    assert split_labelled(labels, 0.25).rule == "every 4th sample per class"


def test_tuning_split_on_the_bundled_set_keeps_every_class_in_both_parts() -> None:
    _, labels = list_images(ROOT / "calibration_data/digits/val")
    split = split_labelled(labels, 0.5)
    assert {labels[i] for i in split.tuning} == {labels[i] for i in split.held_out} == set(range(10))


@pytest.mark.parametrize(("labels", "fraction", "fragment"), [
    ([0, 0, 1, 1, 2], 0.5, "class 2 has 1 sample(s), too few for both parts (at least 2)"),
    ([0] * 5 + [1] * 5, 0.1, "class 0 has 5 sample(s), too few for both parts (at least 10)"),
    ([0] * 10, 1.0, "must be between 0 and 1"),
])
def test_tuning_split_too_small_names_the_field(labels: list[int], fraction: float, fragment: str) -> None:
    with pytest.raises(InputError) as err:
        split_labelled(labels, fraction)
    assert "data.tuning_fraction" in err.value.one_line() and fragment in err.value.one_line()
