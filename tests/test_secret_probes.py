"""Probes of how ``parsetune tpu`` keeps secrets out of what it prints, against the gcloud stand-in:
a multi-line secret (a PEM key) and the escaped forms a job's log may print (JSON, Python repr) are
masked in ``logs`` (captured and streamed) and ``status``; a ``--secret NAME`` that is not set is
refused before any gcloud call."""

from __future__ import annotations

import json

import pytest

from infra.masking import MASK, Masker
from tpu_harness import CONFIG, ONE_HOST, WHERE, create_and_setup, error_of, tpu, wait_for

PEM = (
    "-----BEGIN PRIVATE KEY-----\n"
    "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n"
    "MzEfYyjiWA4R4/M2bS1GB4t7NXp98C3SC6dVMvDuictGeurT8jNbvJZHtCSuYEvu\n"
    'NMoSfm76oqFvAp8Gy0iz5sxjZmSnXyCdPEovGhLa0VzMaQ8s+CLOyS56YyCFGeJZ"q\n'
    "-----END PRIVATE KEY-----\n"
)


def leaked_forms(secret: str) -> list[str]:
    """What must never be printed: the secret, each of its lines, its JSON and repr forms."""
    lines = [line for line in secret.splitlines() if len(line) >= 6]
    return [secret, *lines, json.dumps(secret)[1:-1], repr(secret)[1:-1], json.dumps(json.dumps(secret))[1:-1]]


def test_a_multi_line_secret_and_its_escaped_forms_are_masked_in_logs_and_status(fake, capfd, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", PEM)
    create_and_setup(fake, capfd, accel="v3-8")
    monkeypatch.setenv("FAKE_LEAK_SECRET", "1")  # the job echoes WANDB_API_KEY: a PEM over several lines
    monkeypatch.setenv("FAKE_TRAIN_FAIL_WORKER", "0")
    assert tpu("submit", *ONE_HOST, "--config", CONFIG, "--job", "pem") == 0
    log = fake.home(0) / "parsetune/jobs/pem.log"
    assert wait_for(lambda: (fake.home(0) / "parsetune/jobs/pem.rc").exists())
    assert PEM.splitlines()[1] in log.read_text()  # the job did print it, line by line
    with log.open("a") as f:  # what a job logging its settings as JSON or as a Python dict would print
        f.write(json.dumps({"wandb": {"key": PEM}}) + "\n")
        f.write(repr({"key": PEM}) + "\n")
        f.write("settings: " + json.dumps(json.dumps({"key": PEM})) + "\n")
    capfd.readouterr()
    assert tpu("logs", *WHERE) == 0  # captured, printed whole
    assert tpu("logs", *WHERE, "--worker", "0") == 0  # streamed line by line
    assert tpu("status", *WHERE, "--lines", "50") == 2  # the job failed: its tail is printed, its last line is the error
    printed = capfd.readouterr()
    everything = printed.out + printed.err
    for form in leaked_forms(PEM):
        assert form not in everything, form
    assert '{"wandb": {"key": "****"}}' in printed.out and "{'key': '****'}" in printed.out
    assert printed.err.strip().splitlines()[-1] == 'parsetune tpu: error: job failed on worker 0: exited (exit status 1): settings: "{\\"key\\": \\"****\\"}"'


def test_escaped_forms_of_a_one_line_secret_are_masked(fake, capfd, monkeypatch):
    secret = 'tok"en\\with\tquotes'
    monkeypatch.setenv("WANDB_API_KEY", secret)
    create_and_setup(fake, capfd, accel="v3-8")
    assert tpu("submit", *ONE_HOST, "--config", CONFIG, "--job", "esc") == 0
    log = fake.home(0) / "parsetune/jobs/esc.log"
    assert wait_for(lambda: (fake.home(0) / "parsetune/jobs/esc.rc").exists())
    with log.open("a") as f:
        f.write(json.dumps({"key": secret}) + "\n" + repr([secret]) + "\n")
    capfd.readouterr()
    assert tpu("logs", *WHERE) == 0
    assert tpu("logs", *WHERE, "--worker", "0") == 0
    printed = capfd.readouterr()
    for form in leaked_forms(secret):
        assert form not in printed.out + printed.err, form
    assert printed.out.count('{"key": "****"}') == 2


def test_masker_forms():
    mask = Masker([PEM, "ab", ""])
    assert mask("x " + PEM + " y") == f"x {MASK} y"
    assert mask(PEM.replace("\n", "\r\n")) == MASK
    for line in PEM.splitlines():
        assert mask(f"> {line} <") == f"> {MASK} <"
    assert mask(json.dumps({"k": PEM})) == '{"k": "****"}'
    assert mask(json.dumps({"k": PEM}, ensure_ascii=False)) == '{"k": "****"}'
    assert mask(repr(PEM)) == f"'{MASK}'"
    assert mask("{\n}\nxyz") == "{\n}\nxyz"  # short lines and other text stay
    assert mask("cab") == f"c{MASK}"  # a short secret is still masked wherever it appears
    assert Masker([])("anything") == "anything"
    accented = "clé-secrète-9"
    assert Masker([accented])(json.dumps(accented)) == f'"{MASK}"'


def test_an_unset_named_secret_is_an_error_before_any_gcloud_call(fake, capfd, monkeypatch):
    monkeypatch.delenv("MY_TOKEN", raising=False)
    err = error_of(capfd, "submit", *ONE_HOST, "--config", CONFIG, "--secret", "MY_TOKEN")
    assert err == ("parsetune tpu: error: secret MY_TOKEN (--secret or tpu.secrets) is not set or empty in this "
                   "environment: export MY_TOKEN=... first, or drop it")  # fmt: skip
    monkeypatch.setenv("MY_TOKEN", "")
    assert "secret MY_TOKEN" in error_of(capfd, "submit", *ONE_HOST, "--config", CONFIG, "--secret", "MY_TOKEN", "--dry-run")
    assert fake.calls() == []
    monkeypatch.setenv("MY_TOKEN", "tok-123456")
    assert tpu("submit", *ONE_HOST, "--config", CONFIG, "--secret", "MY_TOKEN", "--dry-run") == 0
    out = capfd.readouterr().out
    assert "MY_TOKEN=****" in out and "tok-123456" not in out


@pytest.mark.parametrize("unset", ["WANDB_API_KEY", "HF_TOKEN"])
def test_the_default_secrets_stay_optional(fake, capfd, monkeypatch, unset):
    monkeypatch.delenv(unset)
    assert tpu("submit", *ONE_HOST, "--config", CONFIG, "--dry-run") == 0
