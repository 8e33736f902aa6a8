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
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys

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
    json.dump(tpus, open(os.path.join(ROOT, "tpus.json"), "w"))


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
        "state": os.environ.get("FAKE_GCLOUD_STATE", "READY"),
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


def ssh(name: str, tpu: dict, opts: dict) -> int:
    command = opts.get("command", "")
    status = 0
    for w in workers_of(name, tpu, opts.get("worker", "0")):
        if unreachable(w):
            print(f"ssh: connect to host 10.0.0.{w + 2} port 22: Connection timed out", file=sys.stderr)
            status = status or 255
            continue
        if os.environ.get("FAKE_GCLOUD_NO_EXEC"):
            continue
        env = {k: v for k, v in os.environ.items() if k.startswith("FAKE_") and k != "FAKE_GCLOUD_PATH"}
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


def main(argv: list[str]) -> int:
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
            tpus[name] = {"zone": zone, "acceleratorType": opts["accelerator-type"], "runtime": opts["runtime-version"]}
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
        tpus[name] = {"zone": zone, "acceleratorType": opts["accelerator-type"], "runtime": opts["version"]}
        save(tpus)
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
        print(f"Deleted [{name}].", file=sys.stderr)
        return 0
    if verb == "ssh":
        return ssh(name, tpu, opts)
    fail("fake", f"unsupported verb {verb}", 2)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
