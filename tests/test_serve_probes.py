"""Hostile probes of ``parsetune serve`` (issue 27, items 6-10), each against the real server (a
uvicorn subprocess on a tiny run dir) so none of them comes back: bodies over the limit however
they are sent, numbers out of range, the API key's sources and forms, the Host allow-list, read
deadlines on half-sent requests, text that is not text, endless ``$ref`` s, constraint compilation
under ``--timeout``, and misspelt fields."""

from __future__ import annotations

import json
import select
import socket
import time
from urllib.parse import urlsplit

import httpx
import pytest

from serve_helpers import make_tiny_run, serving

from parsetune.errors import UserError

PROMPT = "Sentence: BioShock is a great first person shooter from 2007.\nMeaning representation:\n"
KEY = "ключ-секрет-🔑"  # a non-ASCII key: compared over its UTF-8 bytes
HOST = "parser.example"


@pytest.fixture(scope="module")
def tiny_run(tiny_model_dir, tmp_path_factory):
    return make_tiny_run(tiny_model_dir, tmp_path_factory.mktemp("probes") / "tiny-run")


@pytest.fixture(scope="module")
def server(tiny_run):
    with serving(tiny_run, "--max-batch", "4") as url:
        yield url


@pytest.fixture(scope="module")
def guarded(tiny_run):
    """A server with its key in the environment (not on argv), a public name, short deadlines."""
    mp = pytest.MonkeyPatch()
    mp.setenv("PARSETUNE_API_KEY", KEY)
    try:
        with serving(tiny_run, "--allowed-host", HOST, "--read-timeout", "1.5", "--timeout", "1") as url:
            mp.undo()  # the server has read it; servers started later must not
            yield url
    finally:
        mp.undo()


def _post(url: str, body: dict | bytes, path: str = "/v1/completions", **kw) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(url + path, content=content, headers={"Content-Type": "application/json", **kw.pop("headers", {})}, timeout=60, **kw)  # fmt: skip


def _error(response: httpx.Response, status: int) -> str:
    assert response.status_code == status, response.text
    return response.json()["error"]["message"]


def _address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname, parts.port


# --- 6: the body limit counts the bytes read, chunked too ---------------------------------------


def test_a_chunked_upload_over_the_limit_is_cut_off_with_413(server):
    head = f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"  # fmt: skip
    chunk = b"10000\r\n" + b"a" * 0x10000 + b"\r\n"  # 64 KiB a chunk; 50 MiB in all if the server kept reading
    sent, answer = 0, b""
    with socket.create_connection(_address(server), timeout=30) as sock:
        sock.sendall(head.encode())
        try:
            while sent < 50 << 20:
                if select.select([sock], [], [], 0)[0]:
                    break  # the server answered: stop sending
                sock.sendall(chunk)
                sent += 0x10000
            while (data := sock.recv(65536)) and b"}}" not in answer:
                answer += data
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"over 1048576 bytes" in answer
    assert sent < 16 << 20, f"the server read {sent >> 20} MiB before refusing"
    assert httpx.get(server + "/health").json()["status"] == "ok"


# --- 7: every number is bounded: a 400 naming the field, never a 500 for the batch ---------------


@pytest.mark.parametrize(
    "extra, field",
    [
        ({"seed": 2**63, "temperature": 1.0}, "seed"),
        ({"seed": 2**64 + 5, "temperature": 1.0}, "seed"),
        ({"seed": -(2**63) - 1, "temperature": 1.0}, "seed"),
        ({"max_tokens": 2**40}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"temperature": 1e400}, "temperature"),  # json reads 1e400 as inf
        ({"top_p": 0}, "top_p"),
        ({"n": 10**30}, "n"),
        ({"frequency_penalty": 1e9}, "frequency_penalty"),
        ({"presence_penalty": -3}, "presence_penalty"),
        ({"best_of": 2**70}, "best_of"),
    ],
)
def test_out_of_range_numbers_get_400_naming_the_field(server, extra, field):
    response = _post(server, {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 4, "grammar": "none", **extra})
    assert _error(response, 400).startswith(field), response.text


def test_the_int64_seed_range_works_and_bad_seeds_never_reach_a_batch(server):
    def complete(seed):
        return _post(server, {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 4, "grammar": "none", "temperature": 1.0, "seed": seed})  # fmt: skip

    assert complete(2**63 - 1).status_code == 200 and complete(-(2**63)).status_code == 200
    parse = _post(server, {"text": "Halo came out in 2001.", "max_tokens": 2**40}, path="/v1/parse")
    assert _error(parse, 400).startswith("max_tokens")
    chat = _post(server, {"model": "tiny-run", "messages": [{"role": "user", "content": "hi"}], "max_completion_tokens": 2**40}, path="/v1/chat/completions")  # fmt: skip
    assert _error(chat, 400).startswith("max_completion_tokens")


# --- 8: the API key: never empty, from a file or the environment, any-case Bearer, UTF-8 --------


