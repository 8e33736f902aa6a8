"""``parsetune serve``: the real server (uvicorn subprocess) on a tiny run dir, called with the
official ``openai`` client and with raw HTTP for the error cases; plus the decoder pieces it adds
(per-row limits, stops, sampling, per-row constraints)."""

from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import numpy as np
import pytest

from serve_helpers import make_tiny_run, serving

from parsetune.tasks.viggo_mr import parse_mr

SENTENCE = "BioShock is a great first person shooter from 2007."
PROMPT = f"Sentence: {SENTENCE}\nMeaning representation:\n"
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "year": {"type": "integer"}, "fun": {"type": "boolean"}},
    "required": ["name", "year", "fun"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    return make_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("serve") / "tiny-run")


@pytest.fixture(scope="module")
def server(tiny_run):
    with serving(tiny_run, "--max-batch", "4") as url:
        yield url


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)


# --- the official openai client ------------------------------------------------------------------


def test_models_lists_the_run(client):
    assert [m.id for m in client.models.list().data] == ["tiny-run"]


def test_completion_under_the_runs_own_constraint_is_a_well_formed_mr(client):
    response = client.completions.create(model="tiny-run", prompt=PROMPT, max_tokens=48)
    text = response.choices[0].text
    assert parse_mr(text.strip()).valid, text
    assert response.model_extra["constraint"].startswith("viggo (spans of the sentence")
    assert response.usage.completion_tokens >= 1 and response.choices[0].finish_reason in ("stop", "length")


def test_grammar_none_is_free_text_and_stop_strings_cut(client):
    free = client.completions.create(model="tiny-run", prompt=PROMPT, max_tokens=12, extra_body={"grammar": "none"})
    assert free.model_extra["constraint"] == "none"
    assert free.usage.completion_tokens == 12 and free.choices[0].finish_reason == "length"  # random weights: no EOS
    cut_at = free.choices[0].text[3:6]
    stopped = client.completions.create(model="tiny-run", prompt=PROMPT, max_tokens=12, stop=[cut_at], extra_body={"grammar": "none"})
    assert stopped.choices[0].finish_reason == "stop"
    assert free.choices[0].text.startswith(stopped.choices[0].text) and cut_at not in stopped.choices[0].text


def test_chat_uses_the_chat_template(client):
    response = client.chat.completions.create(
        model="tiny-run", messages=[{"role": "user", "content": SENTENCE}], max_tokens=40, extra_body={"grammar": "viggo"}
    )  # fmt: skip
    assert parse_mr(response.choices[0].message.content.strip()).valid
    assert response.choices[0].message.role == "assistant"
    # the tiny template wraps each message in <|im_start|>role ... <|im_end|>: more tokens than the text alone
    assert response.usage.prompt_tokens > len(SENTENCE.split())


def test_json_schema_response_format_always_parses_and_validates(client):
    import jsonschema

    for prompt in (PROMPT, "Text: Halo came out in 2001.\nJSON:\n"):
        response = client.chat.completions.create(
            model="tiny-run", messages=[{"role": "user", "content": prompt}], max_tokens=64,
            response_format={"type": "json_schema", "json_schema": {"name": "game", "schema": SCHEMA}},
        )  # fmt: skip
        value = json.loads(response.choices[0].message.content)
        jsonschema.validate(value, SCHEMA)
        assert response.model_extra["constraint"] == "json_schema (game)"
    obj = client.completions.create(model="tiny-run", prompt=PROMPT, max_tokens=40, extra_body={"response_format": {"type": "json_object"}})
    assert isinstance(json.loads(obj.choices[0].text), dict)


def test_sampling_is_seeded_and_greedy_is_deterministic(client):
    def complete(**kw):
        return client.completions.create(model="tiny-run", prompt=PROMPT, max_tokens=16, extra_body={"grammar": "none"}, **kw).choices[0].text

    assert complete() == complete()  # temperature defaults to 0: greedy
    a, b = complete(temperature=1.5, seed=7), complete(temperature=1.5, seed=7)
    assert a == b
    assert {complete(temperature=1.5, seed=s) for s in range(4)} != {complete()}


def test_parse_renders_the_runs_prompt(server):
    body = httpx.post(server + "/v1/parse", json={"text": SENTENCE}, timeout=60).json()
    assert parse_mr(body["output"]).valid and body["seconds"] > 0
    task = httpx.get(server + "/v1/task").json()
    assert task["task"] == "viggo" and task["parse"] and task["model"] == "tiny-run"
    page = httpx.get(server + "/")
    assert page.status_code == 200 and "/v1/parse" in page.text and "http" not in page.text.split("<script>")[1].split("fetch(")[0]


