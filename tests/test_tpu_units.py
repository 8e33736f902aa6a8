"""Pure parts of infra/: validation, the tpu: section, gcloud argv builders, remote quoting, secrets."""

from __future__ import annotations

import os
import re
import stat
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import ASSETS
from infra import gcloud, remote
from infra.jobs import JobSpec, parse_job
from infra.ops import check_job
from infra.secrets import Secrets, private_dir, write_env_file
from infra.settings import load_settings, merge_settings, read_tpu_section
from infra.target import TpuTarget, parse_accelerator
from parsetune.errors import UserError


@pytest.mark.parametrize(
    "accel, hosts", [("v2-8", 1), ("v3-8", 1), ("v3-32", 4), ("v4-8", 1), ("v4-32", 4), ("v5p-16", 2),
                     ("v5litepod-8", 1), ("v5litepod-16", 4), ("v6e-4", 1), ("v6e-256", 64)],
)  # fmt: skip
def test_accelerator_hosts(accel, hosts):
    assert parse_accelerator(accel).hosts == hosts


@pytest.mark.parametrize("bad", ["v3-7", "v5litepod-2", "v4", "V4-8", "v7-8", "v4-8;ls", ""])
def test_bad_accelerators(bad):
    with pytest.raises(UserError, match="unknown accelerator type"):
        parse_accelerator(bad)


@pytest.mark.parametrize("name", ["a", "viggo-lora-1", "a" * 63])
def test_good_names(name):
    TpuTarget(name=name, zone="us-central2-b")


@pytest.mark.parametrize("name", ["", "1abc", "abc-", "ABC", "a_b", "a b", "a;b", "a" * 64, "$(x)"])
def test_bad_names(name):
    with pytest.raises(UserError, match="invalid TPU name"):
        TpuTarget(name=name, zone="us-central2-b")


@pytest.mark.parametrize("zone", ["us-central2", "us-central2-b;x", "US-central2-b", "uscentral2-b", "us-central-b"])
def test_bad_zones(zone):
    with pytest.raises(UserError, match="invalid zone"):
        TpuTarget(name="a", zone=zone)


def test_default_runtime_per_generation():
    t = lambda a: TpuTarget(name="a", zone="us-west4-a", accelerator_type=a).runtime  # noqa: E731
    assert t("v3-8") == "tpu-ubuntu2204-base" and t("v5litepod-8") == "v2-alpha-tpuv5-lite" and t("v6e-8") == "v2-alpha-tpuv6e"


def test_tpu_section_and_flag_override():
    section = read_tpu_section(str(ASSETS / "tpu_config.yaml"))
    assert section == {"name": "viggo-lora", "zone": "us-central2-b", "accelerator_type": "v4-32", "spot": True}
    s = merge_settings(section, {"zone": "europe-west4-a", "accelerator_type": None, "spot": False, "secrets": ["EXTRA"]})
    assert (s.target.name, s.target.zone, s.target.accelerator_type, s.target.spot) == ("viggo-lora", "europe-west4-a", "v4-32", False)
    assert s.secrets == ("WANDB_API_KEY", "HF_TOKEN", "EXTRA") and s.source == "local" and s.run_dir is None


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("tpu:\n  nmae: x\n", "unknown key tpu.nmae"),
        ("tpu:\n  spot: 'yes'\n", "tpu.spot must be true or false"),
        ("tpu:\n  zone: 5\n", "tpu.zone must be a string"),
        ("tpu: [1]\n", "'tpu:' must be a mapping"),
        ("tpu:\n  name: a\n  zone: us-central2-b\n  run_dir: /local/dir\n", "must be a gs://"),
        ("tpu:\n  name: a\n  zone: us-central2-b\n  secrets: ['A B']\n", "invalid secret name"),
        ("tpu: {name: a\n", "not valid YAML"),
    ],
)
def test_bad_tpu_sections(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(UserError, match=message):
        load_settings(str(path), {})


def test_config_without_tpu_section(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: x\n")
    assert load_settings(str(path), {"name": "a", "zone": "us-central2-b"}).target.name == "a"


def test_gcloud_builders():
    t = TpuTarget(name="n", zone="us-central2-b", accelerator_type="v4-32", project="my-proj", preemptible=True)
    scope = ["--zone=us-central2-b", "--project=my-proj"]
    assert gcloud.create(t) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "n", *scope,
                                "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--preemptible"]  # fmt: skip
    assert gcloud.ssh(t, "echo hi", 3) == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "n", *scope, "--worker=3", "--command=echo hi"]
    assert gcloud.scp(t, "/tmp/f", "parsetune/jobs/f") == ["gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/f", "n:parsetune/jobs/f", *scope, "--worker=all"]
    q = TpuTarget(name="n", zone="us-central2-b", queued=True)
    assert gcloud.delete(q) == ["gcloud", "compute", "tpus", "queued-resources", "delete", "n", "--zone=us-central2-b", "--force", "--quiet"]