def test_an_empty_api_key_is_an_error_not_an_open_server(tmp_path):
    from conftest import run_cli

    target = str(tmp_path / "nowhere")  # the key is checked before the model is looked for
    empty = run_cli("serve", target, "--api-key", "")
    assert empty.returncode == 2 and "API key is empty" in empty.stderr and "Traceback" not in empty.stderr
    (tmp_path / "key").write_text("\n")
    from_file = run_cli("serve", target, "--api-key-file", str(tmp_path / "key"))
    assert from_file.returncode == 2 and "API key is empty" in from_file.stderr


def test_api_key_sources_and_their_precedence(tmp_path):
    from eval.serve.access import resolve_api_key

    key_file = tmp_path / "key"
    key_file.write_text(f"  {KEY}\n", encoding="utf-8")
    env = {"PARSETUNE_API_KEY": "from-env"}
    assert resolve_api_key("from-flag", None, env) == "from-flag"
    assert resolve_api_key(None, str(key_file), env) == KEY
    assert resolve_api_key(None, None, env) == "from-env"
    assert resolve_api_key(None, None, {}) is None
    for bad in ({"PARSETUNE_API_KEY": ""}, {"PARSETUNE_API_KEY": "a\nb"}):
        with pytest.raises(UserError, match="PARSETUNE_API_KEY"):
            resolve_api_key(None, None, bad)
    with pytest.raises(UserError, match="give one of them"):
        resolve_api_key("k", str(key_file), env)
    with pytest.raises(UserError, match="cannot read the key"):
        resolve_api_key(None, str(tmp_path / "absent"), env)


def test_the_key_from_the_environment_guards_v1_with_any_case_bearer_and_utf8(guarded):
    def models(authorization: bytes | None) -> int:
        headers = {"Authorization": authorization} if authorization is not None else {}
        return httpx.get(guarded + "/v1/models", headers=headers, timeout=30).status_code

    utf8 = KEY.encode("utf-8")
    assert models(None) == 401 and models(b"Bearer wrong") == 401 and models(b"Basic " + utf8) == 401
    assert models(b"Bearer " + utf8) == 200
    assert models(b"bearer " + utf8) == 200 and models(b"BEARER  " + utf8) == 200
    assert models(b"Bearer " + utf8[:-1]) == 401
    assert httpx.get(guarded + "/health").status_code == 200  # outside /v1/: no key needed


# --- 9: the Host allow-list and read deadlines ----------------------------------------------------


def test_only_loopback_host_names_reach_a_loopback_server(server):
    port = _address(server)[1]
    for host in ("localhost", f"localhost:{port}", "127.0.0.1", f"127.0.0.1:{port}", "[::1]", f"[::1]:{port}"):
        assert httpx.get(server + "/health", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", f"evil.example:{port}", "localhost.evil.example", "127.0.0.2", "0.0.0.0", HOST):
        for path in ("/health", "/", "/v1/models"):
            assert "not allowed" in _error(httpx.get(server + path, headers={"Host": host}), 400), (host, path)
    rebound = _post(server, {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 2}, headers={"Host": "evil.example"})
    assert "Host header" in _error(rebound, 400)


def test_allowed_host_names_are_accepted_besides_loopback(guarded):
    port = _address(guarded)[1]
    for host in (HOST, f"{HOST}:{port}", HOST.upper(), "localhost"):
        assert httpx.get(guarded + "/health", headers={"Host": host}).status_code == 200, host
    assert _error(httpx.get(guarded + "/health", headers={"Host": "other.example"}), 400)


def test_host_rules_when_bound_to_another_address():
    from eval.serve.access import host_allowed, is_loopback, normalise_allowed_hosts

    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    allowed = normalise_allowed_hosts(["Parser.Example"])
    assert host_allowed("parser.example:8000", False, allowed) and host_allowed("10.1.2.3:8000", False, allowed)
    assert host_allowed("[fe80::1]:8000", False, allowed) and not host_allowed("evil.example", False, allowed)
    assert not host_allowed("10.1.2.3", True, allowed) and not host_allowed(None, False, allowed)
    with pytest.raises(UserError, match="--allowed-host"):
        normalise_allowed_hosts(["http://parser.example:8000"])


@pytest.mark.parametrize(
    "half",
    [
        b"",  # connects and says nothing
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-",  # half the headers
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\"",  # half the body  # fmt: skip
    ],
)
def test_a_half_sent_request_is_dropped_after_the_read_timeout(guarded, half):
    started = time.perf_counter()
    with socket.create_connection(_address(guarded), timeout=20) as sock:
        sock.sendall(half)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            data = b""
        except TimeoutError:
            pytest.fail("the server still holds the half-sent request after 20 s")
    assert data == b"" and time.perf_counter() - started < 8, (data, time.perf_counter() - started)


# --- 10: text that is not text, endless $refs, compilation under --timeout, misspelt fields -------


@pytest.mark.parametrize(
    "path, raw, field",
    [
        ("/v1/completions", b'{"model": "tiny-run", "prompt": "caf\\ud800e"}', "prompt"),
        ("/v1/completions", b'{"model": "tiny-run", "prompt": "x", "stop": ["\\udfff"]}', "stop"),
        ("/v1/chat/completions", b'{"model": "tiny-run", "messages": [{"role": "user", "content": "\\ud83d"}]}', "messages.0.content"),  # fmt: skip
        ("/v1/parse", b'{"text": "Halo \\udc00"}', "text"),
        ("/v1/completions", b'{"model": "tiny-run", "prompt": "x", "response_format": {"type": "json_schema", "json_schema": {"schema": {"enum": ["\\ud800"]}}}}', "response_format"),  # fmt: skip
        ("/v1/completions", b'{"model": "tiny-run", "prompt": "x", "temperature": NaN}', "temperature"),
    ],
)
def test_strings_that_are_not_text_get_400(server, path, raw, field):
    message = _error(_post(server, raw, path=path), 400)
    assert message.startswith(field) and ("surrogate" in message or "not a JSON number" in message), message


SELF_REFERENCES = [
    {"$ref": "#"},
    {"$defs": {"loop": {"$ref": "#/$defs/loop"}}, "$ref": "#/$defs/loop"},
    {"type": "object", "properties": {"a": {"$ref": "#/properties/a"}}, "required": ["a"]},
    {"type": "object", "properties": {"child": {"$ref": "#"}}, "required": ["child"]},
]


@pytest.mark.parametrize("schema", SELF_REFERENCES)
def test_an_endless_ref_schema_gets_400_naming_it(server, schema):
    body = {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 16, "response_format": {"type": "json_schema", "json_schema": {"name": "loop", "schema": schema}}}  # fmt: skip
    message = _error(_post(server, body), 400)
    assert "$ref" in message and "response_format.json_schema.schema" in message


def test_a_recursive_schema_with_a_way_out_still_gives_valid_json(server):
    import jsonschema

    tree = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 8}, "child": {"$ref": "#"}}, "required": ["name"], "additionalProperties": False}  # fmt: skip
    body = {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 48, "response_format": {"type": "json_schema", "json_schema": {"schema": tree}}}  # fmt: skip
    response = _post(server, body)
    assert response.status_code == 200, response.text
    jsonschema.validate(json.loads(response.json()["choices"][0]["text"]), tree)


