"""``parsetune tpu`` end to end against a recording gcloud stand-in (tests/fake_gcloud.py).

The fake runs every ``ssh --command`` with bash in a per-worker home under tmp, with stub ``python3``,
``uv`` and ``parsetune`` (tests/fake_worker/), so the background job, its logs, status and stop
really happen; only the cloud is missing.
"""

from __future__ import annotations

import glob
import json
import os
import shlex
import subprocess
from pathlib import Path

import pytest

from conftest import REPO
from parsetune.cli import main
from tpu_harness import (
    CONFIG, GS_RUN, HF_SECRET, ONE_HOST, SECRET, WHERE, create_and_setup, error_of, our_temp_dirs, split_commands,
    strip_commands, tpu, wait_for,
)

def test_full_lifecycle(fake, capfd, gcs_bucket):
    before = our_temp_dirs()
    scope = ["--zone=us-central2-b"]
    run_dir = f"gs://{gcs_bucket.name}/runs/viggo"

    assert tpu("create", *WHERE, "--accelerator-type", "v4-32", "--spot") == 0
    assert strip_commands(fake.argvs()) == [
        ["auth", "list", "--format=json"],
        ["compute", "tpus", "tpu-vm", "create", "viggo-lora", *scope, "--accelerator-type=v4-32", "--version=tpu-ubuntu2204-base", "--spot"],
        ["compute", "tpus", "tpu-vm", "describe", "viggo-lora", *scope, "--format=json"],
    ]
    fake.reset()

    assert tpu("setup", *WHERE) == 0
    argvs = strip_commands(fake.argvs())
    assert argvs[2:] == [
        ["compute", "tpus", "tpu-vm", "ssh", "viggo-lora", *scope, "--worker=all", "--command=…"],
        ["compute", "tpus", "tpu-vm", "scp", argvs[3][4], "viggo-lora:parsetune/dist/parsetune-src.tar.gz", *scope, "--worker=all"],
        ["compute", "tpus", "tpu-vm", "ssh", "viggo-lora", *scope, "--worker=all", "--command=…"],
    ]
    for w in range(4):  # 4 workers on a v4-32, each got the archive of this checkout and installed it
        home = fake.home(w)
        assert subprocess.run(["tar", "-tzf", home / "parsetune/dist/parsetune-src.tar.gz"], capture_output=True, text=True).stdout.count("parsetune/pyproject.toml") == 1
        log = (home / "commands.log").read_text()
        assert "uv venv --allow-existing --python 3.11 parsetune/venv" in log
        assert f"parsetune @ file://{home}/parsetune/dist/parsetune-src.tar.gz jax[tpu]==0.7.2" in log
        assert (home / "parsetune/steps/setup.rc").read_text().strip() == "0"
    fake.reset()

    assert tpu("submit", *WHERE, "--config", CONFIG, "--run-dir", run_dir, "--job", "j1", "--", "--trainer.num_train_steps", "5") == 0
    submit_calls = fake.argvs()
    argvs = strip_commands(submit_calls)
    config_local, env_local = argvs[3][4], argvs[4][4]
    assert [a[:4] for a in argvs] == [["auth", "list", "--format=json"]] + [["compute", "tpus", "tpu-vm", v] for v in ("describe", "ssh", "scp", "scp", "ssh")]
    assert argvs[2][4:] == ["viggo-lora", *scope, "--worker=all", "--command=…"]  # first: nothing running anywhere
    assert argvs[3][4:] == [config_local, "viggo-lora:parsetune/jobs/j1.yaml", *scope, "--worker=all"]
    assert argvs[4][4:] == [env_local, "viggo-lora:parsetune/jobs/j1.env", *scope, "--worker=all"]
    assert argvs[5][4:] == ["viggo-lora", *scope, "--worker=all", "--command=…"]
    launch = fake.commands()[-1]
    assert "set -- parsetune/venv/bin/parsetune train parsetune/jobs/j1.yaml --run_dir " in launch
    assert "setsid nohup bash" in launch and "PARSETUNE_RUN_DIR" not in launch
    # submit itself writes nothing to the run dir: the job writes RUN_DIR/config.yaml when it starts
    assert list(gcs_bucket.client.list_blobs(gcs_bucket.name)) == []

    # the job ran on all 4 workers, got the secrets from the env file, which is gone everywhere
    for w in range(4):
        home = fake.home(w)
        assert wait_for(lambda: (home / "parsetune/jobs/j1.rc").exists()), f"worker {w} job did not finish"
        assert (home / "parsetune/jobs/j1.rc").read_text().strip() == "0"
        assert (home / "seen_WANDB_API_KEY").read_text() == SECRET
        assert (home / "seen_HF_TOKEN").read_text() == HF_SECRET
        assert not (home / "parsetune/jobs/j1.env").exists()
        log = (home / "parsetune/jobs/j1.log").read_text()
        assert f"fake parsetune argv: train parsetune/jobs/j1.yaml --run_dir {run_dir} --trainer.num_train_steps 5" in log
        assert (home / "parsetune/jobs/j1.yaml").read_bytes() == Path(CONFIG).read_bytes()
        assert "train done" in log
        assert SECRET not in log and HF_SECRET not in log
        assert oct((home / "parsetune/jobs").stat().st_mode & 0o777) == "0o700"

    fake.reset()
    assert tpu("logs", *WHERE, "--lines", "3") == 0
    out = capfd.readouterr().out
    assert all(f"==> worker {w} <==" in out for w in range(4)) and out.count("train done") == 4
    assert sorted(a[5:7] for a in fake.argvs()[2:]) == [[*scope, f"--worker={w}"] for w in range(4)]  # run in parallel

    assert tpu("logs", *WHERE, "--worker", "2", "--lines", "3") == 0
    assert "train done" in capfd.readouterr().out
    assert fake.argvs()[-1][6] == "--worker=2"

    assert tpu("status", *WHERE) == 0
    out = capfd.readouterr().out
    assert "TPU viggo-lora: READY, v4-32, 4 workers" in out
    assert all(f"worker {w}: job j1 exited (exit status 0)" in out for w in range(4))

    assert tpu("stop", *WHERE) == 0
    assert "j1 is not running" in capfd.readouterr().out

    fake.reset()
    assert tpu("delete", *WHERE, "--yes") == 0
    assert fake.argvs() == [
        ["auth", "list", "--format=json"],
        ["compute", "tpus", "tpu-vm", "delete", "viggo-lora", *scope, "--quiet"],
    ]
    assert tpu("status", *WHERE) == 2
    assert "NOT_FOUND" in capfd.readouterr().err

    # secrets: nowhere in what we printed or what gcloud was given; local temp files gone
    printed = capfd.readouterr()
    everything = printed.out + printed.err + (fake.root / "calls.jsonl").read_text() + json.dumps(submit_calls)
    assert SECRET not in everything and HF_SECRET not in everything
    assert our_temp_dirs() == before
    assert not os.path.exists(env_local)


