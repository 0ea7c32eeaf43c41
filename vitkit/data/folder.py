"""``imagefolder:/path``: class sub-folders of images, with timm's eval transforms for the model."""

from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from ..errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".tif", ".tiff")


class _ChannelFit(Dataset):
    """Wraps an RGB dataset for models that take a different number of channels (grey = channel mean)."""

    def __init__(self, base: Dataset, chans: int) -> None:
        self.base, self.chans = base, chans
        self.classes = getattr(base, "classes", [])

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, idx: int):
        x, y = self.base[idx]
        if x.shape[0] != self.chans:
            x = x.mean(0, keepdim=True).expand(self.chans, *x.shape[1:]).contiguous()
        return x, y


def image_folder(path: str, split: str, model, spec) -> Dataset:
    from timm.data import create_transform
    from torchvision.datasets import ImageFolder

    if not path:
        raise DataError("imagefolder: needs a path, e.g. imagefolder:/data/imagenet/val")
    root = Path(path).expanduser()
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist or is not a directory")
    if split != "all" and (root / split).is_dir():
        root = root / split
    images = [p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
    if not images:
        raise DataError(
            f"no images found in {root} (expected class sub-folders holding {', '.join(IMAGE_SUFFIXES[:3])}... files)"
        )
    transform = create_transform(
        input_size=(3, spec.height, spec.width),
        interpolation=spec.interpolation,
        mean=spec.mean if len(spec.mean) == 3 else spec.mean[:1] * 3,
        std=spec.std if len(spec.std) == 3 else spec.std[:1] * 3,
        crop_pct=spec.crop_pct,
        is_training=False,
    )
    try:
        ds = ImageFolder(str(root), transform=transform)
    except (FileNotFoundError, RuntimeError) as exc:
        raise DataError(f"cannot read image folder {root}: {exc}") from None
    if len(ds) == 0:
        raise DataError(f"no images found in {root}")
    ds.num_classes = len(ds.classes)
    return ds if spec.chans == 3 else _ChannelFit(ds, spec.chans)
