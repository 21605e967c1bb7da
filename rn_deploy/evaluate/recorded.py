"""What training recorded about its own evaluation: the dataset to judge on, whether eval reproduces it, inspect's summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..datasets import canonical_dataset
from ..datasets.sources import ImageSet
from ..errors import DataError


def recorded_dataset(checkpoint: str | Path, train: dict[str, Any], dataset: str | None, data: str | Path | None
                      ) -> tuple[str, str | Path | None]:
    """The dataset (and folder) to judge on: the one training recorded by default; another one is refused by name."""
    from ..checkpoint import recorded_dataset, recorded_eval

    rec = recorded_eval(train)
    recorded = recorded_dataset(train)
    if dataset is None:
        if not recorded:
            raise DataError(f"{checkpoint}: records no training dataset; pass --dataset fashion-mnist|mnist|imagefolder")
        dataset = recorded
    dataset = canonical_dataset(dataset)
    if recorded and canonical_dataset(recorded) != dataset:
        raise DataError(f"{checkpoint}: trained on {canonical_dataset(recorded)}, not {dataset}: its accuracy on another "
                        f"dataset says nothing; omit --dataset (or pass --dataset {canonical_dataset(recorded)})")
    if data is None and rec.get("data"):
        data = str(rec["data"])
    return dataset, data


def recorded_evaluation(train: dict[str, Any], dataset: str, split: str, limit: int | None, seed: int, images: ImageSet) -> dict[str, Any] | None:
    """Training's own evaluation from the checkpoint, with ``same_images``: whether it judged exactly these images."""
    rec = train.get("eval")
    if not isinstance(rec, dict):
        return None
    try:
        rec_limit = rec.get("limit")
        count = len(images)
        whole = images.index is None and (rec_limit is None or int(rec_limit) >= count)
        same_subset = rec_limit is not None and limit == int(rec_limit) and int(rec.get("seed", 0)) == seed
        same = (canonical_dataset(str(rec.get("dataset"))) == dataset and rec.get("split") == split
                and int(rec.get("count", -1)) == count and (whole or same_subset))
    except (DataError, TypeError, ValueError):
        same = False
    return {**rec, "same_images": bool(same)}


def reproduces_training(recorded: dict[str, Any], correct: int, device: str, count: int) -> tuple[bool | None, str]:
    """Whether the reference's ``correct`` count reproduces training's on the same images, and the rule applied.

    Exact on the device type training evaluated on; on another (CPU vs CUDA kernels) up to 0.1% of the images (at least
    one) may flip; not comparable (None) when training recorded a reduced-precision evaluation.
    """
    if recorded.get("precision", "fp32") != "fp32":
        return None, f"training recorded a {recorded.get('precision')} evaluation"
    same_device = str(recorded.get("device", "")).split(":")[0] == device
    allowed = 0 if same_device else max(1, round(0.001 * count))
    rule = "exact, same device type" if same_device else f"within {allowed} image(s): training ran on {recorded.get('device')}"
    return abs(int(recorded.get("correct", -1)) - correct) <= allowed, rule


def checkpoint_info(path: str | Path) -> dict[str, Any]:
    """What ``rn-deploy inspect model.pt`` shows: the config and the evaluation training recorded."""
    from ..checkpoint import read_checkpoint
    from ..sizes import size_range

    raw = read_checkpoint(path)
    cfg, train = raw["config"], raw.get("train") or {}
    rec = train.get("eval") if isinstance(train.get("eval"), dict) else None
    info: dict[str, Any] = {"checkpoint": str(path), "format": raw.get("format"), "arch": cfg.get("arch"),
                            "n_classes": cfg.get("n_classes"), "in_channels": cfg.get("in_channels"),
                            "image_size": cfg.get("image_size"), "presize": cfg.get("presize"), "epochs": train.get("epochs")}
    info["size_range"] = size_range(cfg).describe()
    if rec:
        sel = f"--limit {rec['limit']} --seed {rec.get('seed', 0)}" if rec.get("limit") else "all images"
        info["evaluation"] = (f"top-1 {100 * float(rec['top1']):.2f}% ({rec.get('correct')}/{rec.get('count')}) on "
                              f"{rec.get('dataset')} {rec.get('split')} ({sel}), {rec.get('precision', 'fp32')} on {rec.get('device')}")
        info["eval"] = rec
    else:
        info["evaluation"] = "not recorded (trained before rn-deploy recorded it, or imported)"
    return info
