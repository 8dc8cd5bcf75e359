"""A small ALBEF-style cross-encoder: unimodal towers (ITC) + a fusion transformer (ITM).

Image patches and caption tokens are read together by the fusion transformer (one stream,
ViLT-like); its image-text matching (ITM) logit is the teacher's score. The unimodal towers
give contrastive (ITC) embeddings, used to pick the candidates the fusion head re-ranks.

Two kinds of towers (``towers``):

* ``"transformer"``: a convolutional stem + transformer for the image and a transformer for the
  caption, each of ``width`` (the wide demo teacher);
* ``"student"``: exactly the towers of ``students/shapes-dual-encoder.yaml`` (a timm ResNet-10t with
  stage channels ``image_channels`` and a BERT of ``width`` with ``text_layers`` layers, pooled and
  projected to ``embed_dim``), so the teacher's ITC half *is* a student-sized dual encoder. The
  fusion reads the BERT token states and the ResNet's stage-``fusion_stage`` feature map
  (``[C, H/2^(s+1), W/2^(s+1)]``, projected to ``width``) after the pooled image feature.
  Then ITM minus ITC measures what reading both sides together adds.

With ``fusion_positions`` the fusion's image tokens are ``LayerNorm(projected stage map) + position +
LayerNorm(pixel patch)`` with unit-scale positions, and its caption tokens get their own unit-scale positions.
Without it (older teachers) the image positions start at 0.02 beside features of rms ~1-2 and the caption
positions are only those inside the detached BERT states, so the fusion has little to tell cells apart with.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from distill.io import atomic_write_json, load_weights, read_json, save_weights
from distill.inputs import Inputs
from distill.teachers.base import Teacher
from distill.teachers.shapes_config import ShapesCrossEncoderConfig
from distill.teachers.shapes_towers import ConvPatchEmbedding, StudentTowers, transformer_encoder

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
FUSION_PREFIXES = ("fusion", "itm_head", "type_embed")
"""Parameter-name prefixes of the fusion (ITM) half; everything else is the ITC half."""


class ShapesCrossEncoder(Teacher):
    """ALBEF-style image-text cross-encoder.

    ``score(a, b)`` scores each aligned pair with the fusion transformer: the ITM logit
    (``score_mode="itm"``) or the ITM logit plus the ITC logit ``logit_scale * cos(e_a, e_b)``
    (``"itm+itc"``, default; BLIP ranks retrieval candidates by this sum). ``embed_a`` /
    ``embed_b`` are the L2-normalised ITC embeddings ``[B, embed_dim]``. ``towers`` picks the unimodal
    towers (module docstring). ``weights`` names a folder written by :meth:`save_pretrained`
    (``config.json`` + ``model.safetensors``); its config overrides the architecture arguments.
    """

    has_embeddings = True

    def __init__(
        self,
        vocab_size: int = 64,
        max_length: int = 32,
        image_size: int = 64,
        patch_size: int = 16,
        width: int = 128,
        heads: int = 4,
        image_layers: int = 3,
        text_layers: int = 2,
        fusion_layers: int = 2,
        embed_dim: int = 128,
        mlp_ratio: int = 4,
        dropout: float = 0.0,
        score_mode: str = "itm+itc",
        towers: str = "transformer",
        image_channels: tuple[int, ...] = (16, 32, 64, 128),
        text_intermediate: int = 256,
        text_dropout: float = 0.1,
        fusion_stage: int = 2,
        fusion_raw: bool = False,
        fusion_positions: bool = False,
        weights: str | None = None,
    ) -> None:
        super().__init__()
        settings = {key: value for key, value in locals().items() if key in _CONFIG_FIELDS}
        config = ShapesCrossEncoderConfig(**{**settings, "image_channels": tuple(image_channels)})
        if weights is not None:
            config = self._read_config(weights)
        config.check()
        self.config = config
        w = config.width
        if config.towers == "transformer":
            self._build_transformer_towers(config)
        else:
            self.towers = StudentTowers(config)
            grid = config.image_size // 2 ** (config.fusion_stage + 1)
            self.fusion_patch_proj = nn.Linear(config.image_channels[config.fusion_stage - 1], w)
            position_scale = 1.0 if config.fusion_positions else 0.02
            self.fusion_patch_pos = nn.Parameter(torch.randn(1, grid * grid, w) * position_scale)
            self.fusion_patch_norm = nn.LayerNorm(w) if config.fusion_positions else nn.Identity()
            self.fusion_pixel_norm = nn.LayerNorm(w) if config.fusion_positions else nn.Identity()  # implies fusion_raw
            if config.fusion_raw:
                stride = 2 ** (config.fusion_stage + 1)
                self.fusion_pixel_embed = nn.Conv2d(3, w, stride, stride=stride)
                self.fusion_word_embed = nn.Embedding(config.vocab_size, w)
                if config.fusion_positions:
                    self.fusion_text_pos = nn.Parameter(torch.randn(1, config.max_length, w))
        self.image_proj = nn.Linear(w, config.embed_dim)
        self.text_proj = nn.Linear(w, config.embed_dim)
        self.log_inv_temperature = nn.Parameter(torch.tensor(float(torch.log(torch.tensor(1 / 0.07)))))
        self.type_embed = nn.Parameter(torch.randn(2, w) * 0.02)
        self.fusion = transformer_encoder(w, config.heads, config.fusion_layers, config.mlp_ratio, config.dropout)
        self.fusion_norm = nn.LayerNorm(w)
        self.itm_head = nn.Linear(w, 1)
        if weights is not None:
            self._load_weights(weights)

    def _build_transformer_towers(self, config: ShapesCrossEncoderConfig) -> None:
        w = config.width
        num_patches = (config.image_size // config.patch_size) ** 2
        self.patch_embed = ConvPatchEmbedding(w, config.patch_size)
        self.image_cls = nn.Parameter(torch.zeros(1, 1, w))
        self.image_pos = nn.Parameter(torch.randn(1, 1 + num_patches, w) * 0.02)
        self.image_encoder = transformer_encoder(w, config.heads, config.image_layers, config.mlp_ratio, config.dropout)
        self.image_norm = nn.LayerNorm(w)
        self.token_embed = nn.Embedding(config.vocab_size, w)
        self.text_pos = nn.Parameter(torch.randn(1, config.max_length, w) * 0.02)
        self.text_encoder = transformer_encoder(w, config.heads, config.text_layers, config.mlp_ratio, config.dropout)
        self.text_norm = nn.LayerNorm(w)

    # ------------------------------------------------------------------ the two halves
    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``{"itc": towers, projections, temperature; "fusion": fusion transformer, ITM head, its inputs}``."""
        groups: dict[str, list[nn.Parameter]] = {"itc": [], "fusion": []}
        for name, parameter in self.named_parameters():
            groups["fusion" if name.startswith(FUSION_PREFIXES) else "itc"].append(parameter)
        return groups

    def itc_modules(self) -> list[nn.Module]:
        """Child modules of the ITC half (to switch them to eval mode once that half is frozen)."""
        return [module for name, module in self.named_children() if not name.startswith(FUSION_PREFIXES)]

    # ------------------------------------------------------------------ unimodal towers
    def encode_image_tokens(self, pixel_values: Tensor, detach_towers: bool = False) -> Tensor:
        """``[B, 3, H, W] -> [B, 1 + P, width]``; position 0 is what ITC reads (CLS, or the pooled ResNet).

        Positions ``1..P`` are the fusion's image tokens: with ``towers="student"``, the stage map projected to
        ``width`` plus a position embedding (plus the fusion's own pixel-patch embedding with ``fusion_raw``).
        ``detach_towers`` stops gradients from those positions into the towers (their own layers still learn).
        """
        if pixel_values.shape[-1] != self.config.image_size or pixel_values.shape[-2] != self.config.image_size:
            raise ValueError(
                f"teacher expects {self.config.image_size}x{self.config.image_size} images, got "
                f"{tuple(pixel_values.shape[-2:])}: set the data module's image_size to match"
            )
        if self.config.towers == "transformer":
            patches = self.patch_embed(pixel_values)
            tokens = torch.cat([self.image_cls.expand(patches.shape[0], -1, -1), patches], dim=1) + self.image_pos
            tokens = self.image_norm(self.image_encoder(tokens))
            return torch.cat([tokens[:, :1], tokens[:, 1:].detach()], dim=1) if detach_towers else tokens
        pooled, stage_map = self.towers.encode_image(pixel_values)
        stage_map = stage_map.detach() if detach_towers else stage_map
        features = self.fusion_patch_proj(stage_map.flatten(2).transpose(1, 2))
        patches = self.fusion_patch_norm(features) + self.fusion_patch_pos
        if self.config.fusion_raw:
            pixels = self.fusion_pixel_embed(pixel_values).flatten(2).transpose(1, 2)
            patches = patches + self.fusion_pixel_norm(pixels)
        return torch.cat([pooled.unsqueeze(1), patches], dim=1)

    def encode_text_tokens(self, input_ids: Tensor, attention_mask: Tensor, detach_towers: bool = False) -> Tensor:
        """``[B, L] -> [B, L, width]``; position 0 is the [CLS] token ITC reads.

        With ``fusion_raw`` the fusion's own word embedding is added at positions ``1..L-1``; ``detach_towers``
        stops gradients from those positions into the text tower.
        """
        length = input_ids.shape[1]
        if length > self.config.max_length:
            raise ValueError(f"caption of {length} tokens exceeds the teacher's max_length {self.config.max_length}")
        if int(input_ids.max()) >= self.config.vocab_size:
            raise ValueError(
                f"token id {int(input_ids.max())} is outside the teacher's vocabulary of {self.config.vocab_size}: "
                "the tokenizer does not match this teacher"
            )
        if self.config.towers == "student":
            hidden = self.towers.encode_text(input_ids, attention_mask)
        else:
            tokens = self.token_embed(input_ids) + self.text_pos[:, :length]
            hidden = self.text_norm(self.text_encoder(tokens, src_key_padding_mask=attention_mask == 0))
        rest = hidden[:, 1:].detach() if detach_towers else hidden[:, 1:]
        if self.config.fusion_raw:
            rest = rest + self.fusion_word_embed(input_ids[:, 1:])
            if self.config.fusion_positions:
                rest = rest + self.fusion_text_pos[:, 1:length]
        return torch.cat([hidden[:, :1], rest], dim=1)

    @property
    def logit_scale(self) -> Tensor:
        return self.log_inv_temperature.clamp(max=4.6052).exp()

    def embed_image_tokens(self, image_tokens: Tensor) -> Tensor:
        return F.normalize(self.image_proj(image_tokens[:, 0]), dim=-1)

    def embed_text_tokens(self, text_tokens: Tensor) -> Tensor:
        return F.normalize(self.text_proj(text_tokens[:, 0]), dim=-1)

    def embed_a(self, a: Inputs) -> Tensor:
        return self.embed_image_tokens(self.encode_image_tokens(a["pixel_values"]))

    def embed_b(self, b: Inputs) -> Tensor:
        return self.embed_text_tokens(self.encode_text_tokens(b["input_ids"], b["attention_mask"]))

    # ------------------------------------------------------------------ fusion (ITM)
    def fuse(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """Pair scores of aligned token sequences: ``[N, 1+P, w], [N, L, w], [N, L] -> [N]``.

        The fusion transformer reads the caption tokens and image patches as one sequence; its
        ITM head reads the caption's [CLS] position. With ``score_mode="itm+itc"`` the ITC logit of
        the same pair is added.
        """
        itm = self.itm_logit(image_tokens, text_tokens, attention_mask)
        if self.config.score_mode == "itm":
            return itm
        return itm + self.itc_logit(image_tokens, text_tokens)

    def itc_logit(self, image_tokens: Tensor, text_tokens: Tensor) -> Tensor:
        """``logit_scale * cos(e_a, e_b)`` of aligned pairs: ``[N, 1+P, w], [N, L, w] -> [N]``."""
        return self.logit_scale * (self.embed_image_tokens(image_tokens) * self.embed_text_tokens(text_tokens)).sum(-1)

    def itm_logit(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """The fusion head alone: ``[N, 1+P, w], [N, L, w], [N, L] -> [N]``."""
        return self.itm_head(self.fused_text(image_tokens, text_tokens, attention_mask)[:, 0]).squeeze(-1)

    def fused_text(self, image_tokens: Tensor, text_tokens: Tensor, attention_mask: Tensor) -> Tensor:
        """The fusion transformer's output at the caption positions: ``[N, 1+P, w], [N, L, w], [N, L] -> [N, L, w]``."""
        sequence = torch.cat([text_tokens + self.type_embed[0], image_tokens + self.type_embed[1]], dim=1)
        padding = torch.cat(
            [attention_mask == 0, attention_mask.new_zeros(image_tokens.shape[:2], dtype=torch.bool)], dim=1
        )
        fused = self.fusion_norm(self.fusion(sequence, src_key_padding_mask=padding))
        return fused[:, : text_tokens.shape[1]]

    def score(self, a: Inputs, b: Inputs) -> Tensor:
        image_tokens = self.encode_image_tokens(a["pixel_values"])
        text_tokens = self.encode_text_tokens(b["input_ids"], b["attention_mask"])
        return self.fuse(image_tokens, text_tokens, b["attention_mask"])

    def score_pairs(self, a: Inputs, b: Inputs, a_index: Tensor, b_index: Tensor) -> Tensor:
        """Encode each distinct a and b item once, then fuse the N requested pairs."""
        a_unique, a_inverse = a_index.unique(return_inverse=True)
        b_unique, b_inverse = b_index.unique(return_inverse=True)
        image_tokens = self.encode_image_tokens(a["pixel_values"][a_unique])
        input_ids, attention_mask = b["input_ids"][b_unique], b["attention_mask"][b_unique]
        length = int(attention_mask.sum(1).max())
        text_tokens = self.encode_text_tokens(input_ids[:, :length], attention_mask[:, :length])
        return self.fuse(image_tokens[a_inverse], text_tokens[b_inverse], attention_mask[b_inverse, :length])

    # ------------------------------------------------------------------ persistence
    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``config.json`` and ``model.safetensors`` into ``folder`` (each atomically)."""
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        save_weights(target / WEIGHTS_NAME, self.state_dict())
        config = asdict(self.config)
        atomic_write_json(target / CONFIG_NAME, {"class": "ShapesCrossEncoder", **config,
                                                 "image_channels": list(config["image_channels"])})
        return target

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "ShapesCrossEncoder":
        return cls(weights=str(folder))

    @staticmethod
    def _read_config(folder: str) -> ShapesCrossEncoderConfig:
        """The folder's ``config.json``; keys it lacks (older teachers) keep their defaults."""
        path = Path(folder)
        if not (path / CONFIG_NAME).is_file() or not (path / WEIGHTS_NAME).is_file():
            raise FileNotFoundError(
                f"teacher weights folder '{path}' has no {CONFIG_NAME} + {WEIGHTS_NAME}: train the teacher "
                "with `python -m distill fit --config configs/demo/shapes-teacher.yaml` or point "
                "`weights` at a folder written by ShapesCrossEncoder.save_pretrained"
            )
        raw = read_json(path / CONFIG_NAME)
        raw.pop("class", None)
        unknown = set(raw) - set(_CONFIG_FIELDS)
        if unknown:
            raise ValueError(f"'{path / CONFIG_NAME}' has unknown keys {sorted(unknown)}; expected {sorted(_CONFIG_FIELDS)}")
        if "image_channels" in raw:
            raw["image_channels"] = tuple(raw["image_channels"])
        config = ShapesCrossEncoderConfig(**raw)
        try:
            config.check()
        except ValueError as error:
            raise ValueError(f"'{path / CONFIG_NAME}': {error}") from None
        return config

    def _load_weights(self, folder: str) -> None:
        state = load_weights(Path(folder) / WEIGHTS_NAME, "teacher weights")
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"'{Path(folder) / WEIGHTS_NAME}' does not match ShapesCrossEncoder: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), **asdict(self.config)}


_CONFIG_FIELDS = tuple(field.name for field in fields(ShapesCrossEncoderConfig))
