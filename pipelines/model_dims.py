"""The dimensions of the models our TPU configs target, as one small typed table.

Used by the TPU config test (does the mesh divide the model?), by ``pipelines.mfu`` (FLOPs per
token) and by ``docs/scaling.md`` (memory per chip). A config names its model by an HF checkpoint
path; ``dims_for_checkpoint`` finds the entry from the path's last component, so a new TPU config for
a model not listed here fails its test until the model's dimensions are added.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

LLAMA_LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class ModelDims:
    """A Llama-family decoder: the sizes that decide FLOPs, memory and which meshes divide it."""

    name: str
    hidden_dim: int  # Levanter axis "embed"
    intermediate_dim: int  # "mlp"
    num_layers: int  # "layer"
    num_heads: int  # "heads"
    num_kv_heads: int  # "kv_head"
    vocab_size: int  # "vocab"
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:  # "head_size"
        return self.hidden_dim // self.num_heads

    @property
    def axis_sizes(self) -> dict[str, int]:
        """Levanter's named axes of the Llama parameters, with their sizes."""
        return {
            "embed": self.hidden_dim,
            "mlp": self.intermediate_dim,
            "layer": self.num_layers,
            "heads": self.num_heads,
            "kv_head": self.num_kv_heads,
            "q_heads_per_group": self.num_heads // self.num_kv_heads,
            "head_size": self.head_dim,
            "vocab": self.vocab_size,
        }

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each linear layer in one block."""
        h, kv = self.hidden_dim, self.num_kv_heads * self.head_dim
        return {
            "q_proj": (h, h),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (h, h),
            "gate_proj": (h, self.intermediate_dim),
            "up_proj": (h, self.intermediate_dim),
            "down_proj": (self.intermediate_dim, h),
        }

    def num_params(self) -> int:
        """All parameters: blocks (linears + 2 RMSNorms), final norm, embeddings, lm_head."""
        block = sum(i * o for i, o in self.linear_shapes().values()) + 2 * self.hidden_dim
        embeddings = self.vocab_size * self.hidden_dim
        lm_head = 0 if self.tie_word_embeddings else embeddings
        return self.num_layers * block + self.hidden_dim + embeddings + lm_head

    def num_lora_params(self, rank: int, modules: tuple[str, ...] = LLAMA_LINEAR_MODULES) -> int:
        """Trainable parameters of LoRA rank ``rank`` on ``modules`` of every block (A: in x r, B: r x out)."""
        shapes = self.linear_shapes()
        return self.num_layers * sum(rank * (shapes[m][0] + shapes[m][1]) for m in modules)

    @classmethod
    def from_levanter(cls, config, vocab_size: int, name: str = "levanter") -> "ModelDims":
        """From a Levanter ``LlamaConfig`` (or any config with the same fields)."""
        return cls(
            name=name,
            hidden_dim=config.hidden_dim,
            intermediate_dim=config.intermediate_dim,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            num_kv_heads=config.num_kv_heads,
            vocab_size=vocab_size,
            tie_word_embeddings=bool(getattr(config, "tie_word_embeddings", False)),
        )


# meta-llama/Llama-2-7b-hf config.json: hidden_size 4096, intermediate_size 11008, 32 layers,
# 32 attention heads, 32 key/value heads (no GQA at 7B), vocab_size 32000, untied embeddings.
LLAMA2_7B = ModelDims("Llama-2-7b-hf", 4096, 11008, 32, 32, 32, 32000)

KNOWN_MODELS: dict[str, ModelDims] = {LLAMA2_7B.name.lower(): LLAMA2_7B}


def dims_for_checkpoint(path: str) -> Optional[ModelDims]:
    """The dims of a checkpoint named like a known model (``gs://b/models/Llama-2-7b-hf``, ``meta-llama/Llama-2-7b-hf``)."""
    return KNOWN_MODELS.get(path.rstrip("/").rsplit("/", 1)[-1].lower())
