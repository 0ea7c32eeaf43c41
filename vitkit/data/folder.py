"""``imagefolder:/path[?options]``: class sub-folders of images, with timm's eval transforms for the model.

Options (``imagefolder:/data/sample?classes=imagenet&split=calib:0.1,train:0.6,val:0.1,test:0.2&seed=0``):

- ``classes``: the class map — which model output each folder name is. ``imagenet`` = the 1,000 ImageNet-1k
  wnids in the order of ImageNet-trained models (timm's list), ``folder`` = the sorted folder names (torchvision's
  rule), or a path to a text file with one class name per line (the line number is the label). Without the
  option a ``classes.txt`` in the folder is used, then ImageNet order when every folder is an ImageNet wnid and
  the model has 1,000 outputs, then the sorted folder names. A folder that holds only some classes keeps the
  model's label indices through the map.
- ``split`` / ``seed``: when the folder has no ``train/``/``val/``/``test/``/``calib/`` sub-folders, the images
  (sorted by path, then permuted with ``seed``) are cut into disjoint ``calib``/``train``/``val``/``test`` parts by
  these fractions (default ``calib:0.1,train:0.6,val:0.1,test:0.2``), so calibration, training and evaluation
  never share an image. ``all`` is every image. The rule is kept on the dataset as ``split_rule`` and recorded in
  reports.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..errors import DataError

_log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")
PART_NAMES = ("calib", "train", "val", "test")
DEFAULT_FRACTIONS = (("calib", 0.1), ("train", 0.6), ("val", 0.1), ("test", 0.2))
OPTION_KEYS = ("classes", "split", "seed")
_WNID = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class FolderSpec:
    """A parsed ``imagefolder:`` name."""

    root: Path
    classes: str | None = None
    fractions: tuple[tuple[str, float], ...] = DEFAULT_FRACTIONS
    seed: int = 0


def parse_folder_name(text: str) -> FolderSpec:
    """``/path?classes=..&split=calib:0.1,train:0.6,val:0.1,test:0.2&seed=0`` → :class:`FolderSpec`."""
    path, _, query = text.partition("?")
    if not path:
        raise DataError("imagefolder: needs a path, e.g. imagefolder:/data/imagenet/val")
    opts: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, sep, value = item.partition("=")
        if not sep or key not in OPTION_KEYS:
            raise DataError(f"unknown imagefolder option {item!r}; valid options: {', '.join(OPTION_KEYS)} (key=value)")
        opts[key] = value
    seed = opts.get("seed", "0")
    if not seed.lstrip("-").isdigit():
        raise DataError(f"imagefolder seed must be an integer, got {seed!r}")
    fractions = _parse_fractions(opts["split"]) if "split" in opts else DEFAULT_FRACTIONS
    return FolderSpec(Path(path).expanduser(), opts.get("classes") or None, fractions, int(seed))


def _parse_fractions(text: str) -> tuple[tuple[str, float], ...]:
    fractions = {}
    for item in filter(None, text.split(",")):
        name, sep, value = item.partition(":")
        if not sep or name not in PART_NAMES:
            raise DataError(f"bad split part {item!r}: use name:fraction with names from {', '.join(PART_NAMES)}")
        try:
            fractions[name] = float(value)
        except ValueError:
            raise DataError(f"split fraction for {name!r} must be a number, got {value!r}") from None
        if not 0.0 <= fractions[name] <= 1.0:
            raise DataError(f"split fraction for {name!r} must be in [0, 1], got {value}")
    total = sum(fractions.values())
    if not fractions or total > 1.0 + 1e-6:
        raise DataError(f"split fractions must add up to at most 1 (got {total:g} from {text!r})")
    return tuple((n, fractions.get(n, 0.0)) for n in PART_NAMES)


def split_indices(n: int, fractions, seed: int) -> dict[str, list[int]]:
    """Disjoint index lists per part: a seeded permutation of ``range(n)`` cut by ``fractions`` in order."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start, acc = {}, 0, 0.0
    for name, frac in fractions:
        acc += frac
        end = min(n, round(acc * n))
        parts[name] = sorted(order[start:end])
        start = end
    return parts


def imagenet_classes() -> list[str]:
    """The 1,000 ImageNet-1k wnids in the label order of ImageNet-trained models (timm's list)."""
    from timm.data import ImageNetInfo

    return list(ImageNetInfo("imagenet-1k").label_names())


