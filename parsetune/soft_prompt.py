"""Soft prompts (prompt tuning): ``K`` trained vectors in the embedding space, put before every prompt.

The model is the base model with its token embedding wrapped (``SoftPromptEmbedding``): token ids
below the vocabulary size ``V`` look the vocabulary up as before; the *virtual* ids ``V .. V+K-1``
take rows ``0 .. K-1`` of the soft prompt. A sequence that starts with the ``K`` virtual ids
(``prefix_ids``) therefore reads the soft prompt first, exactly as PEFT's prompt tuning concatenates
it before the input embeddings. Nothing else in the model changes, so the trainer's packed
sequences, the KV-cache decoder and the task metrics run it as they run any model. (Llama-style
rotary positions are relative: a packed example's virtual tokens sit just before its prompt, as in
PEFT, wherever the example starts in its sequence.)

On disk it is a PEFT prompt-tuning adapter, what ``PeftModel.from_pretrained(base, dir)`` loads:
``adapter_config.json`` (``peft_type: PROMPT_TUNING``) and ``adapter_model.safetensors`` holding
``prompt_embeddings`` ``[K, hidden]``. ``eval generate --model ADAPTER_DIR`` reads the base model
named in it and decodes with the prompt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from parsetune import storage
from parsetune.errors import UserError

PEFT_TYPE = "PROMPT_TUNING"
VIRTUAL = "virtual"  # the soft prompt's axis: [virtual, embed]
WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
PROMPT_KEY = "prompt_embeddings"


def _embedding_class():
    import equinox as eqx
    import haliax as hax
    import haliax.nn as hnn

    class SoftPromptEmbedding(eqx.Module):
        """A token embedding whose ids ``V ..`` (past the vocabulary) are the soft prompt's rows."""

        inner: hnn.Embedding
        prompt: hax.NamedArray  # [virtual, embed]

        @property
        def weight(self):  # the vocabulary (a tied lm_head reads it)
            return self.inner.weight

        @property
        def Vocab(self):
            return self.inner.Vocab

        @property
        def Embed(self):
            return self.inner.Embed

        def __call__(self, input_ids, *, key=None):
            return self.embed(input_ids)

        def embed(self, input_ids):
            vocab = self.Vocab.size
            Virtual = self.prompt.resolve_axis(VIRTUAL)
            is_virtual = input_ids >= vocab
            from_vocab = self.inner.embed(hax.where(is_virtual, 0, input_ids))
            soft = self.prompt.take(Virtual, hax.clip(input_ids - vocab, 0, Virtual.size - 1))
            return hax.where(is_virtual, soft.astype(from_vocab.dtype), from_vocab)

        def unembed(self, x):
            return self.inner.unembed(x)

    return SoftPromptEmbedding


_CLASS: list = []


def embedding_class():
    """``SoftPromptEmbedding`` (built on first use: importing this module needs no JAX)."""
    if not _CLASS:
        _CLASS.append(_embedding_class())
    return _CLASS[0]


def with_soft_prompt(model, prompt_KxD):
    """``model`` (a Levanter LM with ``embeddings.token_embeddings``) reading ``prompt_KxD`` at the
    virtual ids. ``prompt_KxD`` is an array ``[K, hidden]`` (or already a named ``[virtual, embed]``)."""
    import equinox as eqx
    import haliax as hax

    token_embeddings = getattr(getattr(model, "embeddings", None), "token_embeddings", None)
    if token_embeddings is None:
        raise UserError(f"prompt tuning: {type(model).__name__} has no embeddings.token_embeddings to put a soft prompt before")
    if soft_prompt_of(model) is not None:
        raise UserError("prompt tuning: the model already has a soft prompt")
    Embed = token_embeddings.Embed
    if isinstance(prompt_KxD, hax.NamedArray):
        named = prompt_KxD
    else:
        array = prompt_KxD
        if array.ndim != 2 or array.shape[1] != Embed.size:
            raise UserError(f"prompt tuning: soft prompt of shape {tuple(array.shape)}, expected [K, {Embed.size}]")
        named = hax.named(array, (hax.Axis(VIRTUAL, array.shape[0]), Embed))
    wrapped = embedding_class()(token_embeddings, named.astype(token_embeddings.weight.dtype))
    return eqx.tree_at(lambda m: m.embeddings.token_embeddings, model, wrapped)


