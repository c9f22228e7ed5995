"""An experiment, not part of the package and not shipped: train_hf.py with "healthy patches".

Before the intensity augmentation, each training image, with probability P, gets a box
(4-12% of the image, inside the central 80%) copied from a notumor image of the same
batch, at the same place; its label stays. Evidence outside the lesion then stops being
reliable, which was meant to push the model onto the lesion (issue 12). It did not: see
configs/README.md, "Tried, not shipped". Kept so that the figures there can be remade.

Usage (a train_hf.py JSON config with its flags, and P):
    python configs/try_healthy_patch.py CONFIG.json 0.5 [--output_dir runs/healthy-patch ...]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_experiments import train_with_batch_change  # noqa: E402
from tumor_classifier.data import CLASS_NAMES, NO_TUMOR  # noqa: E402

AREA = (0.04, 0.12)
NOTUMOR = CLASS_NAMES.index(NO_TUMOR)


def paste_healthy_patches(pixels: torch.Tensor, labels: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    """uint8 (n, H, W) images with boxes copied from the batch's notumor images; labels unchanged."""
    n, h, w = pixels.shape
    donors = torch.nonzero(labels == NOTUMOR).flatten()
    if donors.numel() < 2:
        return pixels
    out = pixels.clone()
    for i in range(n):
        if torch.rand((), generator=generator) >= probability:
            continue
        j = int(donors[torch.randint(donors.numel(), (), generator=generator)])
        if j == i:
            continue
        area = AREA[0] + (AREA[1] - AREA[0]) * float(torch.rand((), generator=generator))
        aspect = float(torch.exp((torch.rand((), generator=generator) - 0.5) * 1.386))  # 0.5 to 2
        bh = max(4, min(int(round(h * (area * aspect) ** 0.5)), int(0.8 * h)))
        bw = max(4, min(int(round(w * (area / aspect) ** 0.5)), int(0.8 * w)))
        y0 = int(0.1 * h) + int(torch.randint(max(1, int(0.8 * h) - bh + 1), (), generator=generator))
        x0 = int(0.1 * w) + int(torch.randint(max(1, int(0.8 * w) - bw + 1), (), generator=generator))
        out[i, y0 : y0 + bh, x0 : x0 + bw] = pixels[j, y0 : y0 + bh, x0 : x0 + bw]
    return out


def main() -> None:
    config, probability = sys.argv[1], float(sys.argv[2])
    generator = torch.Generator().manual_seed(0)
    train_with_batch_change(
        lambda pixels, labels: (paste_healthy_patches(pixels, labels, probability, generator), labels),
        [config] + sys.argv[3:],
    )


if __name__ == "__main__":
    main()
