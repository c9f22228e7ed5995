"""An experiment, not part of the package: train_hf.py with synthetic lesions in healthy slices.

With probability P, each notumor training image gets one synthetic lesion inside its head
and becomes "tumour, type unknown" (``ANY_TUMOR``, trained with the partial-label loss), so
the same healthy slice is seen both as "no tumour" and, with a lesion, as "a tumour". The
only difference between the two is local, so "tumour rather than no tumour" has to be
decided where the lesion is, not from the slice's contrast, plane or anatomy (issue 12:
heatmaps on the lesion). Synthetic anomalies of this kind are used to train anomaly
detectors (CutPaste, Li et al. 2021; NSA, Schlueter et al. 2022).

A lesion is a blob of radius 4-16 % of the image side with an irregular border (a centre
ellipse perturbed by smooth noise) and a soft edge, at a random place inside the head. It
is one of: a bright homogeneous mass, a dark core with a bright rim (ring enhancement), a
dark mass; its grey level is set relative to the head's median, with a smooth texture, and
blended with the tissue. A draw that changes the grey levels inside it by less than 0.2 on
average is drawn again (4 tries, then the image stays notumor). The batch augmenter's
intensity randomisation (inversion, curves, GIN) runs after it, so the lesion's contrast
polarity varies further.

Usage (a train_hf.py JSON config with its flags, and P):
    python configs/try_synthetic_lesions.py CONFIG.json 0.5 [--output_dir runs/synthetic-lesions ...]
"""

import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_experiments import train_with_batch_change  # noqa: E402
from tumor_classifier.augmentation import head_mask  # noqa: E402
from tumor_classifier.data import ANY_TUMOR, CLASS_NAMES, NO_TUMOR  # noqa: E402

NOTUMOR = CLASS_NAMES.index(NO_TUMOR)
RADIUS = (0.04, 0.16)  # of the image side
MIN_CONTRAST = 0.2  # mean grey-level change inside the lesion, of the [0, 1] range
TRIES = 4


def _smooth_noise(height: int, width: int, cells: int, generator: torch.Generator) -> torch.Tensor:
    """Noise in about [-1, 1], smooth over ``height / cells`` pixels (bicubic upsampling)."""
    coarse = torch.rand((1, 1, cells + 3, cells + 3), generator=generator) * 2 - 1
    return F.interpolate(coarse, size=(height, width), mode="bicubic", align_corners=False)[0, 0].clamp(-1.5, 1.5)


def lesion_sites(head: torch.Tensor) -> torch.Tensor:
    """Positions (k, 2) where a lesion may be centred: the head (bool (H, W)) eroded by 8 % of the side."""
    margin = int(0.08 * min(head.shape))
    inner = -F.max_pool2d(-head[None, None].float(), 2 * margin + 1, stride=1, padding=margin)[0, 0] > 0.5
    return torch.nonzero(inner)


def lesion(image: torch.Tensor, head: torch.Tensor, sites: torch.Tensor, tissue: float,
           generator: torch.Generator) -> torch.Tensor | None:
    """``image`` (H, W) float in [0, 1] with one synthetic lesion centred on one of ``sites``
    (:func:`lesion_sites` of ``head``, bool (H, W)), its grey level set from ``tissue``, the
    head's median; None if the lesion would hardly show."""
    height, width = image.shape
    side = min(height, width)
    cy, cx = sites[int(torch.randint(len(sites), (), generator=generator))].tolist()
    radius = side * (RADIUS[0] + (RADIUS[1] - RADIUS[0]) * float(torch.rand((), generator=generator)))
    aspect = float(torch.exp((torch.rand((), generator=generator) - 0.5) * 0.8))
    angle = float(torch.rand((), generator=generator)) * math.pi
    ys = torch.arange(height, dtype=torch.float32)[:, None] - cy
    xs = torch.arange(width, dtype=torch.float32)[None, :] - cx
    u = (xs * math.cos(angle) + ys * math.sin(angle)) / (radius * aspect)
    v = (-xs * math.sin(angle) + ys * math.cos(angle)) / (radius / aspect)
    distance = torch.sqrt(u * u + v * v) + 0.35 * _smooth_noise(height, width, 6, generator)
    softness = 0.05 + 0.15 * float(torch.rand((), generator=generator))
    blob = torch.sigmoid((1 - distance) / softness)
    mask = blob * head.float()
    texture = 1 + 0.15 * _smooth_noise(height, width, 12, generator)
    kind = int(torch.randint(3, (), generator=generator))
    if kind == 0:  # bright homogeneous mass
        level = tissue * (1.6 + 0.6 * float(torch.rand((), generator=generator))) * texture
    elif kind == 1:  # dark (necrotic) core, bright rim
        rim = blob - torch.sigmoid((0.7 - distance) / softness)
        level = tissue * (0.35 + 0.3 * float(torch.rand((), generator=generator))) * texture
        level = level + rim.clamp(min=0) * tissue * (1.0 + 0.6 * float(torch.rand((), generator=generator)))
    else:  # dark mass
        level = tissue * (0.3 + 0.35 * float(torch.rand((), generator=generator))) * texture
    strength = 0.85 + 0.15 * float(torch.rand((), generator=generator))
    changed = (image * (1 - strength * mask) + level.clamp(0, 1) * strength * mask).clamp(0, 1)
    core = mask > 0.5
    if not bool(core.any()) or float((changed - image)[core].abs().mean()) < MIN_CONTRAST:
        return None  # a lesion one cannot see would teach "tumour" for a healthy-looking slice
    return changed


def add_synthetic_lesions(pixels: torch.Tensor, labels: torch.Tensor, probability: float, generator: torch.Generator):
    """uint8 (n, H, W) pixels and labels; some notumor images get a lesion and the label ANY_TUMOR."""
    chosen = [int(i) for i in torch.nonzero(labels == NOTUMOR).flatten() if torch.rand((), generator=generator) < probability]
    if not chosen:
        return pixels, labels
    pixels, labels = pixels.clone(), labels.clone()
    images = pixels[chosen].float() / 255
    heads = head_mask(images[:, None])[:, 0]
    for row, image, head in zip(chosen, images, heads):
        sites = lesion_sites(head)
        if len(sites) < 10:  # no room for a lesion: the image stays notumor
            continue
        tissue = float(image[head].median())
        for _ in range(TRIES):
            changed = lesion(image, head, sites, tissue, generator)
            if changed is not None:
                break
        if changed is not None:
            pixels[row] = (changed * 255).round().to(torch.uint8)
            labels[row] = ANY_TUMOR
    return pixels, labels


def main() -> None:
    config, probability = sys.argv[1], float(sys.argv[2])
    generator = torch.Generator().manual_seed(0)
    train_with_batch_change(
        lambda pixels, labels: add_synthetic_lesions(pixels, labels, probability, generator),
        [config] + sys.argv[3:],
    )


if __name__ == "__main__":
    main()