def test_env_file_is_private_and_removed():
    secrets = Secrets.from_environ(("WANDB_API_KEY", "HF_TOKEN", "UNSET"), {"WANDB_API_KEY": "s3cr'et $(x)", "HF_TOKEN": ""})
    assert secrets.values == {"WANDB_API_KEY": "s3cr'et $(x)"}
    assert secrets.describe() == "WANDB_API_KEY=****"
    assert secrets.mask("key s3cr'et $(x) here") == "key **** here"
    with private_dir() as d:
        path = write_env_file(d, "j.env", secrets)
        assert stat.S_IMODE(os.stat(d).st_mode) == 0o700 and stat.S_IMODE(os.stat(path).st_mode) == 0o600
        out = subprocess.run(["bash", "-c", 'set -a; . "$1"; set +a; printf %s "$WANDB_API_KEY"', "x", path], capture_output=True, text=True)
        assert out.stdout == "s3cr'et $(x)"
    assert not os.path.exists(d)


hostile = st.text(alphabet=st.sampled_from(list("ab $;'\"`()\\|&<>*?~!#{}\n\t-=")), min_size=0, max_size=30)


@settings(max_examples=150, deadline=None)
@given(job_value=hostile, run_dir=hostile, args=st.lists(hostile, max_size=3))
def test_remote_values_stay_data(tmp_path_factory, job_value, run_dir, args):
    """Whatever the values, the launch script's positional args and variables are exactly them."""
    script = remote.assignments(JOB=job_value, RUN_DIR=run_dir) + remote.positional(["train", *args])
    script += 'printf "%s\\0" "$JOB" "$RUN_DIR" "$@"'
    d = tmp_path_factory.mktemp("sandbox")
    out = subprocess.run(["bash", "-c", script], cwd=d, capture_output=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.decode().split("\0")[:-1] == [job_value, run_dir, "train", *args]
    assert os.listdir(d) == []


# ---- issue 14: anchors, short secrets; jobs after `--` ----


@pytest.mark.parametrize("make", [
    lambda: TpuTarget(name="ok\n", zone="us-central2-b"),
    lambda: TpuTarget(name="ok", zone="us-central2-b\n"),
    lambda: TpuTarget(name="ok", zone="us-central2-b", accelerator_type="v4-8\n"),
    lambda: TpuTarget(name="ok", zone="us-central2-b", runtime_version="tpu-ubuntu2204-base\n"),
    lambda: TpuTarget(name="ok", zone="us-central2-b", project="my-proj\n"),
    lambda: check_job("job\n"),
    lambda: merge_settings({"name": "a", "zone": "us-central2-b", "secrets": ["TOKEN\n"]}, {}),
])  # fmt: skip
def test_trailing_newline_is_rejected(make):
    with pytest.raises(UserError):
        make()


def test_every_nonempty_secret_is_masked():
    s = Secrets({"A": "xyz", "B": "q", "C": "longer-xyz"})
    assert s.mask("a xyz b longer-xyz q") == "a **** b **** ****"
    assert Secrets.from_environ(("A", "B"), {"A": "", "B": "ab"}).mask("ab cd") == "**** cd"


def test_parse_job():
    assert parse_job([]) == JobSpec("train")
    assert parse_job(["--", "--trainer.num_train_steps", "5"]) == JobSpec("train", ("--trainer.num_train_steps", "5"))
    assert parse_job(["train", "--x", "1"]) == JobSpec("train", ("--x", "1"))
    run = parse_job(["--", "run", "--quick"])
    assert run.argv("pt", "c.yaml", "gs://b/r") == ["pt", "run", "c.yaml", "--run_dir", "gs://b/r", "--quick"]
    assert run.default_worker == "all" and run.needs_config
    export = parse_job(["export", "--checkpoint", "gs://b/r/checkpoints/step-3", "--out", "gs://b/r/hf-3"])
    assert export.argv("pt", "ignored", "ignored") == ["pt", "export", "--checkpoint", "gs://b/r/checkpoints/step-3", "--out", "gs://b/r/hf-3"]
    assert export.default_worker == "all" and not export.needs_config  # export joins the slice's pod
    score = parse_job(["eval", "score", "p.jsonl", "--out", "d"])
    assert score.argv("pt") == ["pt", "eval", "score", "p.jsonl", "--out", "d"] and score.default_worker == "0"
    assert parse_job(["eval", "generate", "--model", "gs://b/hf"]).default_worker == "all"
    assert parse_job(["prep", "viggo", "--out", "gs://b/d"]).default_worker == "0"


@pytest.mark.parametrize("words, message", [
    (["tpu", "status"], "unknown job 'tpu'"),
    (["trian"], "unknown job 'trian'"),
    (["train", "other.yaml"], "takes its config from tpu submit --config"),
    (["--run_dir", "gs://b/x"], "pass the run dir as `parsetune tpu submit --run-dir"),
    (["run", "--run_dir=x"], "pass the run dir"),
    (["eval"], "eval needs a subcommand"),
])  # fmt: skip
def test_bad_jobs(words, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_job(words)
