"""Grammar-constrained decoding: even a random model produces only well-formed outputs."""

from __future__ import annotations

import json

import pytest

from conftest import ASSETS, REPO
from parsetune.tasks.viggo_mr import parse_mr


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    from transformers import AutoTokenizer

    from eval.generation_model import GenerationModel

    return AutoTokenizer.from_pretrained(tiny_model_dir), GenerationModel.load(str(tiny_model_dir))


@pytest.fixture(scope="module")
def bundled_values():
    """Value sets learned from the bundled ViGGO train split, as prep writes them into the manifest."""
    from parsetune.tasks.viggo_values import learn_value_sets

    rows = [json.loads(line) for line in open(REPO / "prep" / "data" / "viggo" / "train.jsonl")]
    return learn_value_sets((r["target"], r["meaning_representation"]) for r in rows)


def _matcher(tokenizer, grammar):
    import llguidance
    import llguidance.hf

    return llguidance.LLMatcher(llguidance.hf.from_tokenizer(tokenizer, eos_token=2), grammar, log_level=0)


@pytest.mark.parametrize(
    "mr, ok",
    [
        ("inform(name[BioShock], release_year[2007], esrb[M (for Mature)], genres[action-adventure, shooter])", True),
        ("request_attribute(esrb[])", True),
        ("give_opinion(name[SpellForce 3], rating[poor], player_perspective[bird view], platforms[Xbox, PC])", True),
        ("confirm(name[Shadow of the Tomb Raider], developer[Eidos Montréal])", True),
        ("inform(rating[poor], name[SpellForce 3])", False),  # out of canonical order
        ("inform(rating[awesome])", False),  # closed value set
        ("inform(name[A], name[B])", False),  # repeated attribute
        ("describe(name[A])", False),  # unknown function
        ("inform(genres[shooter, jazz])", False),
    ],
)
def test_viggo_grammar_accepts_exactly_well_formed_mrs(tiny, bundled_values, mr, ok):
    import llguidance

    from eval.constrained import viggo_lark

    tokenizer = tiny[0]
    matcher = _matcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(viggo_lark(bundled_values)))
    ids = tokenizer(mr, add_special_tokens=False)["input_ids"]
    accepted = matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting()
    assert accepted == ok
    if ok:
        assert matcher.is_stopped()  # nothing but EOS may follow the closing ")"


def test_viggo_grammar_accepts_every_bundled_validation_mr(tiny, bundled_values):
    import llguidance

    from eval.constrained import viggo_lark

    tokenizer = tiny[0]
    matcher = _matcher(tokenizer, llguidance.LLMatcher.grammar_from_lark(viggo_lark(bundled_values)))
    for line in open(REPO / "prep" / "data" / "viggo" / "validation.jsonl"):
        mr = json.loads(line)["meaning_representation"]
        matcher.reset()
        ids = tokenizer(mr, add_special_tokens=False)["input_ids"]
        assert matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting(), mr


PROMPTS = [
    "Sentence: BioShock is great",
    "Sentence: I like Portal 2, a puzzle game from 2011 by Valve",
    "Meaning representation:\n",
    "Sentence: Have you played any first person shooter games for the Xbox from 2012?",
    "Sentence: What is it about",
    "Sentence: SpellForce 3 is a pretty bad game from 2017",
]


@pytest.mark.parametrize("max_new_tokens", [40, 160])
def test_random_model_constrained_outputs_all_parse(tiny, max_new_tokens):
    """Random weights + the grammar: every row is a valid MR ending in EOS, even with a tight budget."""
    from eval.constrained import build_constraint
    from eval.decoding import BatchDecoder

    tokenizer, model = tiny
    constraint = build_constraint("viggo", tokenizer, model.vocab_size, [2])
    decoder = BatchDecoder(model, [2], 0, max_new_tokens, slots=64 + max_new_tokens)
    results = decoder.generate([tokenizer(p)["input_ids"] for p in PROMPTS], constraint)
    for r in results:
        text = tokenizer.decode(r.tokens, skip_special_tokens=True)
        assert r.stopped_at_eos, text
        assert parse_mr(text).valid, text