def resolve_class_map(choice, root: Path, folders: list[str], num_outputs: int | None) -> tuple[list[str], str]:
    """The ordered class list and how it was chosen (see the module docstring)."""
    if isinstance(choice, list | tuple):
        classes, how = [str(c) for c in choice], f"given list ({len(choice)} classes)"
    elif choice in (None, "auto"):
        if (root / "classes.txt").is_file():
            classes, how = _read_class_file(root / "classes.txt"), f"{root / 'classes.txt'}"
        elif num_outputs == 1000 and folders and all(_WNID.match(f) for f in folders):
            classes, how = imagenet_classes(), "imagenet (folders are ImageNet wnids)"
            if not set(folders) <= set(classes):
                classes, how = sorted(folders), "folder names (sorted)"
        else:
            classes, how = sorted(folders), "folder names (sorted)"
    elif choice == "imagenet":
        classes, how = imagenet_classes(), "imagenet"
    elif choice == "folder":
        classes, how = sorted(folders), "folder names (sorted)"
    else:
        path = Path(str(choice)).expanduser()
        if not path.is_file():
            raise DataError(
                f"class map {choice!r} is not a file; use classes=imagenet, classes=folder or a class list file"
            )
        classes, how = _read_class_file(path), str(path)
    if len(set(classes)) != len(classes):
        raise DataError(f"class map {how} lists a class twice; each line must name one class once")
    missing = [f for f in folders if f not in set(classes)]
    if missing:
        raise DataError(
            f"folder {missing[0]!r} is not in the class map {how} ({len(missing)} such folders); "
            "rename the folder or pass classes=FILE listing every class in the model's order"
        )
    if num_outputs and len(classes) != num_outputs and how != "folder names (sorted)":
        raise DataError(
            f"class map {how} has {len(classes)} classes but the model has {num_outputs} outputs; "
            "pass the model's full ordered class list"
        )
    if num_outputs and len(classes) != num_outputs:
        _log.warning(
            "%s holds %d class folders but the model has %d outputs: labels are the sorted folder order; "
            "pass classes=imagenet or classes=FILE if they are the model's classes",
            root,
            len(classes),
            num_outputs,
        )
    return classes, how


def _read_class_file(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class map {path}: {exc}") from None
    classes = [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]
    if not classes:
        raise DataError(f"class map {path} is empty; write one class name per line")
    return classes


class _ChannelFit(Dataset):
    """Wraps an RGB dataset for models that take a different number of channels (grey = channel mean)."""

    def __init__(self, base: Dataset, chans: int) -> None:
        self.base, self.chans = base, chans
        for attr in ("classes", "num_classes", "name", "split_rule", "samples"):
            setattr(self, attr, getattr(base, attr, None))

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int):
        x, y = self.base[idx]
        if x.shape[0] != self.chans:
            x = x.mean(0, keepdim=True).expand(self.chans, *x.shape[1:]).contiguous()
        return x, y


class FolderImages(Dataset):
    """``(path, label)`` samples of an image folder, read with PIL and the model's eval transform."""

    def __init__(self, samples: list[tuple[Path, int]], classes: list[str], transform, *, name: str, rule: str):
        self.samples, self.classes, self.transform = samples, classes, transform
        self.num_classes = len(classes)
        self.name, self.split_rule = name, rule

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, idx: int):
        from PIL import Image, UnidentifiedImageError

        path, label = self.samples[idx]
        try:
            with Image.open(path) as img:
                x = self.transform(img.convert("RGB"))
        except (OSError, UnidentifiedImageError) as exc:
            raise DataError(f"cannot read image {path}: {exc}; remove or replace the file") from None
        return x, label


def image_folder(path: str, split: str, model, spec, classes=None) -> Dataset:
    """The ``split`` part of ``imagefolder:path`` for ``model`` (see the module docstring)."""
    from timm.data import create_transform

    fs = parse_folder_name(path)
    root = fs.root
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    present = [p for p in PART_NAMES if (root / p).is_dir()]
    if present:
        part = split if split != "calib" or "calib" in present else "train"
        if split == "all" or part not in present:
            raise DataError(
                f"{root} has split sub-folders {present} but no {split!r} one; use --split with one of them"
            )
        root, rule = root / part, f"sub-folder {part}/ of {fs.root}"
    samples = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    samples = [p for p in samples if p.parent != root]
    if not samples:
        raise DataError(
            f"no images found in {root} (expected class sub-folders holding {', '.join(IMAGE_SUFFIXES[:3])}... files)"
        )
    labels_of = [p.relative_to(root).parts[0] for p in samples]
    num_outputs = getattr(model, "num_classes", None) if model is not None else None
    class_list, how = resolve_class_map(
        classes if classes is not None else fs.classes,
        root,
        sorted(set(labels_of)),
        int(num_outputs) if num_outputs else None,
    )
    index = {c: i for i, c in enumerate(class_list)}
    pairs = [(p, index[c]) for p, c in zip(samples, labels_of, strict=True)]
    if not present and split != "all":
        parts = split_indices(len(pairs), fs.fractions, fs.seed)
        shares = ", ".join(f"{n} {f:g}" for n, f in fs.fractions)
        rule = f"seeded split of {len(pairs)} images (seed {fs.seed}; {shares})"
        if not parts[split]:
            raise DataError(
                f"the {split!r} split of {root} is empty ({rule}); raise its fraction, e.g. ?split=...,{split}:0.2"
            )
        pairs = [pairs[i] for i in parts[split]]
    elif not present:
        rule = f"all {len(pairs)} images"
    transform = create_transform(
        input_size=(3, spec.height, spec.width),
        interpolation=spec.interpolation,
        mean=spec.mean if len(spec.mean) == 3 else spec.mean[:1] * 3,
        std=spec.std if len(spec.std) == 3 else spec.std[:1] * 3,
        crop_pct=spec.crop_pct,
        is_training=False,
    )
    rule = f"{rule}; {len(pairs)} images; class map: {how}"
    ds = FolderImages(pairs, class_list, transform, name=f"imagefolder:{fs.root}/{split}", rule=rule)
    _log.info("imagefolder %s/%s: %s", fs.root, split, rule)
    return ds if spec.chans == 3 else _ChannelFit(ds, spec.chans)
