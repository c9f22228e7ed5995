"""An experiment, not part of the package and not shipped: log-sum-exp pooling in EfficientNet-Lite.

The network's global average pooling lets the decision rest on the whole slice. Log-sum-exp
pooling over the last 5x5 feature map, ``log(mean(exp(r * x))) / r`` per channel, rests it
on the few positions where a feature is strongest (Pinheiro and Collobert, CVPR 2015; Wang
et al., ChestX-ray8, CVPR 2017, for weakly supervised lesion maps), which was meant to put
the maps on the lesion (issue 12). It did not: see configs/README.md, "Tried, not shipped".
Kept so that the figures there can be remade.

A model folder whose config.json says ``"pooling": "log_sum_exp"`` and ``"pooling_sharpness": r``
is built with that pooling while this script runs another script:

    python configs/try_lse_pooling.py --init 5 runs/lse5-init     # the shipped model, pooling swapped
    python configs/try_lse_pooling.py train_hf.py CONFIG.json      # with "checkpoint": "runs/lse5-init"
    python configs/try_lse_pooling.py benchmarks/localisation.py --model runs/lse5 ...

Outside this script such a folder loads with average pooling: the package ignores the two keys.
"""

import json
import math
import runpy
import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tumor_classifier.efficientnet import EfficientNetLiteForImageClassification  # noqa: E402


class LogSumExpPool(torch.nn.Module):
    """``log(mean(exp(r * x))) / r`` over space, per channel; shape (n, c, 1, 1)."""

    def __init__(self, sharpness: float):
        super().__init__()
        self.sharpness = float(sharpness)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        flat = features.flatten(2) * self.sharpness
        pooled = torch.logsumexp(flat, dim=2) - math.log(flat.shape[2])
        return (pooled / self.sharpness)[:, :, None, None]


def patch_pooling() -> None:
    build = EfficientNetLiteForImageClassification.__init__

    def with_pooling(self, config):
        build(self, config)
        if getattr(config, "pooling", "average") == "log_sum_exp":
            self.efficientnet._avg_pooling = LogSumExpPool(config.pooling_sharpness)  # the package's forward calls it

    EfficientNetLiteForImageClassification.__init__ = with_pooling


def make_init(sharpness: float, out: Path) -> None:
    """The shipped model's folder with the pooling switched (same weights)."""
    shipped = ROOT / "tumor_classifier" / "default_model"
    out.mkdir(parents=True, exist_ok=True)
    for name in ("model.safetensors", "preprocessor_config.json"):
        shutil.copy(shipped / name, out / name)
    config = json.loads((shipped / "config.json").read_text())
    config.update(pooling="log_sum_exp", pooling_sharpness=sharpness)
    (out / "config.json").write_text(json.dumps(config, indent=2))


def main() -> None:
    if sys.argv[1] == "--init":
        make_init(float(sys.argv[2]), Path(sys.argv[3]))
        return
    patch_pooling()
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    sys.path.insert(0, str(Path(script).resolve().parent))
    runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