def test_the_timeout_covers_compiling_the_constraint(guarded):
    names = [f"p{i}" for i in range(3000)]
    slow = {"type": "object", "properties": {n: {"type": "string", "pattern": f"^[a-z]{{{i % 5 + 1},{i % 7 + 6}}}x$"} for i, n in enumerate(names)}, "required": names}  # fmt: skip
    body = {"model": "tiny-run", "prompt": PROMPT, "max_tokens": 4, "response_format": {"type": "json_schema", "json_schema": {"schema": slow}}}  # fmt: skip
    started = time.perf_counter()
    response = _post(guarded, body, headers={"Authorization": b"Bearer " + KEY.encode()})
    assert "longer than 1 s" in _error(response, 504)
    assert time.perf_counter() - started < 3.5  # compiling it alone takes several seconds


@pytest.mark.parametrize(
    "path, body, field",
    [
        ("/v1/completions", {"model": "tiny-run", "prompt": PROMPT, "gramar": "none"}, "gramar"),
        ("/v1/completions", {"model": "tiny-run", "prompt": PROMPT, "max_token": 4}, "max_token"),
        ("/v1/chat/completions", {"model": "tiny-run", "messages": [{"role": "user", "contnet": "hi"}]}, "messages.0.contnet"),  # fmt: skip
        ("/v1/completions", {"model": "tiny-run", "prompt": PROMPT, "response_format": {"type": "json_object", "schema": {}}}, "response_format.schema"),  # fmt: skip
        ("/v1/completions", {"model": "tiny-run", "prompt": PROMPT, "response_format": {"type": "json_schema", "json_schema": {"schemma": {}}}}, "schemma"),  # fmt: skip
        ("/v1/parse", {"txt": "Halo came out in 2001."}, "txt"),
    ],
)
def test_unknown_fields_get_400_naming_them(server, path, body, field):
    assert field in _error(_post(server, body, path=path), 400)


def test_openai_fields_that_change_nothing_are_still_accepted(server):
    from openai import OpenAI

    client = OpenAI(base_url=server + "/v1", api_key="unused", timeout=120, max_retries=0)
    chat = client.chat.completions.create(
        model="tiny-run", messages=[{"role": "user", "content": "hi", "name": "ann"}], max_completion_tokens=4,
        user="u-1", metadata={"k": "v"}, store=False, frequency_penalty=0, presence_penalty=0, logit_bias={},
        seed=3, logprobs=False, parallel_tool_calls=False, extra_body={"grammar": "none"},
    )  # fmt: skip
    assert chat.usage.completion_tokens == 4
    completion = client.completions.create(model="tiny-run", prompt=PROMPT, max_tokens=4, user="u-1", best_of=1, extra_body={"grammar": "none"})  # fmt: skip
    assert completion.usage.completion_tokens == 4
    assert "not supported" in _error(_post(server, {"model": "tiny-run", "prompt": PROMPT, "logit_bias": {"5": 10}}), 400)
