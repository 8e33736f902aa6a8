"""gcloud command lines as argv lists: pure functions, no I/O, easy to assert.

Every value here has been validated (:mod:`infra.target`) and goes to gcloud as one argv element,
never through a local shell. What runs on the workers (``--command``) is built by :mod:`infra.remote`.
"""

from __future__ import annotations

from infra.target import TpuTarget

GCLOUD = "gcloud"


def _scope(target: TpuTarget) -> list[str]:
    flags = [f"--zone={target.zone}"]
    if target.project:
        flags.append(f"--project={target.project}")
    return flags


def tpu_vm(verb: str, target: TpuTarget, *flags: str) -> list[str]:
    return [GCLOUD, "compute", "tpus", "tpu-vm", verb, target.name, *_scope(target), *flags]


def auth_list() -> list[str]:
    return [GCLOUD, "auth", "list", "--format=json"]


def create(target: TpuTarget) -> list[str]:
    if target.queued:
        argv = [GCLOUD, "compute", "tpus", "queued-resources", "create", target.name, f"--node-id={target.name}"]
        argv += [*_scope(target), f"--accelerator-type={target.accelerator_type}", f"--runtime-version={target.runtime}"]
        return argv + (["--spot"] if target.spot else [])
    argv = tpu_vm("create", target, f"--accelerator-type={target.accelerator_type}", f"--version={target.runtime}")
    if target.spot:
        argv.append("--spot")
    if target.preemptible:
        argv.append("--preemptible")
    return argv


def describe(target: TpuTarget) -> list[str]:
    return tpu_vm("describe", target, "--format=json")


def describe_queued(target: TpuTarget) -> list[str]:
    return [GCLOUD, "compute", "tpus", "queued-resources", "describe", target.name, *_scope(target), "--format=json"]


def delete(target: TpuTarget) -> list[str]:
    if target.queued:  # --force also deletes the TPU VM the queued resource created
        return [GCLOUD, "compute", "tpus", "queued-resources", "delete", target.name, *_scope(target), "--force", "--quiet"]
    return tpu_vm("delete", target, "--quiet")


def ssh(target: TpuTarget, command: str, worker: int | str = "all") -> list[str]:
    """Run ``command`` (a complete, already-quoted shell script) on one worker or on all of them."""
    return tpu_vm("ssh", target, f"--worker={worker}", f"--command={command}")


def scp(target: TpuTarget, local_path: str, remote_path: str, worker: int | str = "all") -> list[str]:
    """Copy a local file to ``remote_path`` (relative to the worker's home) on one or all workers.

    Both paths are ours (temp files with fixed names, validated job names): scp gives a remote path
    to the remote shell, and ``:`` in a local path would make gcloud read it as remote.
    """
    return [
        GCLOUD, "compute", "tpus", "tpu-vm", "scp", local_path, f"{target.name}:{remote_path}",
        *_scope(target), f"--worker={worker}",
    ]  # fmt: skip