def test_stop_running_job_and_no_secret_in_ps(fake, capfd, monkeypatch):
    create_and_setup(fake, capfd, accel="v3-8")  # one worker
    monkeypatch.setenv("FAKE_TRAIN_SECONDS", "120")
    assert tpu("submit", *ONE_HOST, "--config", CONFIG, "--job", "long-run") == 0
    home = fake.home(0)
    pid = int((home / "parsetune/jobs/long-run.pid").read_text())
    assert wait_for(lambda: (home / "seen_WANDB_API_KEY").exists())
    # no process on this machine carries a secret on its command line
    for cmdline in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            data = Path(cmdline).read_bytes()
        except OSError:
            continue
        assert SECRET.encode() not in data and HF_SECRET.encode() not in data
    # without a run_dir the config was copied to the worker; the job got its path
    assert (home / "parsetune/jobs/long-run.yaml").read_bytes() == Path(CONFIG).read_bytes()
    assert "fake parsetune argv: train parsetune/jobs/long-run.yaml" in (home / "parsetune/jobs/long-run.log").read_text()
    capfd.readouterr()

    assert tpu("status", *WHERE) == 0
    assert "worker 0: job long-run running" in capfd.readouterr().out
    assert tpu("submit", *ONE_HOST, "--config", CONFIG, "--job", "second") == 2
    assert "job long-run is still running" in capfd.readouterr().err
    # the refused submit copied nothing: no env file, no config, the running job's files untouched
    assert not (home / "parsetune/jobs/second.env").exists() and not (home / "parsetune/jobs/second.yaml").exists()
    assert (home / "parsetune/jobs/current").read_text().strip() == "long-run"

    assert tpu("stop", *WHERE, "--grace", "5") == 0
    assert "stopped long-run" in capfd.readouterr().out
    assert wait_for(lambda: not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2])
    assert tpu("status", *WHERE) == 0
    assert "worker 0: job long-run stopped" in capfd.readouterr().out


