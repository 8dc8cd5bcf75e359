"""Text cross-encoder teacher (``AutoModelForSequenceClassification``), e.g. MS MARCO re-rankers.

A cross-encoder reads the query and the passage as one sequence (``[CLS] q [SEP] p [SEP]`` for BERT,
``<s> q </s></s> p </s>`` for RoBERTa/XLM-R). The pairs a step scores are chosen by mining, after
the data were batched, so the data module cannot tokenise them jointly. Instead:

* the data module tokenises each side *alone* with the teacher's tokenizer, without special tokens,
  into ``teacher_a = {"text_ids", "text_mask"}`` (queries) and ``teacher_b = {"text_ids", "text_mask"}``
  (passages), ``[N, L]`` right-padded (:class:`distill.data.beir.BeirTextDataModule` does this when
  given ``teacher_tokenizer``);
* the teacher joins each requested pair with its tokenizer's own pair template (read once from the
  tokenizer, so any BERT/RoBERTa/XLM-R/ELECTRA re-ranker works), truncates the passage so the pair
  fits ``max_length``, and sets ``token_type_ids`` where the model uses them.

The distinct key names keep a student's ``input_ids`` (which already contain special tokens and may
come from another vocabulary) from reaching the teacher by mistake.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from distill.pretrained import load_pretrained, load_tokenizer
from distill.inputs import Inputs
from distill.teachers.base import Teacher
from distill.teachers.hf_checks import check_token_ids, require_keys

TEXT_KEYS = ("text_ids", "text_mask")
FIX = ("set data.init_args.teacher_tokenizer to the teacher's folder (the same as the teacher's pretrained) "
       "so the data module tokenises queries and passages for it")


@dataclass(frozen=True)
class PairTemplate:
    """Special tokens around and between the two texts of a pair, with their token type ids."""

    prefix: tuple[int, ...]
    middle: tuple[int, ...]
    suffix: tuple[int, ...]
    prefix_types: tuple[int, ...]
    middle_types: tuple[int, ...]
    suffix_types: tuple[int, ...]
    first_type: int
    second_type: int

    @property
    def num_special(self) -> int:
        return len(self.prefix) + len(self.middle) + len(self.suffix)

    @classmethod
    def from_tokenizer(cls, tokenizer: Any) -> "PairTemplate":
        """Read the template by encoding a probe pair and locating its two texts."""
        encoding = tokenizer("a", "b", return_token_type_ids=True)
        try:
            sequence_ids = encoding.sequence_ids(0)
        except (ValueError, AttributeError) as error:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer; TextCrossEncoderTeacher needs "
                             "one (a tokenizer.json in the teacher's folder)") from error
        ids = list(encoding["input_ids"])
        types = list(encoding.get("token_type_ids") or [0] * len(ids))
        first = [i for i, s in enumerate(sequence_ids) if s == 0]
        second = [i for i, s in enumerate(sequence_ids) if s == 1]
        contiguous = (first and second and first == list(range(first[0], first[-1] + 1))
                      and second == list(range(second[0], second[-1] + 1)) and first[-1] < second[0])
        if not contiguous:
            raise ValueError(f"cannot read a pair template from {type(tokenizer).__name__}: "
                             f"sequence ids {sequence_ids}")
        q0, q1, p0, p1 = first[0], first[-1] + 1, second[0], second[-1] + 1
        return cls(
            prefix=tuple(ids[:q0]), middle=tuple(ids[q1:p0]), suffix=tuple(ids[p1:]),
            prefix_types=tuple(types[:q0]), middle_types=tuple(types[q1:p0]), suffix_types=tuple(types[p1:]),
            first_type=int(types[q0]), second_type=int(types[p0]),
        )


def join_pairs(query_ids: Tensor, query_mask: Tensor, passage_ids: Tensor, passage_mask: Tensor,
               template: PairTemplate, max_length: int, pad_token_id: int) -> dict[str, Tensor]:
    """Build joint cross-encoder inputs for N aligned pairs.

    Args:
        query_ids / query_mask: ``[N, Lq]`` right-padded ids of the queries, no special tokens.
        passage_ids / passage_mask: ``[N, Lp]`` the same for the passages.
        template: the tokenizer's pair template.
        max_length: longest joint sequence; the query keeps at most ``max_length - specials - 1``
            tokens, the passage fills the rest (truncated from its end).

    Returns ``input_ids``, ``attention_mask``, ``token_type_ids``, each ``[N, L]`` with
    ``L = max(len(pair))`` right-padded.
    """
    budget = max_length - template.num_special
    if budget < 2:
        raise ValueError(f"max_length {max_length} leaves no room for text after {template.num_special} special tokens")
    device = query_ids.device
    n = query_ids.shape[0]
    q_len = query_mask.sum(1).clamp(max=budget - 1)
    p_len = torch.minimum(passage_mask.sum(1), budget - q_len)
    total = template.num_special + q_len + p_len

    def special(values: tuple[int, ...]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device).expand(n, len(values))

    wq, wp = query_ids.shape[1], passage_ids.shape[1]
    pool_ids = torch.cat([special(template.prefix), query_ids, special(template.middle), passage_ids,
                          special(template.suffix)], dim=1)
    pool_types = torch.cat([
        special(template.prefix_types), torch.full_like(query_ids, template.first_type),
        special(template.middle_types), torch.full_like(passage_ids, template.second_type),
        special(template.suffix_types),
    ], dim=1)
    width = int(total.max()) if n else 0
    pos = torch.arange(width, device=device).unsqueeze(0).expand(n, width)
    n_pre, n_mid = len(template.prefix), len(template.middle)
    b1 = (n_pre + q_len).unsqueeze(1)
    b2 = b1 + n_mid
    b3 = b2 + p_len.unsqueeze(1)
    # Column of the pool each output position copies: prefix | query | middle | passage | suffix.
    source = pos.clone()
    source = torch.where(pos >= b1, n_pre + wq + (pos - b1), source)
    source = torch.where(pos >= b2, n_pre + wq + n_mid + (pos - b2), source)
    source = torch.where(pos >= b3, n_pre + wq + n_mid + wp + (pos - b3), source)
    attention_mask = (pos < total.unsqueeze(1)).long()
    source = torch.where(attention_mask.bool(), source, torch.zeros_like(source))
    input_ids = pool_ids.gather(1, source).masked_fill(attention_mask == 0, pad_token_id)
    token_type_ids = pool_types.gather(1, source).masked_fill(attention_mask == 0, 0)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


class TextCrossEncoderTeacher(Teacher):
    """Frozen text cross-encoder: ``score(queries, passages) -> [N]``, one logit per pair.

    Args:
        pretrained: a ``save_pretrained`` folder of a sequence-classification model with its
            tokenizer (e.g. a local copy of ``cross-encoder/ms-marco-MiniLM-L-6-v2``), a hub id when online.
        max_length: longest joint sequence (capped by the model's position embeddings).
        label_index: which output logit is the relevance score (0 for one-logit re-rankers).
        trust_remote_code: allow a model folder's own Python code (off unless a recipe sets it).
        tokens_per_forward: the most tokens (pairs x the longest joined pair) one model forward reads; the
            pairs a :meth:`score` call receives (``teacher_max_pairs`` of them) are sorted by length and run
            in forwards of this size. On one CPU thread, all-MiniLM-L6-v2 as a cross-encoder scores 0.85x as
            many pairs per second as ``CrossEncoder.predict`` with 8,192, 1.08x with 4,096 and 1.20x with
            2,048 (the default; a small forward's activations stay in cache); on a GPU, raise it.

    Inputs: ``a`` and ``b`` hold ``text_ids`` / ``text_mask`` ``[N, L]`` (see the module docstring).
    """

    has_embeddings = False

    def __init__(self, pretrained: str, max_length: int = 512, label_index: int = 0,
                 trust_remote_code: bool = False, tokens_per_forward: int = 2048) -> None:
        super().__init__()
        if tokens_per_forward < 1:
            raise ValueError(f"tokens_per_forward must be >= 1, got {tokens_per_forward}")
        self.tokens_per_forward = tokens_per_forward
        from transformers import AutoModelForSequenceClassification

        field = "model.init_args.teacher.init_args.pretrained (TextCrossEncoderTeacher)"
        self.pretrained = pretrained
        self.model = load_pretrained(AutoModelForSequenceClassification, pretrained, field,
                                     trust_remote_code=trust_remote_code)
        self.tokenizer = load_tokenizer(pretrained, field, trust_remote_code=trust_remote_code)
        num_labels = int(self.model.config.num_labels)
        if not 0 <= label_index < num_labels:
            raise ValueError(f"label_index {label_index} is out of range: the model has {num_labels} output logit(s)")
        self.label_index = label_index
        model_max = int(getattr(self.model.config, "max_position_embeddings", max_length))
        tokenizer_max = int(getattr(self.tokenizer, "model_max_length", model_max) or model_max)
        self.max_length = min(max_length, model_max, tokenizer_max if tokenizer_max < 1_000_000 else model_max)
        self.template = PairTemplate.from_tokenizer(self.tokenizer)
        self.pad_token_id = int(self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0)
        self.uses_token_types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())
        self.vocab_size = int(self.model.config.vocab_size)
        self.freeze()

    def join(self, a: Inputs, b: Inputs) -> dict[str, Tensor]:
        """Joint model inputs ``[N, L]`` for aligned queries ``a`` and passages ``b``."""
        require_keys("TextCrossEncoderTeacher", "a (queries)", a, TEXT_KEYS, FIX)
        require_keys("TextCrossEncoderTeacher", "b (passages)", b, TEXT_KEYS, FIX)
        for side in (a, b):
            check_token_ids("TextCrossEncoderTeacher", side["text_ids"], self.vocab_size, None, FIX)
        inputs = join_pairs(a["text_ids"], a["text_mask"], b["text_ids"], b["text_mask"], self.template,
                            self.max_length, self.pad_token_id)
        if not self.uses_token_types:
            inputs.pop("token_type_ids")
        return inputs

    @torch.no_grad()
    def score(self, a: Inputs, b: Inputs) -> Tensor:
        """Logits ``[N]`` of the aligned pairs, in their order.

        The joined pairs are sorted by length and cut into forwards of at most ``tokens_per_forward`` tokens
        (rows x the longest pair of the forward), each padded to its own longest pair: pairs of mixed lengths
        are not all padded to the longest one. Padding is masked, so each score is the pair's score alone.
        """
        inputs = self.join(a, b)
        lengths = inputs["attention_mask"].sum(1)
        order = torch.argsort(lengths, descending=True, stable=True)
        sorted_lengths = lengths[order].tolist()  # longest first
        scores = torch.empty(len(sorted_lengths), dtype=torch.float32, device=lengths.device)
        first = 0
        while first < len(sorted_lengths):
            longest = max(int(sorted_lengths[first]), 1)
            rows = order[first:first + max(1, self.tokens_per_forward // longest)]
            part = {key: value[rows, :longest] for key, value in inputs.items()}
            scores[rows] = self.model(**part).logits[:, self.label_index].float()
            first += int(rows.numel())
        return scores

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "pretrained": self.pretrained, "max_length": self.max_length,
                "label_index": self.label_index}
