"""How a student's images become ``pixel_values``: one record used by training, export and search alike.

An :class:`ImagePreprocessing` is what a data module feeds its student: a PIL image is resized (the
shorter side to ``size``, or to ``size`` x ``size``), centre-cropped to ``size`` x ``size`` when
``center_crop``, scaled to [0, 1] and normalised per channel, ``(x - mean) / std``. When training ran a
``transformers`` image processor, its configuration (``processor``) is the record's truth and calling the
record runs that processor, rebuilt from its class name in ``transformers`` (data, never code); the other
fields then summarise it. Otherwise the steps are torchvision's ``Resize`` / ``CenterCrop`` /
``Normalize`` on PIL images, the transform ``timm.data.create_transform`` builds from a pretrained config
with ``crop_pct = 1`` (:meth:`ImagePreprocessing.timm_config`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from distill.errors import InputError

Resize = Literal["shortest_edge", "square"]
Interpolation = Literal["nearest", "bilinear", "bicubic"]
INTERPOLATIONS: tuple[str, ...] = ("nearest", "bilinear", "bicubic")
PIL_RESAMPLE = {0: "nearest", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values transformers stores

__all__ = ["ImagePreprocessing", "three_channels"]


@dataclass(frozen=True)
class ImagePreprocessing:
    """A student's image preprocessing as trained: ``PIL image -> float32 [3, size, size]``.

    ``resize``: ``shortest_edge`` keeps the aspect ratio (the shorter side becomes ``size``),
    ``square`` resizes to ``size`` x ``size``. ``processor``: a ``transformers`` image processor's
    configuration (its ``to_dict``) when training ran one; calling the record then runs it.
    """

    size: int
    resize: Resize
    center_crop: bool
    interpolation: Interpolation
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    processor: Mapping[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if int(self.size) <= 0 or self.resize not in ("shortest_edge", "square") \
                or self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"image preprocessing needs size > 0, resize shortest_edge|square and interpolation in "
                             f"{INTERPOLATIONS}; got {self.size}, {self.resize!r}, {self.interpolation!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"image preprocessing needs 3 means and 3 stds (> 0), got {self.mean} / {self.std}")

    # ------------------------------------------------------------------ run
    def __call__(self, image: Any) -> Tensor:
        """One PIL image (any mode) -> ``pixel_values [3, size, size]`` float32."""
        if self.processor is not None:
            built = _transformers_processor(json.dumps(dict(self.processor), sort_keys=True))
            return built(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0].float()
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(self.interpolation)
        image = image.convert("RGB")
        image = F.resize(image, self.size if self.resize == "shortest_edge" else [self.size, self.size],
                         interpolation=mode)
        if self.center_crop:
            image = F.center_crop(image, [self.size, self.size])
        pixels = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255.0)
        return F.normalize(pixels, list(self.mean), list(self.std))

    # ------------------------------------------------------------------ records
    def to_json(self) -> dict[str, Any]:
        """What ``student_config.json`` holds of the preprocessing (``processor`` only when there is one)."""
        record = asdict(self)
        record["mean"], record["std"] = list(self.mean), list(self.std)
        if self.processor is None:
            record.pop("processor")
        else:
            record["processor"] = dict(self.processor)
        return record

    @classmethod
    def from_json(cls, record: Mapping[str, Any], where: str) -> "ImagePreprocessing":
        """The inverse of :meth:`to_json`; a malformed record is an :class:`InputError` naming ``where``."""
        try:
            return cls(size=int(record["size"]), resize=record["resize"], center_crop=bool(record["center_crop"]),
                       interpolation=record["interpolation"], mean=three_channels(record["mean"]), std=three_channels(record["std"]),
                       processor=record.get("processor"))
        except (KeyError, TypeError, ValueError) as error:
            raise InputError(f"{where}: the image preprocessing record is malformed ({error}): export the student "
                             "again") from None

    @classmethod
    def from_transformers(cls, processor: Any) -> "ImagePreprocessing":
        """The record of a ``transformers`` image processor (e.g. ``CLIPImageProcessor``) that yields square images."""
        config = json.loads(processor.to_json_string())
        config.setdefault("image_processor_type", type(processor).__name__)
        size, crop = config.get("size") or {}, config.get("crop_size") or {}
        center_crop = bool(config.get("do_center_crop"))
        if "shortest_edge" in size:
            resize, side = "shortest_edge", size["shortest_edge"]
        elif size.get("height") is not None and size.get("height") == size.get("width"):
            resize, side = "square", size["height"]
        else:
            raise ValueError(f"{type(processor).__name__} with size {size} does not yield square images of one size")
        if center_crop:
            if crop.get("height") is None or crop.get("height") != crop.get("width"):
                raise ValueError(f"{type(processor).__name__} crops to {crop}, not a square")
            side = crop["height"]
        return cls(size=int(side), resize=resize, center_crop=center_crop,
                   interpolation=PIL_RESAMPLE.get(int(config.get("resample", 3)), "bicubic"),  # type: ignore[arg-type]
                   mean=three_channels(config.get("image_mean", (0.0, 0.0, 0.0))),
                   std=three_channels(config.get("image_std", (1.0, 1.0, 1.0))), processor=config)

    def clip_processor_config(self) -> dict[str, Any]:
        """A ``preprocessor_config.json`` for ``transformers.CLIPImageProcessor``: the processor trained with when it
        was one, else the same steps (transformers resizes tensors, so pixels may differ by interpolation rounding)."""
        if self.processor is not None and self.processor.get("image_processor_type") == "CLIPImageProcessor":
            return dict(self.processor)
        size = {"shortest_edge": self.size} if self.resize == "shortest_edge" else {"height": self.size,
                                                                                    "width": self.size}
        resample = {name: value for value, name in PIL_RESAMPLE.items()}[self.interpolation]
        return {"image_processor_type": "CLIPImageProcessor", "processor_class": "CLIPProcessor", "do_resize": True,
                "size": size, "resample": resample, "do_center_crop": self.center_crop,
                "crop_size": {"height": self.size, "width": self.size}, "do_rescale": True, "rescale_factor": 1 / 255,
                "do_normalize": True, "image_mean": list(self.mean), "image_std": list(self.std),
                "do_convert_rgb": True}

    def timm_config(self) -> dict[str, Any]:
        """timm's ``pretrained_cfg`` entries for this preprocessing: ``timm.data.resolve_data_config(pretrained_cfg=
        ...)`` then ``create_transform(**config)`` rebuild it (shortest-edge resize and centre crop, ``crop_pct`` 1)."""
        if self.processor is not None or self.resize != "shortest_edge" or not self.center_crop:
            raise ValueError("timm's eval transform resizes the shorter side and centre-crops; this preprocessing "
                             f"({self.resize}, crop {self.center_crop}) is not one")
        return {"input_size": [3, self.size, self.size], "interpolation": self.interpolation, "mean": list(self.mean),
                "std": list(self.std), "crop_pct": 1.0, "crop_mode": "center"}


def three_channels(values: Any) -> tuple[float, float, float]:
    """A scalar or three per-channel (RGB) values as three floats."""
    items = [float(values)] * 3 if isinstance(values, (int, float)) else [float(value) for value in values]
    if len(items) != 3:
        raise ValueError(f"expected 3 per-channel values, got {values}")
    return items[0], items[1], items[2]


@lru_cache(maxsize=8)
def _transformers_processor(config_json: str) -> Any:
    """A ``transformers`` image processor rebuilt from its configuration; only classes ``transformers`` defines."""
    import transformers
    from transformers.image_processing_base import ImageProcessingMixin

    config = json.loads(config_json)
    name = str(config.get("image_processor_type", ""))
    cls = getattr(transformers, name, None) if name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, ImageProcessingMixin)):
        raise InputError(f"the image preprocessing names the image processor {name!r}, which transformers does not "
                         "define: export the student again")
    return cls.from_dict(config)
