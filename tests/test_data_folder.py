"""imagefolder: class maps that keep the model's label indices, and disjoint seeded splits of one folder."""

import numpy as np
import pytest
from PIL import Image

import vitkit
from vitkit import DataError
from vitkit.data import calibration_set, load_dataset
from vitkit.data.folder import imagenet_classes

from .conftest import make_tiny

WNIDS = imagenet_classes()


def _folder(root, classes, n_per_class=2, size=36):
    rng = np.random.default_rng(abs(hash(str(root))) % 2**32)
    for cls in classes:
        (root / cls).mkdir(parents=True)
        for i in range(n_per_class):
            arr = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(root / cls / f"{cls}_{i}.png")
    return root


def _labels(ds):
    return [label for _, label in ds.samples]


def _thousand_class_model():
    return vitkit.load("vit_tiny_patch16_224", img_size=32, patch_size=16, depth=1, num_classes=1000)


def test_imagenet_order_keeps_label_indices(tmp_path):
    picked = [WNIDS[7], WNIDS[3], WNIDS[999]]
    root = _folder(tmp_path / "sample", picked)
    ds = load_dataset(f"imagefolder:{root}?classes=imagenet", "all", model=_thousand_class_model())
    assert sorted(set(_labels(ds))) == [3, 7, 999] and ds.num_classes == 1000
    # without the option, wnid folders under a 1000-class model pick ImageNet order too (logged)
    auto = load_dataset(f"imagefolder:{root}", "all", model=_thousand_class_model())
    assert _labels(auto) == _labels(ds)
    # the folder's own sorted order is still there when asked for
    plain = load_dataset(f"imagefolder:{root}?classes=folder", "all", model=make_tiny())
    assert sorted(set(_labels(plain))) == [0, 1, 2]


def test_class_file_and_list(tmp_path):
    root = _folder(tmp_path / "f", ["dog", "cat"])
    names = ["zebra", "dog", "ant", "cat", "bee", "owl", "elk", "yak", "gnu", "emu"]  # make_tiny has 10 outputs
    (tmp_path / "map.txt").write_text("# my classes\n" + "\n".join(names) + "\n")
    ds = load_dataset(f"imagefolder:{root}?classes={tmp_path / 'map.txt'}", "all", model=make_tiny())
    assert {ds.classes[label] for label in _labels(ds)} == {"dog", "cat"}
    assert sorted(set(_labels(ds))) == [1, 3]
    again = load_dataset(f"imagefolder:{root}", "all", model=make_tiny(), classes=names)
    assert _labels(again) == _labels(ds)
    (root / "classes.txt").write_text("\n".join(names))  # picked up from the folder itself
    assert _labels(load_dataset(f"imagefolder:{root}", "all", model=make_tiny())) == _labels(ds)


def test_folder_outside_class_map(tmp_path):
    root = _folder(tmp_path / "f", [WNIDS[1], "n99999999"])
    with pytest.raises(DataError, match="folder 'n99999999' is not in the class map imagenet"):
        load_dataset(f"imagefolder:{root}?classes=imagenet", "all", model=_thousand_class_model())


@pytest.mark.parametrize("size", [5, 12])
def test_class_map_length_must_match_the_model(tmp_path, size):
    root = _folder(tmp_path / "f", ["c0", "c1"])
    names = [f"c{i}" for i in range(size)]
    with pytest.raises(DataError, match=f"has {size} classes but the model has 10 outputs"):
        load_dataset(f"imagefolder:{root}", "all", model=make_tiny(), classes=names)


