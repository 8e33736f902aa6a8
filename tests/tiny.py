"""A tiny tokenizer and a tiny random Llama, built from scratch (no network), shaped like SmolLM2.

Special tokens sit where SmolLM2 has them: ``<|endoftext|>`` 0 (pad/unk), ``<|im_start|>`` 1 (BOS,
added in front of every encoding, as the converted SmolLM2 tokenizer does), ``<|im_end|>`` 2 (EOS).
The BPE vocabulary is trained on the ViGGO rows in ``tests/assets`` so prompts and MRs tokenise
into a sensible number of pieces. The model has 4 query heads and 2 KV heads so that a model axis
of 2 divides both (tensor-parallel tests), ties its embeddings and uses rope theta 100000 like SmolLM2.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSETS = Path(__file__).parent / "assets"
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
VOCAB_SIZE = 512
CHAT_TEMPLATE = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def training_corpus() -> list[str]:
    rows = [json.loads(line) for line in (ASSETS / "viggo_validation_50.jsonl").read_text().splitlines()]
    texts = []
    for r in rows:
        texts += [r["target"], r["meaning_representation"], "Sentence: " + r["target"] + "\nMeaning representation:\n"]
    return texts


def build_tiny_tokenizer(out_dir: Path):
    """Train and save a byte-level BPE tokenizer; returns the transformers tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(training_corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(single="<|im_start|> $A", pair="<|im_start|> $A <|im_start|> $B", special_tokens=[("<|im_start|>", 1)])
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_input_names=["input_ids", "attention_mask"],
    )
    assert [hf.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2]
    hf.save_pretrained(out_dir)
    return hf


FAMILIES = ("llama", "llama3", "mistral", "qwen2", "gpt2")


def _hf_config(family: str, initializer_range: float):
    """The HF config of a tiny ``family`` model: hidden 64, 2 layers, 4 heads of 16, 2 KV heads."""
    from transformers import GPT2Config, LlamaConfig, MistralConfig, Qwen2Config

    special = dict(bos_token_id=1, eos_token_id=2, pad_token_id=0, torch_dtype="float32")
    if family == "gpt2":
        return GPT2Config(vocab_size=VOCAB_SIZE, n_embd=64, n_layer=2, n_head=4, n_positions=512,
                          initializer_range=initializer_range, **special)
    common = dict(
        vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-5, initializer_range=initializer_range,
        **special,
    )
    if family == "llama":  # SmolLM2-like: tied embeddings, rope theta 100000
        return LlamaConfig(head_dim=16, rope_theta=100000.0, tie_word_embeddings=True, **common)
    if family == "llama3":  # Llama-3.1/3.2 rope scaling; original context 64 so that it changes frequencies
        # at head_dim 16 (wavelengths 6, 32, 167, ...: one kept, one smoothed, the rest divided by 8)
        scaling = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 64}
        return LlamaConfig(head_dim=16, rope_theta=500000.0, rope_scaling=scaling, tie_word_embeddings=False, **common)
    if family == "mistral":  # Levanter's Mistral always has its own lm_head; no window at our lengths
        return MistralConfig(head_dim=16, rope_theta=10000.0, sliding_window=None, tie_word_embeddings=False, **common)
    if family == "qwen2":  # q/k/v biases (randomised by build_tiny_model), tied embeddings like Qwen2.5-0.5B
        return Qwen2Config(rope_theta=1000000.0, tie_word_embeddings=True, use_sliding_window=False, **common)
    raise ValueError(f"unknown family {family!r} (expected one of {', '.join(FAMILIES)})")


def build_tiny_model(out_dir: Path, family: str, seed: int = 0, initializer_range: float = 0.02) -> Path:
    """Save a random float32 ``family`` model (see ``FAMILIES``) plus the tiny tokenizer as an HF checkpoint.

    Linear biases (Qwen2's q/k/v) are drawn like the weights rather than left at HF's zeros, so the
    conversion of every parameter is exercised."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir)
    config = _hf_config(family, initializer_range)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and module.bias is not None:
                module.bias.normal_(0.0, initializer_range)
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out_dir, safe_serialization=True)
    assert len(tokenizer) <= VOCAB_SIZE
    return out_dir


def build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Save a random float32 Llama (2 layers, hidden 64) plus the tiny tokenizer as an HF checkpoint."""
    return build_tiny_model(out_dir, "llama", seed)
