"""A recording stand-in for ``gcloud`` (the tests put a ``gcloud`` shim running this first on PATH).

Every call appends ``{"argv": [...], "stdin": "..."}`` to ``$FAKE_GCLOUD_DIR/calls.jsonl``. It answers
like gcloud for ``auth list``, ``config get-value``, ``compute tpus tpu-vm create/describe/list/delete/
scp/ssh`` and ``queued-resources``. TPUs live in ``tpus.json``; worker ``i``'s home is
``$FAKE_GCLOUD_DIR/<name>/worker-i``. ``scp`` copies there (keeping the mode, failing when the remote
directory is missing, like scp); ``ssh`` runs ``--command`` with ``bash -c`` in that home with a
clean environment (HOME, PATH with ``$FAKE_GCLOUD_PATH`` first, FAKE_* variables, FAKE_WORKER=i).

Switches: FAKE_GCLOUD_NO_AUTH=1 (no active account), FAKE_GCLOUD_STATE=CREATING (describe's state),
FAKE_GCLOUD_FAIL_WORKER=i (ssh/scp to worker i fails as unreachable), FAKE_GCLOUD_NO_EXEC=1 (ssh
only records).

The pod in a box: each worker's ``ssh`` gets what a TPU VM's JAX would find by itself, set by hand:
``PARSETUNE_COORDINATOR_ADDRESS=127.0.0.1:PORT`` (one free port per TPU, chosen at create),
``PARSETUNE_NUM_PROCESSES`` (the TPU's hosts), ``PARSETUNE_PROCESS_ID`` (the worker index),
``XLA_FLAGS=--xla_force_host_platform_device_count=K`` (``FAKE_GCLOUD_DEVICES_PER_WORKER``, default 2)
and ``JAX_PLATFORMS=cpu``; the GCS emulator settings (``STORAGE_EMULATOR_HOST``,
``TENSORSTORE_GCS_HTTP_URL``, ``GOOGLE_AUTH_TOKEN_FOR_TESTING``) pass through. With
``FAKE_GCLOUD_REAL_PARSETUNE=1`` setup's fake uv installs a ``parsetune`` that runs the real one
(``$FAKE_PYTHON -m parsetune`` with ``$FAKE_REPO`` on PYTHONPATH) instead of the stand-in.

Spot VMs: ``FAKE_GCLOUD_PREEMPT_AFTER`` makes the next created TPUs be reclaimed once (or
``FAKE_GCLOUD_PREEMPT_TIMES`` times in all): a watcher started at create marks the TPU PREEMPTED and
kills its workers' jobs (process groups) once the condition holds: a number (seconds after the first
job started on the TPU), or ``gs://BUCKET/PATTERN`` (an object matching the fnmatch pattern exists
on the emulator, e.g. ``gs://b/run/checkpoints/*/metadata.json``); ``FAKE_GCLOUD_PREEMPT_ACTION=vanish``
makes the TPU disappear (NOT_FOUND) instead. A PREEMPTED TPU refuses ssh/scp;
``delete`` kills its jobs and wipes its workers' disks, as deleting a VM does.
"""

from __future__ import annotations

import fnmatch
import json
import os
import signal
import socket
import time
import select
import shutil
import subprocess
import sys
from glob import glob

ROOT = os.environ["FAKE_GCLOUD_DIR"]
ZONES = {"us-central1-a", "us-central1-b", "us-central2-b", "europe-west4-a", "us-west4-a", "us-east5-a", "us-east1-d"}


