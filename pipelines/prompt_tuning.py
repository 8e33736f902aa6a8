"""Prompt tuning with Levanter's trainer: the base model frozen, ``K`` soft-prompt vectors trained.

The soft prompt itself (the wrapped token embedding, the virtual ids, the PEFT adapter on disk) is
``parsetune.soft_prompt``, shared with generation. Here: the settings checks, the initial prompt,
the filter that makes the prompt the only trainable array, and the prompt's place in the data (each
example's prompt starts with the ``K`` virtual ids, so packing keeps one soft prompt per example).

Initial prompt (``method.init``): ``text`` takes the embeddings of ``init_text``'s tokens, repeated
until there are ``K`` (PEFT's TEXT init; Lester et al. found vocabulary-based inits beat random
ones); ``random`` draws from a normal distribution with the spread of the vocabulary's embeddings
(PEFT's RANDOM init draws N(0, 1), far larger than SmolLM2's embeddings, std ~0.06).
"""

from __future__ import annotations

import math

from parsetune.errors import UserError
from pipelines.config import PROMPT_INITS, PromptTuningConfig


def check_settings(method: PromptTuningConfig, max_seq_len: int) -> None:
    """Bad settings, in one line each, before any heavy work."""
    k = method.num_virtual_tokens
    if k < 1:
        raise UserError(f"method.num_virtual_tokens: {k}; expected at least 1")
    if k >= max_seq_len:
        raise UserError(f"method.num_virtual_tokens: {k} virtual tokens leave no room in data.max_seq_len={max_seq_len}")
    if method.init not in PROMPT_INITS:
        raise UserError(f"method.init: unknown init {method.init!r} (expected {' or '.join(PROMPT_INITS)})")
    if method.init == "text" and not method.init_text.strip():
        raise UserError("method.init_text: empty; give a text or use method.init: random")


def check_prompt_lengths(examples, prefix_length: int, max_seq_len: int, path: str) -> None:
    """A prompt that no longer fits once the virtual tokens are added is an error naming the row
    (its example could never be trained, nor evaluated the same way)."""
    for number, example in enumerate(examples, start=1):
        if len(example.prompt) + 1 > max_seq_len:
            raise UserError(
                f"{path}: row {number} (id {example.id!r}): its prompt is {len(example.prompt) - prefix_length} tokens + "
                f"{prefix_length} virtual tokens, longer than data.max_seq_len={max_seq_len}; "
                "raise data.max_seq_len or lower method.num_virtual_tokens"
            )


def text_init_ids(text: str, tokenizer, k: int) -> list[int]:
    """``text``'s token ids repeated (and cut) to ``k`` (PEFT's TEXT init, without special tokens)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise UserError(f"method.init_text {text!r} encodes to no tokens")
    return (ids * math.ceil(k / len(ids)))[:k]


def initial_prompt(method: PromptTuningConfig, vocabulary_VxD, tokenizer, seed: int):
    """``[K, hidden]``: rows of the vocabulary's embeddings (``text``) or a scaled normal draw (``random``)."""
    import jax
    import jax.numpy as jnp

    k = method.num_virtual_tokens
    if method.init == "text":
        return vocabulary_VxD[jnp.asarray(text_init_ids(method.init_text, tokenizer, k))].astype(jnp.float32)
    draw = jax.random.normal(jax.random.PRNGKey(seed), (k, vocabulary_VxD.shape[1]), dtype=jnp.float32)
    return draw * jnp.std(vocabulary_VxD.astype(jnp.float32))


def trainable_filter(model):
    """The filter tree for Levanter's ``is_trainable``: True for the soft prompt, False for every
    other array (the base model, frozen)."""
    import equinox as eqx
    import haliax as hax
    import jax

    frozen = jax.tree_util.tree_map(lambda _: False, model, is_leaf=lambda n: isinstance(n, hax.NamedArray))
    return eqx.tree_at(lambda m: m.embeddings.token_embeddings.prompt, frozen, True)


def with_trainable_prompt(model, method: PromptTuningConfig, tokenizer, seed: int):
    """``(model with its initial soft prompt, is_trainable filter)``."""
    from parsetune.soft_prompt import with_soft_prompt

    embedding = model.embeddings.token_embeddings
    vocabulary = embedding.weight.rearrange((embedding.Vocab.name, embedding.Embed.name)).array
    model = with_soft_prompt(model, initial_prompt(method, vocabulary, tokenizer, seed))
    return model, trainable_filter(model)
