"""Training-time augmentation (albumentations 2.x), applied to a slice and its mask together.

- ``paper_augmentation(size)``: the paper's Table 3 pipeline. Table 3 gives no probabilities, so
  each transform uses the library default (RandomResizedCrop always; the others p = 0.5).
  ``ShiftScaleRotate`` is deprecated in albumentations 2 and replaced by the equivalent ``Affine``.
- ``light_augmentation(size)``: flips, 90° rotations and a small brightness/contrast change; cheap
  enough for the CPU preset. Optional ``scale_jitter`` (segmentation preset key ``scale_jitter``):
  on a small benchmark a test tumour can be twice the area of anything among a dozen training
  patients. On the 24-patient synth benchmark it did not raise test Dice (LightUNet 0.64 with it,
  0.65 without), so the CPU preset leaves it off.
- ``no_augmentation(size)``: identity (validation, test).

Inputs are uint8 images (H, W) and uint8 masks (H, W). Geometric transforms move the mask with the
image (nearest-neighbour interpolation for the mask); photometric transforms and CoarseDropout touch
the image only, so the segmentation target is never erased.

``nodule_crop`` (optional, any pipeline) cuts a ``crop`` x ``crop`` window that contains the nodule
with probability ``p`` (else a random window): the CPU preset trains on small windows of full-size
slices, which keeps the nodule's pixel size while making each step cheap.

Reproducibility: ``seed_transform(t, seed)`` gives every transform of a pipeline its own random
stream derived from ``seed``. (albumentations' own ``Compose.set_random_seed`` hands the *same* seed to
every child, which makes e.g. the horizontal and vertical flip decisions identical.) The training
samplers pass one seed per sample and epoch, so augmentation does not depend on worker count or on
whether the run was resumed.
"""

from __future__ import annotations

import albumentations as A
import numpy as np

AUGMENTATIONS = ("paper", "light", "none")


def _hw(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def nodule_crop(crop: int, p: float = 0.9) -> A.BaseCompose:
    """A ``crop`` x ``crop`` window around the mask's foreground with probability ``p``, else random.

    On a slice with an empty mask both choices are a random window.
    """
    return A.OneOf(
        [A.CropNonEmptyMaskIfExists(crop, crop, p=p), A.RandomCrop(crop, crop, p=1.0 - p)], p=1.0
    )


def paper_augmentation(size: int | tuple[int, int]) -> A.Compose:
    """Table 3 of the paper; output ``size`` (the paper: 256 x 256)."""
    height, width = _hw(size)
    return A.Compose(
        [
            # geometric
            A.RandomResizedCrop(size=(height, width), scale=(0.7, 1.0), ratio=(0.75, 1.33)),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.Affine(  # ShiftScaleRotate(shift 0.0625, scale 0.15, rotate 30)
                translate_percent=(-0.0625, 0.0625), scale=(0.85, 1.15), rotate=(-30, 30), p=0.5
            ),
            # non-linear
            A.ElasticTransform(alpha=120, sigma=6, p=0.5),
            A.GridDistortion(num_steps=5, distort_limit=0.3, p=0.5),
            # photometric (image only)
            A.RandomGamma(gamma_limit=(70, 130), p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.25, p=0.5),
            # regularization: holes in the image only (fill_mask=None keeps the target intact)
            A.CoarseDropout(
                num_holes_range=(1, 8), hole_height_range=(8, 32), hole_width_range=(8, 32),
                fill=0, fill_mask=None, p=0.5,
            ),
        ]
    )


def scale_jitter() -> A.Affine:
    """Zoom in or out (0.7-1.6x, balanced so zooming in and out are equally likely) with a small
    rotation; mask by nearest neighbour, air (0) outside the slice."""
    return A.Affine(scale=(0.7, 1.6), balanced_scale=True, rotate=(-15, 15), fill=0, fill_mask=0, p=0.7)


def light_augmentation(size: int | tuple[int, int] | None = None) -> A.Compose:
    """Flips, 90° rotations, small brightness/contrast; keeps the input size (``size`` unused)."""
    return A.Compose(
        [
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.5),
        ]
    )


def no_augmentation(size: int | tuple[int, int] | None = None) -> A.Compose:
    """The identity pipeline (validation and test)."""
    return A.Compose([])


def build_augmentation(
    name: str, size: int | tuple[int, int], crop: int | None = None, nodule_crop_p: float = 0.9,
    jitter: bool = False,
) -> A.Compose:
    """The named pipeline (``paper | light | none``), optionally preceded by ``nodule_crop(crop)``.

    With a crop, the paper pipeline's RandomResizedCrop outputs ``crop`` x ``crop``. ``jitter=True``
    puts ``scale_jitter`` in front of the light pipeline (segmentation only: for classification a nodule's
    size is a malignancy cue).
    """
    builders = {"paper": paper_augmentation, "light": light_augmentation, "none": no_augmentation}
    if name not in builders:
        raise ValueError(f"unknown augmentation {name!r}; valid: {', '.join(AUGMENTATIONS)}")
    # The zoom comes first, on the whole slice, so that a crop after it still finds the nodule.
    zoom = [scale_jitter()] if jitter and name == "light" else []
    if crop is None:
        return A.Compose([*zoom, *builders[name](size).transforms])
    return A.Compose([*zoom, nodule_crop(crop, nodule_crop_p), *builders[name]((crop, crop)).transforms])


def _children(transform) -> list:
    return list(getattr(transform, "transforms", []) or [])


def _seed_tree(transform, sequence: np.random.SeedSequence) -> None:
    children = _children(transform)
    own, *kids = sequence.spawn(1 + len(children))
    # For a compose this also (re)seeds the children with the same seed; overwritten just below.
    transform.set_random_seed(int(own.generate_state(1)[0]))
    for child, kid in zip(children, kids):
        _seed_tree(child, kid)


def seed_transform(transform, seed: int) -> None:
    """Give ``transform`` and each of its children an independent stream derived from ``seed``."""
    _seed_tree(transform, np.random.SeedSequence(int(seed)))


def apply(transform, image: np.ndarray, mask: np.ndarray, seed: int | None = None):
    """Apply ``transform`` to ``image`` and ``mask`` (uint8, (H, W)); returns ``(image, mask)``.

    ``seed`` (optional) makes the draw reproducible regardless of earlier calls.
    """
    if transform is None:
        return image, mask
    if seed is not None:
        seed_transform(transform, seed)
    out = transform(image=image, mask=mask)
    return out["image"], out["mask"]