def record(argv: list[str]) -> None:
    stdin = ""
    if not sys.stdin.isatty() and select.select([sys.stdin], [], [], 0.05)[0]:
        stdin = sys.stdin.read()
    with open(os.path.join(ROOT, "calls.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"argv": argv, "stdin": stdin}) + "\n")


def fail(command: str, message: str, code: int = 1) -> None:
    print(f"ERROR: (gcloud.{command}) {message}", file=sys.stderr)
    sys.exit(code)


def flags(argv: list[str]) -> tuple[list[str], dict[str, str]]:
    pos, opts = [], {}
    for a in argv:
        if a.startswith("--"):
            key, _, value = a[2:].partition("=")
            opts[key] = value
        else:
            pos.append(a)
    return pos, opts


def load() -> dict:
    path = os.path.join(ROOT, "tpus.json")
    return json.load(open(path)) if os.path.exists(path) else {}


def save(tpus: dict) -> None:
    tmp = os.path.join(ROOT, f"tpus.json.{os.getpid()}")
    with open(tmp, "w") as f:
        json.dump(tpus, f)
    os.replace(tmp, os.path.join(ROOT, "tpus.json"))  # the preempter reads it concurrently


def hosts(accel: str) -> int:
    family, n = accel.rsplit("-", 1)
    n = int(n)
    if family in ("v5litepod", "v6e"):
        return 1 if n <= 8 else n // 4
    return max(1, n // 8)


def node_json(name: str, tpu: dict) -> dict:
    n = hosts(tpu["acceleratorType"])
    return {
        "name": f"projects/test/locations/{tpu['zone']}/nodes/{name}",
        "acceleratorType": tpu["acceleratorType"],
        "state": os.environ.get("FAKE_GCLOUD_STATE") or tpu.get("state", "READY"),
        "health": "HEALTHY",
        "runtimeVersion": tpu["runtime"],
        "networkEndpoints": [{"ipAddress": f"10.0.0.{i + 2}", "port": 8470} for i in range(n)],
    }


def get(name: str, zone: str, verb: str) -> dict:
    tpu = load().get(name)
    if tpu is None or tpu["zone"] != zone:
        fail(f"compute.tpus.tpu-vm.{verb}", f"NOT_FOUND: projects/test/locations/{zone}/nodes/{name} not found")
    return tpu


def workers_of(name: str, tpu: dict, spec: str) -> list[int]:
    n = hosts(tpu["acceleratorType"])
    if spec == "all":
        return list(range(n))
    if not spec.isdigit() or int(spec) >= n:
        fail("compute.tpus.tpu-vm.ssh", f"Invalid worker [{spec}]: the TPU has workers 0-{n - 1}")
    return [int(spec)]


def home(name: str, worker: int) -> str:
    path = os.path.join(ROOT, name, f"worker-{worker}")
    os.makedirs(path, exist_ok=True)
    return path


def unreachable(worker: int) -> bool:
    return os.environ.get("FAKE_GCLOUD_FAIL_WORKER") == str(worker)


PASS_THROUGH = ("STORAGE_EMULATOR_HOST", "TENSORSTORE_GCS_HTTP_URL", "GOOGLE_AUTH_TOKEN_FOR_TESTING")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pod_env(tpu: dict, worker: int) -> dict[str, str]:
    """What JAX on a real TPU VM detects by itself (coordinator, process count and index), set by hand."""
    k = os.environ.get("FAKE_GCLOUD_DEVICES_PER_WORKER", "2")
    return {
        "PARSETUNE_COORDINATOR_ADDRESS": f"127.0.0.1:{tpu['port']}",
        "PARSETUNE_NUM_PROCESSES": str(hosts(tpu["acceleratorType"])),
        "PARSETUNE_PROCESS_ID": str(worker),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={k}",
        "JAX_PLATFORMS": "cpu",
    }


def reachable_or_fail(name: str, tpu: dict, verb: str) -> None:
    state = tpu.get("state", "READY")
    if state != "READY":
        print(f"ssh: connect to host 10.0.0.2 port 22: Connection refused (TPU {name} is {state})", file=sys.stderr)
        fail(f"compute.tpus.tpu-vm.{verb}", "[/usr/bin/ssh] exited with return code [255].", 255)


def kill_jobs(name: str) -> None:
    """SIGKILL every job process group on the TPU's workers (what losing the VM does to them)."""
    for pid_file in glob(os.path.join(ROOT, name, "worker-*", "parsetune", "jobs", "*.pid")):
        try:
            os.killpg(int(open(pid_file).read().strip()), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def ssh(name: str, tpu: dict, opts: dict) -> int:
    command = opts.get("command", "")
    reachable_or_fail(name, tpu, "ssh")
    status = 0
    for w in workers_of(name, tpu, opts.get("worker", "0")):
        if unreachable(w):
            print(f"ssh: connect to host 10.0.0.{w + 2} port 22: Connection timed out", file=sys.stderr)
            status = status or 255
            continue
        if os.environ.get("FAKE_GCLOUD_NO_EXEC"):
            continue
        env = {k: v for k, v in os.environ.items() if k.startswith("FAKE_") and k != "FAKE_GCLOUD_PATH"}
        env.update({k: os.environ[k] for k in PASS_THROUGH if k in os.environ})
        env.update(pod_env(tpu, w))
        env.update(HOME=home(name, w), FAKE_WORKER=str(w), LANG="C.UTF-8",
                   PATH=os.environ.get("FAKE_GCLOUD_PATH", "") + ":/usr/local/bin:/usr/bin:/bin")
        proc = subprocess.run(["bash", "-c", command], cwd=home(name, w), env=env, capture_output=True, text=True,
                              stdin=subprocess.DEVNULL)
        sys.stdout.write(proc.stdout)
        sys.stderr.write(proc.stderr)
        status = status or proc.returncode
    if status:
        print(f"ERROR: (gcloud.compute.tpus.tpu-vm.ssh) [/usr/bin/ssh] exited with return code [{status}].", file=sys.stderr)
    return status


def scp(pos: list[str], opts: dict, zone: str) -> int:
    src, dest = pos[0], pos[1]
    name, _, remote_path = dest.partition(":")
    tpu = get(name, zone, "scp")
    reachable_or_fail(name, tpu, "scp")
    for w in workers_of(name, tpu, opts.get("worker", "0")):
        if unreachable(w):
            fail("compute.tpus.tpu-vm.scp", f"[/usr/bin/scp] exited with return code [1] (worker {w} unreachable).")
        target = os.path.join(home(name, w), remote_path)
        if not os.path.isdir(os.path.dirname(target)):
            print(f"scp: {remote_path}: No such file or directory", file=sys.stderr)
            fail("compute.tpus.tpu-vm.scp", "[/usr/bin/scp] exited with return code [1].")
        shutil.copyfile(src, target)
        os.chmod(target, os.stat(src).st_mode & 0o777)
    return 0


def start_preempter(name: str) -> None:
    """With FAKE_GCLOUD_PREEMPT_AFTER, start a detached watcher that reclaims this TPU once (see the docstring)."""
    condition = os.environ.get("FAKE_GCLOUD_PREEMPT_AFTER")
    done_file = os.path.join(ROOT, f"preemptions-{name}")
    done = len(open(done_file).read().split()) if os.path.exists(done_file) else 0
    if not condition or done >= int(os.environ.get("FAKE_GCLOUD_PREEMPT_TIMES", "1")):
        return
    port = str(load()[name]["port"])  # identifies this VM: a recreated one gets a new port
    proc = subprocess.Popen([sys.executable, __file__, "--preempter", name, condition, port], start_new_session=True,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(os.path.join(ROOT, "preempter.log"), "a"))
    with open(os.path.join(ROOT, "preempter.pids"), "a") as f:
        f.write(f"{proc.pid}\n")


def condition_met(name: str, condition: str) -> bool:
    if condition.startswith("gs://"):
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage

        bucket, _, pattern = condition[5:].partition("/")
        prefix = pattern.split("*", 1)[0].split("?", 1)[0]
        client = storage.Client(project="test", credentials=AnonymousCredentials())
        return any(fnmatch.fnmatchcase(b.name, pattern) for b in client.list_blobs(bucket, prefix=prefix))
    started = glob(os.path.join(ROOT, name, "worker-0", "parsetune", "jobs", "*.pid"))
    return bool(started) and time.time() - min(os.path.getmtime(p) for p in started) >= float(condition)


def preempter(name: str, condition: str, port: int) -> int:
    """Reclaim TPU ``name`` once ``condition`` holds: PREEMPTED first (as GCP reports), then its jobs die."""
    deadline = time.time() + 900
    while time.time() < deadline:
        tpu = load().get(name)
        if tpu is None or tpu.get("port") != port:
            return 0
        try:
            met = condition_met(name, condition)
        except Exception as err:  # the emulator may be busy: try again
            print(f"preempter: {err!r}", file=sys.stderr)
            met = False
        if met:
            with open(os.path.join(ROOT, f"preemptions-{name}"), "a") as f:  # first: a create from now on is spared
                f.write(f"{time.time()}\n")
            tpus = load()
            if tpus.get(name, {}).get("port") != port:
                return 0  # (deleted or recreated meanwhile: that is another VM)
            if os.environ.get("FAKE_GCLOUD_PREEMPT_ACTION") == "vanish":  # the VM is simply gone: NOT_FOUND
                del tpus[name]
            else:
                tpus[name]["state"] = "PREEMPTED"
            save(tpus)
            kill_jobs(name)
            return 0
        time.sleep(0.1)
    return 1


def main(argv: list[str]) -> int:
    if argv[:1] == ["--preempter"]:
        return preempter(argv[1], argv[2], int(argv[3]))
    record(argv)
    pos, opts = flags(argv)
    if pos[:2] == ["auth", "list"]:
        print("[]" if os.environ.get("FAKE_GCLOUD_NO_AUTH") else json.dumps([{"account": "tester@example.com", "status": "ACTIVE"}]))
        return 0
    if pos[:2] == ["config", "get-value"]:
        print("" if os.environ.get("FAKE_GCLOUD_NO_AUTH") else "tester@example.com")
        return 0
    if pos[:3] == ["compute", "tpus", "queued-resources"]:
        verb, name, zone = pos[3], pos[4], opts.get("zone", "")
        tpus = load()
        if verb == "create":
            tpus[name] = {"zone": zone, "acceleratorType": opts["accelerator-type"], "runtime": opts["runtime-version"], "port": free_port()}
        elif verb == "delete":
            tpus.pop(name, None)
        elif verb == "describe":
            print(json.dumps({"state": {"state": "ACTIVE" if name in tpus else "WAITING_FOR_RESOURCES"}}))
        save(tpus)
        return 0
    if pos[:3] != ["compute", "tpus", "tpu-vm"]:
        fail("fake", f"unsupported command {argv}", 2)
    verb = pos[3]
    zone = opts.get("zone", "")
    if verb == "list":
        print(json.dumps([node_json(n, t) for n, t in load().items() if t["zone"] == zone]))
        return 0
    if verb == "scp":
        return scp(pos[4:], opts, zone)
    name = pos[4]
    if verb == "create":
        if zone not in ZONES:
            fail("compute.tpus.tpu-vm.create", f"NOT_FOUND: Location {zone} is not found or access is unauthorized.")
        tpus = load()
        if name in tpus:
            fail("compute.tpus.tpu-vm.create", f"ALREADY_EXISTS: node {name} already exists")
        tpus[name] = {"zone": zone, "acceleratorType": opts["accelerator-type"], "runtime": opts["version"], "port": free_port()}
        save(tpus)
        start_preempter(name)
        print(f"Create request issued for: [{name}]", file=sys.stderr)
        return 0
    tpu = get(name, zone, verb)
    if verb == "describe":
        print(json.dumps(node_json(name, tpu), indent=2))
        return 0
    if verb == "delete":
        tpus = load()
        del tpus[name]
        save(tpus)
        kill_jobs(name)  # the VM and its disks are gone
        shutil.rmtree(os.path.join(ROOT, name), ignore_errors=True)
        print(f"Deleted [{name}].", file=sys.stderr)
        return 0
    if verb == "ssh":
        return ssh(name, tpu, opts)
    fail("fake", f"unsupported verb {verb}", 2)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
