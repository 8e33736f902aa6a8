"""Probes of what may reach the network: a JSON Schema's remote ``$ref`` is refused in one line where
the schema is loaded (prep json, eval score, constrained decoding), before any work and without a
single request; a gs:// endpoint that accepts connections and never answers fails every storage call
within ``PARSETUNE_GCS_TIMEOUT``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conftest import ASSETS, REPO, run_cli
from eval.constrained import schema_grammar
from parsetune.errors import UserError
from parsetune.tasks.json_form import load_json_schema

EXAMPLE = REPO / "prep" / "data" / "json_example"
ROW = {"id": "a", "text": "Tetris came out in 1984.", "json": {"title": "Tetris", "year": 1984}}


@pytest.fixture
def schema_host():
    """An HTTP server on 127.0.0.1 that serves a valid sub-schema and counts the requests it gets."""
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            hits.append(self.path)
            body = json.dumps({"type": "string"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def schema_with_ref(ref: str) -> dict:
    return {
        "type": "object",
        "properties": {"title": {"$ref": ref}, "year": {"type": "integer"}},
        "required": ["title"],
        "$defs": {"title": {"type": "string"}},
    }


def write(path, value) -> str:
    path.write_text(json.dumps(value) if not isinstance(value, str) else value, encoding="utf-8")
    return str(path)


@pytest.mark.parametrize("kind", ["served", "unreachable", "relative"])
def test_prep_json_refuses_a_remote_ref_before_any_work(tmp_path, schema_host, kind):
    url, hits = schema_host
    ref = {"served": f"{url}/title.json", "unreachable": "http://127.0.0.1:9/title.json", "relative": "title.json"}[kind]
    rows = "".join(json.dumps({**ROW, "id": f"r{i}"}) + "\n" for i in range(5))
    train, validation = write(tmp_path / "train.jsonl", rows), write(tmp_path / "validation.jsonl", rows.replace('"r', '"v'))
    schema = write(tmp_path / "schema.json", schema_with_ref(ref))
    out = tmp_path / "out"
    result = run_cli("prep", "json", "--train", train, "--validation", validation, "--schema", schema, "--out", str(out))
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"parsetune prep: error: {schema}: remote $ref '{ref}' refused: only references inside the "
                             "schema (like '#/$defs/NAME') are allowed; nothing is fetched\n")  # fmt: skip
    assert hits == [] and not out.exists()


def test_prep_json_keeps_local_refs(tmp_path):
    rows = "".join(json.dumps({**ROW, "id": f"r{i}"}) + "\n" for i in range(3))
    train, validation = write(tmp_path / "train.jsonl", rows), write(tmp_path / "validation.jsonl", rows.replace('"r', '"v'))
    schema = write(tmp_path / "schema.json", schema_with_ref("#/$defs/title"))
    out = tmp_path / "out"
    result = run_cli("prep", "json", "--train", train, "--validation", validation, "--schema", schema, "--out", str(out))
    assert result.returncode == 0, result.stderr
    bad = write(tmp_path / "bad.jsonl", json.dumps({**ROW, "json": {"title": 7}}) + "\n")
    result = run_cli("prep", "json", "--train", bad, "--validation", validation, "--schema", schema, "--out", str(tmp_path / "o2"))
    assert result.returncode == 2 and "does not match the schema" in result.stderr  # the local ref is followed


def test_eval_score_refuses_a_remote_ref_and_keeps_local_ones(tmp_path, schema_host):
    url, hits = schema_host
    predictions = write(tmp_path / "p.jsonl", "".join(json.dumps(r) + "\n" for r in [
        {"id": 1, "input": "t", "reference": {"title": "A"}, "prediction": '{"title": "A"}'},
        {"id": 2, "input": "t", "reference": {"title": "B"}, "prediction": '{"title": 5}'},
    ]))  # fmt: skip
    remote = write(tmp_path / "remote.json", schema_with_ref(f"{url}/title.json"))
    result = run_cli("eval", "score", predictions, "--task", "json", "--schema", remote, "--out", str(tmp_path / "s1"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert f"{remote}: remote $ref '{url}/title.json' refused" in result.stderr
    assert hits == [] and not (tmp_path / "s1").exists()
    local = write(tmp_path / "local.json", schema_with_ref("#/$defs/title"))
    result = run_cli("eval", "score", predictions, "--task", "json", "--schema", local, "--out", str(tmp_path / "s2"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "s2" / "metrics.json").read_text())["schema_adherence_rate"] == 0.5


def test_every_schema_loader_refuses_remote_refs(tmp_path, schema_host):
    url, hits = schema_host
    nested = {"type": "object", "properties": {"a": {"type": "array", "items": {"$ref": f"{url}/x.json#/a"}}}}
    for schema in (schema_with_ref(f"{url}/t.json"), nested, {"$id": f"{url}/root.json", "properties": {"a": {"$ref": "other.json"}}}):
        with pytest.raises(UserError, match=r"remote \$ref .* refused"):
            load_json_schema(write(tmp_path / "s.json", schema))
        with pytest.raises(UserError, match=r"^response_format: remote \$ref .* refused"):
            schema_grammar(schema, "response_format")  # eval generate --constrain json-schema and the server
    assert hits == []
    embedded = {"$id": f"{url}/root.json", "properties": {"a": {"$ref": f"{url}/sub"}},
                "$defs": {"s": {"$id": f"{url}/sub", "type": "string"}}}  # fmt: skip
    assert load_json_schema(write(tmp_path / "e.json", embedded)) == embedded  # an embedded resource is local
    with pytest.raises(UserError, match=r"\$ref '#/\$defs/nothing' points to nothing in the schema"):
        load_json_schema(write(tmp_path / "m.json", schema_with_ref("#/$defs/nothing")))
    assert hits == []


# ------------------------------------------------------------------ a gs:// endpoint that never answers


@pytest.fixture
def silent_endpoint():
    """A TCP server on 127.0.0.1 that accepts every connection and never sends a byte."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for conn in held:
        conn.close()
    server.close()