def test_concurrent_requests_share_decode_steps(client):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(client.completions.create, model="tiny-run", prompt=PROMPT, max_tokens=24) for _ in range(8)]
        responses = [f.result() for f in futures]
    assert all(parse_mr(r.choices[0].text.strip()).valid for r in responses)
    assert max(r.model_extra["timing"]["batch_rows"] for r in responses) > 1
    assert len({r.choices[0].text for r in responses}) == 1  # the same greedy answer, batched or not


# --- bad input never hurts the server -------------------------------------------------------------


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


@pytest.mark.parametrize(
    "body, status, says",
    [
        (b"{not json", 400, "not valid JSON"),
        ('{"model": "tiny-run", "prompt": "caf\xe9"}'.encode("latin-1"), 400, "not valid JSON"),
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "max_tokens": "many"}).encode(), 400, "max_tokens"),
        (json.dumps({"model": "tiny-run", "prompt": 42}).encode(), 400, "prompt"),
        (json.dumps({"prompt": PROMPT}).encode(), 400, "model"),
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "stream": True}).encode(), 400, "streaming is not supported"),
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "n": 2}).encode(), 400, "n=1"),
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "temperature": -1}).encode(), 400, "temperature"),
        (json.dumps({"model": "tiny-run", "prompt": ""}).encode(), 400, "empty"),
        (json.dumps({"model": "gpt-4", "prompt": PROMPT}).encode(), 404, "does not exist"),
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "max_tokens": 100000}).encode(), 400, "context of 512"),
        (json.dumps({"model": "tiny-run", "prompt": "word " * 5000}).encode(), 400, "context is 512"),
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nonsense"}}}}).encode(), 400, "not a valid JSON Schema"),  # fmt: skip
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "response_format": {"type": "json_schema"}}).encode(), 400, "schema"),
        (json.dumps({"model": "tiny-run", "prompt": PROMPT, "grammar": "regex"}).encode(), 400, "grammar"),
        (json.dumps({"model": "tiny-run", "prompt": [10**9]}).encode(), 400, "token ids"),
        (b"x" * (2 << 20), 413, "bytes"),
    ],
)
def test_bad_requests_get_a_clear_4xx(server, body, status, says):
    response = httpx.post(server + "/v1/completions", content=body, headers={"Content-Type": "application/json"}, timeout=60)
    assert says in _error(response, status)
    assert httpx.get(server + "/health").json()["status"] == "ok"


def test_bad_chat_messages_and_parse_bodies(server):
    chat = httpx.post(server + "/v1/chat/completions", json={"model": "tiny-run", "messages": []}, timeout=30)
    assert "messages" in _error(chat, 400)
    role = httpx.post(server + "/v1/chat/completions", json={"model": "tiny-run", "messages": [{"role": "robot", "content": "hi"}]}, timeout=30)
    assert "role" in _error(role, 400)
    assert "text" in _error(httpx.post(server + "/v1/parse", json={"text": ""}, timeout=30), 400)
    assert _error(httpx.get(server + "/v1/nothing"), 404)


def test_api_key_guards_the_v1_routes(tiny_run):
    from openai import AuthenticationError, OpenAI

    with serving(tiny_run, "--api-key", "sekret") as url:
        assert "API key" in _error(httpx.get(url + "/v1/models"), 401)
        assert "API key" in _error(httpx.get(url + "/v1/models", headers={"Authorization": "Bearer wrong"}), 401)
        assert httpx.get(url + "/health").status_code == 200 and httpx.get(url + "/").status_code == 200
        with pytest.raises(AuthenticationError):
            OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
        assert OpenAI(base_url=url + "/v1", api_key="sekret", max_retries=0).models.list().data[0].id == "tiny-run"


def test_a_full_queue_answers_429_with_retry_after_and_no_request_fails_otherwise(tiny_run):
    with serving(tiny_run, "--max-batch", "1", "--max-queue", "1") as url:
        body = {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 200, "grammar": "none"}
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            responses = list(pool.map(lambda _: httpx.post(url + "/v1/completions", json=body, timeout=120), range(8)))
        codes = sorted(r.status_code for r in responses)
        assert set(codes) == {200, 429}, codes
        busy = next(r for r in responses if r.status_code == 429)
        assert busy.headers["Retry-After"] == "1" and "busy" in busy.json()["error"]["message"]
        assert httpx.post(url + "/v1/completions", json=body, timeout=120).status_code == 200


def test_timeouts_and_disconnected_clients_free_their_rows(tiny_run):
    with serving(tiny_run, "--timeout", "0.3", "--max-batch", "2") as url:
        body = {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 400, "grammar": "none"}
        slow = httpx.post(url + "/v1/completions", json=body, timeout=60)
        assert "longer than 0.3 s" in _error(slow, 504)
    with serving(tiny_run, "--max-batch", "2") as url:
        httpx.post(url + "/v1/completions", json={**body, "max_tokens": 8}, timeout=60)  # compile first
        with pytest.raises(httpx.TimeoutException):
            httpx.post(url + "/v1/completions", json=body, timeout=0.5)
        deadline = time.time() + 60
        while (health := httpx.get(url + "/health").json())["cancelled"] < 1 and time.time() < deadline:
            time.sleep(0.2)
        assert health["cancelled"] == 1 and health["running"] == 0, health
        assert httpx.post(url + "/v1/completions", json={**body, "max_tokens": 8}, timeout=60).status_code == 200


