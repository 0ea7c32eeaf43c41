import numpy as np
import pytest
import torch
from PIL import Image

from vitkit import DataError
from vitkit.data import calibration_set, input_spec, iterate_batches, load_dataset

from .conftest import make_tiny


@pytest.mark.parametrize("name, sizes", [("mnist5k", (4000, 500, 500)), ("digits", (1257, 270, 270))])
def test_bundled_splits_are_deterministic_and_disjoint(name, sizes):
    parts = [load_dataset(name, s) for s in ("train", "val", "test")]
    assert tuple(len(p) for p in parts) == sizes
    again = load_dataset(name, "test")
    assert torch.equal(again.images, parts[2].images)
    flat = [p.images.flatten(1) for p in parts]
    # no test image is also a training image (rows are compared exactly)
    train_rows = {tuple(r.tolist()) for r in flat[0][:500]}
    assert not any(tuple(r.tolist()) in train_rows for r in flat[2])
    labels = torch.cat([p.labels for p in parts])
    assert set(labels.tolist()) == set(range(10))  # shuffled: every class in every split
    assert set(parts[2].labels.tolist()) == set(range(10))


def test_resized_to_the_model():
    model = make_tiny()  # 3x32x32, ImageNet mean/std
    ds = load_dataset("mnist5k", "val", model=model)
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and isinstance(y, int)
    batch, labels = next(iterate_batches(ds, 8))
    assert batch.shape == (8, 3, 32, 32) and labels.shape == (8,)
    torch.testing.assert_close(batch[0], x)
    spec = input_spec(model)
    assert spec.mean == pytest.approx(tuple(model.pretrained_cfg["mean"]))


def test_grey_model_gets_one_channel():
    import vitkit

    ref = vitkit.load("vitkit_mnist_tiny")
    x, _ = load_dataset("digits", "test", model=ref)[0]
    assert x.shape == (1, 28, 28)


def test_calibration_set_seeded():
    ds = load_dataset("mnist5k", "train")
    a, b, c = calibration_set(ds, 16, seed=1), calibration_set(ds, 16, seed=1), calibration_set(ds, 16, seed=2)
    assert a.shape[0] == 16 and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(DataError, match="only 270"):
        calibration_set(load_dataset("digits", "test"), 1000)


def _write_folder(root, n_per_class=3, size=40):
    rng = np.random.default_rng(0)
    for cls in ("cat", "dog"):
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{i}.png")


def test_image_folder_uses_timm_eval_transform(tmp_path):
    _write_folder(tmp_path / "imgs")
    model = make_tiny()
    ds = load_dataset(f"imagefolder:{tmp_path / 'imgs'}", "all", model=model)
    assert len(ds) == 6 and ds.num_classes == 2
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and y == 0
    batch, labels = next(iterate_batches(ds, 4))
    assert batch.shape == (4, 3, 32, 32)


def test_image_folder_split_subdir(tmp_path):
    _write_folder(tmp_path / "root" / "val")
    ds = load_dataset(f"imagefolder:{tmp_path / 'root'}", "val", model=make_tiny())
    assert len(ds) == 6


@pytest.mark.parametrize(
    "spec, msg",
    [
        ("imagefolder:", "needs a path"),
        ("", "empty dataset name"),
        ("cifar10", "unknown dataset 'cifar10'; valid datasets"),
    ],
)
def test_bad_dataset_specs(spec, msg):
    with pytest.raises(DataError, match=msg):
        load_dataset(spec, "test")


def test_folder_without_images(tmp_path):
    (tmp_path / "empty" / "cls").mkdir(parents=True)
    (tmp_path / "empty" / "cls" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images found"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}", "test")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}", "test")


def test_unknown_split():
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_dataset("mnist5k", "dev")