def soft_prompt_of(model):
    """The model's ``SoftPromptEmbedding``, or None."""
    token_embeddings = getattr(getattr(model, "embeddings", None), "token_embeddings", None)
    return token_embeddings if _CLASS and isinstance(token_embeddings, _CLASS[0]) else None


def prefix_ids(model) -> list[int]:
    """The virtual ids every prompt starts with (none for a model without a soft prompt)."""
    soft = soft_prompt_of(model)
    if soft is None:
        return []
    vocab = soft.Vocab.size
    return list(range(vocab, vocab + soft.prompt.resolve_axis(VIRTUAL).size))


def virtual_ids(vocab_size: int, num_virtual_tokens: int) -> tuple[int, ...]:
    return tuple(range(vocab_size, vocab_size + num_virtual_tokens))


def prompt_array(model) -> np.ndarray:
    """The soft prompt ``[K, hidden]`` of a model as a float32 host array."""
    soft = soft_prompt_of(model)
    if soft is None:
        raise UserError("the model has no soft prompt")
    return np.asarray(soft.prompt.rearrange((VIRTUAL, soft.Embed.name)).array, dtype=np.float32)


# ---- the PEFT adapter on disk -------------------------------------------------------------------


@dataclass(frozen=True)
class PromptAdapter:
    directory: str
    base_model: str  # base_model_name_or_path: the checkpoint the prompt was trained on
    prompt: np.ndarray  # [K, hidden], float32


def is_prompt_adapter(directory: str) -> bool:
    path = storage.join(directory, CONFIG_NAME)
    if not storage.exists(path):
        return False
    try:
        return json.loads(storage.read_text(path)).get("peft_type") == PEFT_TYPE
    except (ValueError, AttributeError):
        return False


def read_adapter(directory: str) -> PromptAdapter:
    from safetensors.numpy import load

    config = json.loads(storage.read_text(storage.join(directory, CONFIG_NAME)))
    weights_path = storage.join(directory, WEIGHTS_NAME)
    if not storage.exists(weights_path):
        raise UserError(f"{directory}: prompt-tuning adapter without {WEIGHTS_NAME}")
    tensors = load(storage.read_bytes(weights_path))
    if PROMPT_KEY not in tensors:
        raise UserError(f"{weights_path}: no {PROMPT_KEY!r} tensor (found {', '.join(tensors) or 'none'})")
    prompt = tensors[PROMPT_KEY].astype(np.float32)
    expected = config.get("num_virtual_tokens")
    if expected is not None and prompt.shape[0] != expected * config.get("num_transformer_submodules", 1):
        raise UserError(f"{directory}: {PROMPT_KEY} has {prompt.shape[0]} rows, the config says {expected} virtual tokens")
    base = config.get("base_model_name_or_path")
    if not base:
        raise UserError(f"{directory}/{CONFIG_NAME}: no base_model_name_or_path")
    return PromptAdapter(directory, base, prompt)


def adapter_config(prompt: np.ndarray, base_model: str, hf_config: dict[str, Any], tokenizer_path: str) -> dict[str, Any]:
    """PEFT's ``PromptTuningConfig`` fields for a causal LM. The init is written as ``RANDOM``: the saved
    prompt replaces whatever PEFT initialises, and a ``TEXT`` init would make PEFT load the tokenizer
    at ``tokenizer_name_or_path`` just to build a value it then overwrites (the real init is in the
    export marker)."""
    return {
        "peft_type": PEFT_TYPE,
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "num_virtual_tokens": int(prompt.shape[0]),
        "token_dim": int(prompt.shape[1]),
        "num_transformer_submodules": 1,
        "num_attention_heads": hf_config.get("num_attention_heads"),
        "num_layers": hf_config.get("num_hidden_layers"),
        "prompt_tuning_init": "RANDOM",
        "prompt_tuning_init_text": None,
        "tokenizer_name_or_path": tokenizer_path,
        "tokenizer_kwargs": None,
        "inference_mode": True,
        "revision": None,
        "modules_to_save": None,
    }


def write_adapter(directory: str, prompt: np.ndarray, base_model: str, hf_config: dict[str, Any]) -> None:
    """Write the adapter's two files into a local (staging) directory."""
    from safetensors.numpy import save_file

    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, CONFIG_NAME), "w") as f:
        json.dump(adapter_config(prompt, base_model, hf_config, base_model), f, indent=2)
    save_file({PROMPT_KEY: np.ascontiguousarray(prompt, dtype=np.float32)}, os.path.join(directory, WEIGHTS_NAME), metadata={"format": "pt"})
