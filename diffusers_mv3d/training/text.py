"""The foundation's text side: a word-level tokenizer trained on the captions and a small CLIP text
encoder built from a config.

Prompts are encoded exactly as ``diffusers.IFPipeline.encode_prompt`` does (lower-cased and stripped,
padded to :data:`MAX_LENGTH` = 77 tokens, attention mask passed to the text encoder, the last hidden
state used whole), so that a UNet trained on :func:`encode_prompts` is sampled correctly by
``IFPipeline``. IFPipeline hard-codes the 77-token padding and feeds all 77 states (padding included)
to the UNet's cross-attention, which is why training pads to 77 too rather than to the few tokens a
caption needs.
"""

from typing import TYPE_CHECKING, Iterable, List, Sequence

import torch

if TYPE_CHECKING:  # transformers is imported where it is used: it takes seconds, and the CLI imports this module
    from transformers import CLIPTextModel, PreTrainedTokenizerFast

__all__ = ["MAX_LENGTH", "SPECIAL_TOKENS", "build_text_encoder", "encode_prompts", "train_word_tokenizer"]

MAX_LENGTH = 77
"""Tokens per prompt: IFPipeline pads every prompt to 77 (``encode_prompt``'s ``max_length = 77``)."""

PAD, UNK, BOS, EOS = "[PAD]", "[UNK]", "[BOS]", "[EOS]"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS)
"""Ids 0, 1, 2, 3 in this order."""


def train_word_tokenizer(captions: Iterable[str], min_frequency: int = 1) -> "PreTrainedTokenizerFast":
    """A word-level tokenizer over the words of ``captions`` (lower-cased, punctuation split off).

    Every sequence is wrapped as ``[BOS] words [EOS]``, padded with ``[PAD]``; unknown words map to
    ``[UNK]``. Saved with ``save_pretrained`` it reloads with ``AutoTokenizer.from_pretrained``.
    """
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    trainer = trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS), min_frequency=min_frequency)
    tokenizer.train_from_iterator(list(captions), trainer=trainer)
    bos_id, eos_id = tokenizer.token_to_id(BOS), tokenizer.token_to_id(EOS)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", pair=f"{BOS} $A {EOS} $B {EOS}", special_tokens=[(BOS, bos_id), (EOS, eos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        unk_token=UNK,
        model_max_length=MAX_LENGTH,
        padding_side="right",
    )


def build_text_encoder(
    tokenizer: "PreTrainedTokenizerFast", hidden_size: int = 64, num_layers: int = 2, num_heads: int = 2
) -> "CLIPTextModel":
    """A randomly initialised ``CLIPTextModel`` for ``tokenizer``'s vocabulary (causal, 77 positions).

    Feed-forward width is 4x ``hidden_size``; no dropout (so training steps are deterministic).
    """
    from transformers import CLIPTextConfig, CLIPTextModel

    if hidden_size % num_heads:
        raise ValueError(f"text hidden size ({hidden_size}) must be a multiple of the heads ({num_heads})")
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        projection_dim=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=MAX_LENGTH,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        attention_dropout=0.0,
        dropout=0.0,
        use_attention_mask=True,  # read by diffusers' SD pipelines and TuneMV3DPipeline: pass the mask
    )
    return CLIPTextModel(config)


def tokenize(tokenizer: "PreTrainedTokenizerFast", prompts: Sequence[str]) -> dict:
    """``input_ids`` and ``attention_mask`` [B, 77], as IFPipeline makes them (``clean_caption=False``)."""
    prompts: List[str] = [p.lower().strip() for p in prompts]
    return tokenizer(
        prompts,
        padding="max_length",
        max_length=MAX_LENGTH,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )


def encode_prompts(
    tokenizer: "PreTrainedTokenizerFast", text_encoder: "CLIPTextModel", prompts: Sequence[str]
) -> torch.Tensor:
    """Text embeddings [B, 77, hidden] of ``prompts`` (``""`` is the unconditional prompt)."""
    tokens = tokenize(tokenizer, prompts)
    device = next(text_encoder.parameters()).device
    return text_encoder(
        tokens.input_ids.to(device), attention_mask=tokens.attention_mask.to(device)
    )[0]  # (B, 77, hidden)