STORAGE_CALLS = textwrap.dedent(
    """
    import json, sys, time
    from parsetune import storage
    from parsetune.errors import UserError
    calls = {
        "read_bytes": lambda: storage.read_bytes("gs://b/x"),
        "exists": lambda: storage.exists("gs://b/x"),
        "write_bytes_atomic": lambda: storage.write_bytes_atomic("gs://b/x", b"data"),
        "create_bytes": lambda: storage.create_bytes("gs://b/x", b"data"),
        "generation": lambda: storage.generation("gs://b/x"),
        "list_objects": lambda: storage.list_objects("gs://b/prefix/"),
        "copy_object": lambda: storage.copy_object("gs://b/x", "gs://b/y"),
        "delete": lambda: storage.delete("gs://b/x"),
    }
    for name, call in calls.items():
        start = time.monotonic()
        try:
            call()
            outcome = "returned"
        except UserError as err:
            outcome = str(err)
        print(json.dumps({"call": name, "seconds": time.monotonic() - start, "outcome": outcome}), flush=True)
    """
)


def test_every_storage_call_gives_up_on_a_silent_endpoint_within_the_timeout(silent_endpoint):
    env = {**os.environ, "STORAGE_EMULATOR_HOST": silent_endpoint, "PARSETUNE_GCS_TIMEOUT": "1.5", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", STORAGE_CALLS], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    outcomes = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(outcomes) == 8
    for o in outcomes:
        assert o["seconds"] < 6, o  # the budget, plus at most one more request timeout
        assert "GCS at " + silent_endpoint + " did not answer within 1.5 s" in o["outcome"], o
        assert "\n" not in o["outcome"]


def test_a_command_on_a_silent_gs_endpoint_fails_in_one_line_within_the_timeout(tmp_path, monkeypatch, silent_endpoint):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", silent_endpoint)
    monkeypatch.setenv("PARSETUNE_GCS_TIMEOUT", "2")
    validation = ASSETS / "viggo_validation_50.jsonl"
    train = tmp_path / "train.jsonl"
    shutil.copy(validation, train)
    start = time.monotonic()
    try:
        result = subprocess.run(
            [sys.executable, "-m", "parsetune", "prep", "viggo", "--train", str(train), "--validation", str(validation),
             "--out", "gs://bucket/x"],
            capture_output=True, text=True, cwd=REPO, env=os.environ.copy(), timeout=60,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        pytest.fail("prep on a silent gs:// endpoint still hangs after 60 s")
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "did not answer within 2 s" in result.stderr, result.stderr
    assert time.monotonic() - start < 30


@pytest.mark.parametrize("value", ["0", "-3", "soon", "inf"])
def test_a_bad_timeout_setting_is_one_line(monkeypatch, value):
    from parsetune import storage

    monkeypatch.setenv("PARSETUNE_GCS_TIMEOUT", value)
    with pytest.raises(UserError, match=f"^PARSETUNE_GCS_TIMEOUT='{value}': expected a positive number of seconds$"):
        storage.timeout_s()
