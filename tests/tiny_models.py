"""A tiny causal LM, a word-level tokenizer (built locally, no hub access) and the TRL settings and
reward that the BandPO trainer tests share."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<eos>", "<unk>", "<user>", "<assistant>"]
WORDS = [str(digit) for digit in range(10)] + ["+", "-", "*", "=", "?", ".", "what", "is", "answer", "the"]
CHAT_TEMPLATE = (
    "{% for message in messages %}<{{ message['role'] }}> {{ message['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}<assistant> {% endif %}"
)


def build_tiny_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over digits, operators and a few words, with a chat template."""
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>"
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(tokenizer: PreTrainedTokenizerFast, seed: int = 0) -> LlamaForCausalLM:
    """A 2-layer Llama with a 32-dim hidden state over ``tokenizer``'s vocabulary."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config)


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """Save the tiny model and tokenizer to ``directory`` (loadable with from_pretrained)."""
    tokenizer = build_tiny_tokenizer()
    build_tiny_model(tokenizer, seed).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


TINY_TRAINING_ARGS = dict(
    per_device_train_batch_size=4,
    num_generations=4,
    max_completion_length=6,
    report_to=[],
    save_strategy="no",
    use_cpu=True,
    bf16=False,
    logging_steps=1,
    seed=0,
)
"""GRPOConfig fields of every tiny trainer run: CPU, no checkpoints or trackers, short completions."""


def reward_sevens(completions, **trl_columns):
    """A verifiable toy reward: the number of 7s in each (conversational) completion."""
    return [float(completion[0]["content"].count("7")) for completion in completions]