def test_flat_folder_splits_are_disjoint_seeded_and_recorded(tmp_path):
    root = _folder(tmp_path / "flat", [f"c{i}" for i in range(10)], n_per_class=4)  # 40 images
    name = f"imagefolder:{root}?split=calib:0.1,train:0.5,val:0.1,test:0.3&seed=3"
    parts = {s: load_dataset(name, s, model=make_tiny()) for s in ("calib", "train", "val", "test")}
    paths = {s: {p for p, _ in ds.samples} for s, ds in parts.items()}
    assert [len(paths[s]) for s in ("calib", "train", "val", "test")] == [4, 20, 4, 12]
    for a in paths:
        for b in paths:
            assert a == b or not paths[a] & paths[b], f"{a} and {b} share images"
    assert set().union(*paths.values()) == {p for p, _ in load_dataset(name, "all", model=make_tiny()).samples}
    again = load_dataset(name, "test", model=make_tiny())
    assert again.samples == parts["test"].samples
    other = load_dataset(name.replace("seed=3", "seed=4"), "test", model=make_tiny())
    assert other.samples != parts["test"].samples
    assert "seed 3" in parts["test"].split_rule and "test 0.3" in parts["test"].split_rule
    # the default rule also keeps calibration and evaluation apart, and reports record it
    default = {s: {p for p, _ in load_dataset(f"imagefolder:{root}", s).samples} for s in ("calib", "test")}
    assert default["calib"] and default["test"] and not default["calib"] & default["test"]
    model = make_tiny()
    result = vitkit.benchmark(model, parts["test"], batch_sizes=(2,), repeats=1, latency_runs=1, threads=1)
    assert "seed 3" in result.to_dict()["settings"]["data_split"]


def test_split_subfolders_and_calib_fallback(tmp_path):
    _folder(tmp_path / "root" / "train", ["a", "b"], n_per_class=3)
    _folder(tmp_path / "root" / "val", ["a", "b"])
    assert len(load_dataset(f"imagefolder:{tmp_path / 'root'}", "calib", model=make_tiny())) == 6  # from train/
    with pytest.raises(DataError, match="no 'test' one"):
        load_dataset(f"imagefolder:{tmp_path / 'root'}", "test", model=make_tiny())


@pytest.mark.parametrize(
    "query, msg",
    [
        ("split=calib:0.0,train:0.5,val:0.2,test:0.3", "the 'calib' split .* is empty"),
        ("split=train:0.9,test:0.5", "add up to at most 1"),
        ("split=dev:0.5", "bad split part 'dev:0.5'"),
        ("split=test:lots", "must be a number"),
        ("shuffle=1", "unknown imagefolder option 'shuffle=1'"),
        ("seed=x", "seed must be an integer"),
        ("classes=missing.txt", "is not a file"),
    ],
)
def test_bad_folder_options(tmp_path, query, msg):
    root = _folder(tmp_path / "f", ["a", "b"], n_per_class=4)
    with pytest.raises(DataError, match=msg):
        load_dataset(f"imagefolder:{root}?{query}", "calib", model=make_tiny())


def test_calibration_larger_than_its_split(tmp_path):
    root = _folder(tmp_path / "f", ["a", "b"], n_per_class=5)
    calib = load_dataset(f"imagefolder:{root}", "calib", model=make_tiny())
    with pytest.raises(DataError, match="only 1; lower calib n"):
        calibration_set(calib, 8)


def test_corrupt_image_is_named(tmp_path):
    root = _folder(tmp_path / "f", ["a"], n_per_class=1)
    (root / "a" / "broken.png").write_bytes(b"not a png")
    ds = load_dataset(f"imagefolder:{root}?classes=folder", "all", model=make_tiny())
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        [ds[i] for i in range(len(ds))]


def test_folder_batches_are_augmented_with_a_seed(tmp_path):
    import torch

    from vitkit.data import iterate_batches

    root = _folder(tmp_path / "f", ["a", "b"], n_per_class=4)
    ds = load_dataset(f"imagefolder:{root}", "all", model=make_tiny())
    plain = next(iterate_batches(ds, 8))[0]
    aug = [next(iterate_batches(ds, 8, seed=s, augment_shift=3, augment_scale=0.1))[0] for s in (1, 1, 2)]
    assert aug[0].shape == plain.shape and not torch.equal(aug[0], plain)
    assert torch.equal(aug[0], aug[1]) and not torch.equal(aug[0], aug[2])