def test_hostile_paths_and_args_are_data_not_code(fake, capfd, tmp_path, gcs_bucket):
    create_and_setup(fake, capfd, accel="v3-8")
    evil_dir = tmp_path / "x y;$(touch pwned)`touch pwned2`"
    evil_dir.mkdir()
    config = evil_dir / "c'q\".yaml"
    config.write_text(Path(CONFIG).read_text())
    run_dir = f"gs://{gcs_bucket.name}/r'un \"x\";$(touch pwned3)"
    args = ["--", "--note=$(touch pwned4); echo hi", "it's", '"', "a\nb"]
    assert tpu("submit", *WHERE, "--config", str(config), "--run-dir", run_dir, "--job", "evil", *args) == 0
    home = fake.home(0)
    assert wait_for(lambda: (home / "parsetune/jobs/evil.rc").exists())
    log = (home / "parsetune/jobs/evil.log").read_text()
    assert f"train parsetune/jobs/evil.yaml --run_dir {run_dir} --note=$(touch pwned4); echo hi it's \" a\nb" in log
    for command in fake.commands():  # every recorded remote script is valid shell
        assert subprocess.run(["bash", "-n", "-c", command]).returncode == 0
    # and running them (the fake did) created nothing
    assert not [p for p in glob.glob(str(tmp_path / "**" / "pwned*"), recursive=True)]
    assert not glob.glob(os.path.join(REPO, "pwned*")) and not glob.glob("/tmp/pwned*")


