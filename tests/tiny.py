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


def build_tiny_llama(out_dir: Path, seed: int = 0) -> Path:
    """Save a random float32 Llama (2 layers, hidden 64) plus the tiny tokenizer as an HF checkpoint."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tokenizer = build_tiny_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=512,
        rope_theta=100000.0,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0)
    model.save_pretrained(out_dir, safe_serialization=True)
    assert len(tokenizer) <= VOCAB_SIZE
    return out_dir
