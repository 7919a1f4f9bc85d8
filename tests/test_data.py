from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from convcli.core.errors import InputError
from convcli.core.tensors import parse_input_spec
from convcli.parity.data import ImagePreprocess, load_data, load_images, random_data

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