def test_dry_run_prints_commands_and_runs_nothing(fake, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no gcloud at all: a dry run must not need it
    code = tpu("submit", "--name", "n", "--zone", "us-central2-b", "--accelerator-type", "v4-32", "--config", CONFIG,
               *GS_RUN, "--job", "j", "--dry-run")  # fmt: skip
    out, err = capfd.readouterr()
    assert code == 0, err
    assert SECRET not in out + err and HF_SECRET not in out + err
    assert "WANDB_API_KEY=**** HF_TOKEN=****" in out
    assert not (fake.root / "calls.jsonl").exists()
    commands = [shlex.split(c) for c in split_commands(out)]
    ssh = [c for c in commands if c[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert len(ssh) == 2 and all("--worker=all" in c for c in ssh)
    launch = ssh[-1][-1]
    assert launch.startswith("--command=") and "set -- parsetune/venv/bin/parsetune train parsetune/jobs/j.yaml --run_dir gs://some-bucket/runs/x" in launch
    assert subprocess.run(["/bin/bash", "-n", "-c", launch.partition("=")[2]]).returncode == 0
    assert ["gcloud", "compute", "tpus", "tpu-vm", "scp"] in [c[:5] for c in commands]


def test_dry_run_setup_and_create(fake, capfd):
    assert tpu("setup", *WHERE, "--dry-run") == 0
    out = capfd.readouterr().out
    cmds = [shlex.split(c) for c in split_commands(out)]
    assert cmds[2][:4] == ["git", "-C", str(REPO), "archive"]
    assert tpu("create", *WHERE, "--accelerator-type", "v5litepod-16", "--queued", "--spot", "--project", "my-proj-1", "--dry-run") == 0
    cmds = [shlex.split(c) for c in split_commands(capfd.readouterr().out)]
    assert cmds[-1] == ["gcloud", "compute", "tpus", "queued-resources", "create", "viggo-lora", "--node-id=viggo-lora",
                        "--zone=us-central2-b", "--project=my-proj-1", "--accelerator-type=v5litepod-16",
                        "--runtime-version=v2-alpha-tpuv5-lite", "--spot"]  # fmt: skip
    assert not (fake.root / "calls.jsonl").exists()


# ---- errors: one line, exit status 2 ----


def test_gcloud_missing(fake, capfd, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # (this machine may have a real gcloud in /usr/bin)
    assert "gcloud not found on PATH" in error_of(capfd, "status", *WHERE)


def test_not_authenticated(fake, capfd, monkeypatch):
    monkeypatch.setenv("FAKE_GCLOUD_NO_AUTH", "1")
    assert "gcloud is not authenticated: run `gcloud auth login`" in error_of(capfd, "create", *WHERE, "--accelerator-type", "v3-8")
    assert [a[:2] for a in fake.argvs()] == [["auth", "list"]]


def test_unknown_zone_passes_gcloud_error_through(fake, capfd):
    err = error_of(capfd, "create", "--name", "a", "--zone", "us-moon1-a", "--accelerator-type", "v3-8")
    assert err == ("parsetune tpu: error: create a failed: (gcloud.compute.tpus.tpu-vm.create) NOT_FOUND: "
                   "Location us-moon1-a is not found or access is unauthorized.")  # fmt: skip


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--name", "Bad_Name", "--zone", "us-central2-b"], "invalid TPU name 'Bad_Name'"),
        (["--name", "ok", "--zone", "us-central2"], "invalid zone 'us-central2'"),
        (["--name", "ok", "--zone", "us-central2-b", "--accelerator-type", "v4-6"], "unknown accelerator type 'v4-6'"),
        (["--name", "ok", "--zone", "us-central2-b", "--accelerator-type", "tpu9-8"], "unknown accelerator type 'tpu9-8'"),
        (["--name", "ok", "--zone", "us-central2-b", "--spot", "--preemptible"], "not both"),
        (["--zone", "us-central2-b"], "no TPU name: pass --name or set tpu.name"),
    ],
)
def test_validation_before_any_gcloud_call(fake, capfd, argv, message):
    assert message in error_of(capfd, "create", *argv)
    assert fake.calls() == []


def test_not_ready(fake, capfd, monkeypatch):
    assert tpu("create", *WHERE, "--accelerator-type", "v3-8") == 0
    monkeypatch.setenv("FAKE_GCLOUD_STATE", "CREATING")
    assert "TPU viggo-lora in us-central2-b is CREATING, not READY" in error_of(capfd, "submit", *WHERE, "--config", CONFIG, *GS_RUN)
    assert tpu("status", *WHERE) == 0
    assert "TPU viggo-lora: CREATING" in capfd.readouterr().out


def test_setup_failure_names_the_worker(fake, capfd, monkeypatch):
    assert tpu("create", *WHERE, "--accelerator-type", "v4-32") == 0
    monkeypatch.setenv("FAKE_SETUP_FAIL_WORKER", "1")
    err = error_of(capfd, "setup", *WHERE, "--source", "parsetune==0.1.0")
    assert err == "parsetune tpu: error: setup failed on worker 1, exit status 1: error: No solution found when resolving dependencies: libtpu"
    assert "uv pip install --python parsetune/venv/bin/python parsetune==0.1.0 jax[tpu]==0.7.2" in (fake.home(0) / "commands.log").read_text()


def test_submit_to_worker_without_parsetune(fake, capfd):
    create_and_setup(fake, capfd)
    (fake.home(2) / "parsetune/venv/bin/parsetune").unlink()
    err = error_of(capfd, "submit", *WHERE, "--config", CONFIG, *GS_RUN, "--job", "j")
    assert "checking the workers failed on worker 2, exit status 3: parsetune is not installed on" in err
    assert not (fake.home(0) / "parsetune/jobs/j.pid").exists()  # nothing started anywhere


def test_job_failure_on_one_worker(fake, capfd, monkeypatch):
    create_and_setup(fake, capfd)
    monkeypatch.setenv("FAKE_TRAIN_FAIL_WORKER", "3")
    assert tpu("submit", *WHERE, "--config", CONFIG, *GS_RUN, "--job", "j") == 0
    assert wait_for(lambda: all((fake.home(w) / "parsetune/jobs/j.rc").exists() for w in range(4)))
    capfd.readouterr()
    err = error_of(capfd, "status", *WHERE)
    assert err == "parsetune tpu: error: job failed on worker 3: exited (exit status 1): [parsetune tpu] " + err.split("[parsetune tpu] ", 1)[1]
    assert "exit status 1" in err


def test_unreachable_worker_in_status(fake, capfd, monkeypatch):
    create_and_setup(fake, capfd)
    monkeypatch.setenv("FAKE_GCLOUD_FAIL_WORKER", "1")
    err = error_of(capfd, "status", *WHERE)
    assert "job failed on worker 1: unreachable" in err


def test_yaml_section_supplies_target_flags_override(fake, capfd):
    assert tpu("create", "--config", CONFIG, "--accelerator-type", "v4-8", "--no-spot") == 0
    create = fake.argvs()[1]
    assert create == ["compute", "tpus", "tpu-vm", "create", "viggo-lora", "--zone=us-central2-b",
                      "--accelerator-type=v4-8", "--version=tpu-ubuntu2204-base"]  # fmt: skip


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["tpu", "submit", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--dry-run" in out and "--run-dir" in out and "examples" in out
    assert "--max-restarts" in out and "-- export --checkpoint" in out and "-- eval generate" in out