def test_constrained_prompt_lookup_equals_one_token_steps(tiny):
    """Drafts under the grammar: masks after each allowed draft token, the matcher rolled back; the
    outputs are those of one-token steps."""
    from eval.constrained import build_constraint
    from eval.decoding import BatchDecoder

    tokenizer, model = tiny
    prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
    outputs = []
    for draft_tokens in (0, 4):
        constraint = build_constraint("viggo", tokenizer, model.vocab_size, [2])
        decoder = BatchDecoder(model, [2], 0, 60, slots=64 + 60 + draft_tokens, draft_tokens=draft_tokens)
        outputs.append([(r.tokens, r.stopped_at_eos) for r in decoder.generate(prompts, constraint)])
        if draft_tokens:
            assert decoder.stats.drafted > 0, decoder.stats
    assert outputs[0] == outputs[1]


def test_json_schema_constraint_yields_valid_json(tiny, tmp_path):
    import jsonschema

    from eval.constrained import build_constraint
    from eval.decoding import BatchDecoder

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "year": {"type": "integer", "maximum": 3000}},
        "required": ["name", "year"],
        "additionalProperties": False,
    }
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(schema))
    tokenizer, model = tiny
    constraint = build_constraint("json-schema", tokenizer, model.vocab_size, [2], str(path))
    decoder = BatchDecoder(model, [2], 0, 96, slots=160)
    for r in decoder.generate([tokenizer(p)["input_ids"] for p in PROMPTS[:3]], constraint):
        text = tokenizer.decode(r.tokens, skip_special_tokens=True)
        assert r.stopped_at_eos, text
        jsonschema.validate(json.loads(text), schema)


def test_generate_constrained_end_to_end_valid_rate_one(tiny_model_dir, tmp_path):
    from eval.generate import generate_predictions
    from eval.score import score_predictions

    rows = [json.loads(line) for line in open(ASSETS / "viggo_validation_50.jsonl")][:8]
    data = tmp_path / "v.jsonl"
    data.write_text(
        "".join(
            json.dumps({"id": str(i), "input": "Sentence: " + r["target"] + "\nMeaning representation:\n", "output": r["meaning_representation"]}) + "\n"
            for i, r in enumerate(rows)
        )
    )
    out = tmp_path / "p.jsonl"
    generate_predictions(str(tiny_model_dir), str(data), str(out), batch_size=4, max_new_tokens=48, constrain="viggo", progress=False)
    metrics = score_predictions(str(out), str(tmp_path / "scores"))
    assert metrics["valid_rate"] == 1.0


def test_bad_schema_file_is_a_user_error(tiny, tmp_path):
    from eval.constrained import build_constraint
    from parsetune.errors import UserError

    bad = tmp_path / "s.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="s.json: not valid JSON"):
        build_constraint("json-schema", tiny[0], tiny[1].vocab_size, [2], str(bad))
    with pytest.raises(UserError, match="unknown constraint"):
        build_constraint("yaml", tiny[0], tiny[1].vocab_size, [2])


def test_gguf_style_sequence_decoder_still_gives_byte_level_masks(tiny_model_dir, tmp_path):
    """Tokenizers converted from GGUF (SmolLM2) wrap ByteLevel in a Sequence decoder; llguidance must
    still read 'Ġcombat' as ' combat', else valid MRs with spaces are rejected mid-value."""
    import shutil

    import llguidance
    from transformers import AutoTokenizer

    from eval.constrained import ll_tokenizer, viggo_lark

    d = tmp_path / "tok"
    shutil.copytree(tiny_model_dir, d)
    spec = json.loads((d / "tokenizer.json").read_text())
    spec["decoder"] = {
        "type": "Sequence",
        "decoders": [
            {"type": "ByteFallback"},
            {"type": "Fuse"},
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        ],
    }
    (d / "tokenizer.json").write_text(json.dumps(spec))
    tokenizer = AutoTokenizer.from_pretrained(d)
    matcher = llguidance.LLMatcher(
        ll_tokenizer(tokenizer, 512, [2]), llguidance.LLMatcher.grammar_from_lark(viggo_lark()), log_level=0
    )
    mr = "give_opinion(name[Need for Speed], rating[poor], genres[vehicular combat, driving/racing])"
    ids = tokenizer(mr, add_special_tokens=False)["input_ids"]
    assert matcher.try_consume_tokens(ids) == len(ids) and matcher.is_accepting(), matcher.get_error()