def test_serve_refuses_a_missing_target_in_one_line(tmp_path):
    from conftest import run_cli

    result = run_cli("serve", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and "no such model or run directory" in result.stderr


# --- the decoder pieces it adds ------------------------------------------------------------------


@pytest.fixture(scope="module")
def decoder_parts(tiny_model_dir):
    from transformers import AutoTokenizer

    from eval.generation_model import GenerationModel

    return GenerationModel.load(str(tiny_model_dir)), AutoTokenizer.from_pretrained(tiny_model_dir)


def test_limits_stops_and_sampling_in_one_batch(decoder_parts):
    from eval.decoding import BatchDecoder
    from eval.sampling import Sampling

    model, tok = decoder_parts
    prompts = [tok(PROMPT)["input_ids"]] * 4
    decoder = BatchDecoder(model, [2], 0, max_new_tokens=20, slots=128)
    greedy = decoder.generate(prompts)
    limited = decoder.generate(prompts, limits=[20, 5, 20, 1], should_stop=lambda row, toks: row == 2 and len(toks) == 3)
    assert [len(g.tokens) for g in limited] == [20, 5, 3, 1]
    assert all(g.tokens == greedy[0].tokens[: len(g.tokens)] for g in limited)
    # temperature 0 rows stay greedy beside sampled ones; a tiny top_p leaves only the top token
    sampling = Sampling.of([0.0, 1.5, 1.5, 1.0], [1.0, 1.0, 1.0, 1e-6], [0, 1, 1, 2])
    sampled = decoder.generate(prompts, sampling=sampling)
    assert sampled[0].tokens == greedy[0].tokens and sampled[3].tokens == greedy[0].tokens
    assert sampled[1].tokens == sampled[2].tokens != greedy[0].tokens  # same seed, same draws
    with pytest.raises(ValueError, match="draft_tokens 0"):
        BatchDecoder(model, [2], 0, 8, 128, draft_tokens=2).generate(prompts, sampling=sampling)


def test_sampling_draws_follow_the_temperature_scaled_distribution():
    """The on-device draw against the distribution it samples from: 4000 rows of one logit vector."""
    import haliax as hax
    import jax.numpy as jnp

    from eval.sampling import sample_pick

    logits = np.log(np.array([0.5, 0.3, 0.15, 0.05] + [1e-9] * 28, np.float32))
    rows = 4000
    named = lambda a, *axes: hax.named(jnp.asarray(a), axes)  # noqa: E731
    picks = sample_pick(
        named(np.tile(logits, (rows, 1)), "batch", "vocab"), named(np.full((rows, 1), -1, np.int32), "batch", "mask_word"),
        named(np.ones(rows, np.float32), "batch"), named(np.full(rows, 0.85, np.float32), "batch"),
        named(np.arange(rows, dtype=np.int32), "batch"),
    ).array  # fmt: skip
    counts = np.bincount(np.asarray(picks), minlength=4)[:4] / rows
    # top_p 0.85 keeps {0, 1, 2} (0.5 + 0.3 < 0.85): renormalised 0.526 / 0.316 / 0.158, never token 3
    assert np.allclose(counts, [0.526, 0.316, 0.158, 0.0], atol=0.03), counts


def test_each_row_keeps_its_own_constraint(decoder_parts, tiny_run):
    from eval.constrained import RowConstraints
    from eval.decoding import BatchDecoder
    from eval.serve.served_model import ConstraintSpec

    model, tok = decoder_parts
    from eval.serve.served_model import ServedModel

    served = ServedModel(str(tiny_run))
    rows = [
        (served.constraint(ConstraintSpec("task")), PROMPT),
        (served.constraint(ConstraintSpec("json_schema", SCHEMA, "game")), PROMPT),
        (None, PROMPT),
        (served.constraint(ConstraintSpec("json_object")), PROMPT),
    ]
    results = BatchDecoder(model, [2], 0, 64, 160).generate([tok(PROMPT)["input_ids"]] * 4, RowConstraints(rows))
    texts = [tok.decode(r.tokens, skip_special_tokens=True) for r in results]
    assert parse_mr(texts[0].strip()).valid
    assert set(json.loads(texts[1])) == {"name", "year", "fun"}
    assert isinstance(json.loads(texts[3]), dict)
    assert not parse_mr(texts[2].strip()).valid  # random weights, unconstrained
