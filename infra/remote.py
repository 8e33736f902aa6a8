"""Shell scripts that run on the TPU workers (the text of ``gcloud ... ssh --command``).

Each script is constant code plus a header of variable assignments, one per value, each quoted
with :func:`shlex.quote`; the code only ever uses ``"$VAR"``. So no name, path or config value can
change what runs, whatever spaces, quotes, ``;`` or ``$()`` it holds. Paths are relative to the
worker's home: ``parsetune/venv`` (the install), ``parsetune/jobs/JOB.{log,pid,rc,env}`` (a job),
``parsetune/steps/STEP.{log,rc}`` (the last run of a step, for per-worker error reports).
"""

from __future__ import annotations

import shlex

ROOT = "parsetune"
VENV = f"{ROOT}/venv"
JOBS = f"{ROOT}/jobs"
DIST = f"{ROOT}/dist"
STEPS = f"{ROOT}/steps"
PYTHON_VERSION = "3.11"
JAX_TPU = "jax[tpu]==0.7.2"
LIBTPU_FIND_LINKS = "https://storage.googleapis.com/jax-releases/libtpu_releases.html"
UV_SPEC = "uv<1"


def quote(value: str | int) -> str:
    text = str(value)
    return shlex.quote(text) if text else '""'


# A process is alive if it exists and is not a zombie (kill -0 also succeeds on zombies).
ALIVE = 'alive() { s=$(ps -o stat= -p "$1" 2>/dev/null) && [ -n "$s" ] && [ "${s#Z}" = "$s" ]; }\n'


def assignments(**values: str | int) -> str:
    return "".join(f"{name}={quote(value)}\n" for name, value in values.items())


def positional(args: list[str]) -> str:
    """``set -- 'a' 'b' ...``: a list of values as the script's ``"$@"``."""
    return "set --" + "".join(" " + quote(a) for a in args) + "\n"


def step(name: str, body: str, **values: str | int) -> str:
    """Run ``body`` (with ``set -e``) logging to ``parsetune/steps/NAME.log``; its status goes to ``NAME.rc``.

    On failure the log's last lines go to stderr, so gcloud's output shows why.
    """
    log, rc = f"{STEPS}/{name}.log", f"{STEPS}/{name}.rc"
    return (
        'cd "$HOME" || exit 1\n'
        f"mkdir -p {STEPS}\n"
        + assignments(**values)
        + f"(\nset -e\n{body.strip()}\n) > {log} 2>&1\n"
        + f'rc=$?\necho "$rc" > {rc}\n'
        + f'if [ "$rc" -ne 0 ]; then echo "[{name} failed on $(hostname), exit status $rc]" >&2; tail -n 20 {log} >&2; fi\n'
        + 'exit "$rc"\n'
    )


def step_report(name: str, lines: int = 20) -> str:
    """Per-worker probe after a failed step: its exit status, then the last log lines."""
    return (
        'cd "$HOME" || exit 1\n'
        f'echo "rc=$(cat {STEPS}/{name}.rc 2>/dev/null || echo none)"\n'
        f"tail -n {int(lines)} {STEPS}/{name}.log 2>/dev/null || true\n"
    )


SETUP_BODY = f"""
mkdir -p {DIST}
python3 -m pip install --user --quiet "$UV_SPEC" || python3 -m pip install --user --quiet --break-system-packages "$UV_SPEC"
UV="$HOME/.local/bin/uv"
"$UV" venv --allow-existing --python "$PYTHON_VERSION" {VENV}
if [ -n "$PACKAGE_FILE" ]; then PACKAGE="parsetune @ file://$HOME/$PACKAGE_FILE"; fi
"$UV" pip install --python {VENV}/bin/python "$PACKAGE" "$JAX_SPEC" --find-links "$FIND_LINKS"
{VENV}/bin/parsetune --version
{VENV}/bin/python -c 'import jax, levanter; print("jax", jax.__version__)'
"""


def setup(package: str | None = None, package_file: str | None = None) -> str:
    """Install Python 3.11 (uv), parsetune and ``jax[tpu]`` (libtpu) into ``parsetune/venv``.

    ``package``: a pip requirement (``parsetune @ git+URL@REF``, ``parsetune==X``); ``package_file``:
    a wheel/sdist already copied to the worker (path relative to home).
    """
    return step(
        "setup", SETUP_BODY, UV_SPEC=UV_SPEC, PYTHON_VERSION=PYTHON_VERSION, PACKAGE=package or "",
        PACKAGE_FILE=package_file or "", JAX_SPEC=JAX_TPU, FIND_LINKS=LIBTPU_FIND_LINKS,
    )  # fmt: skip


PREPARE_BODY = f"""
if [ ! -x {VENV}/bin/parsetune ]; then echo "parsetune is not installed on $(hostname): run parsetune tpu setup first" >&2; exit 3; fi
mkdir -p {JOBS}
chmod 700 {JOBS}
prev=$(cat {JOBS}/current 2>/dev/null || true)
if [ -n "$prev" ] && [ ! -f "{JOBS}/$prev.rc" ] && [ -f "{JOBS}/$prev.pid" ] && alive "$(cat "{JOBS}/$prev.pid")"; then
  echo "job $prev is still running on $(hostname): stop it first with parsetune tpu stop" >&2; exit 4
fi
"""


def prepare() -> str:
    """Check the install and that no job runs; make the private jobs dir the env file is copied into."""
    return step("prepare", ALIVE + PREPARE_BODY)


# The job itself, written to parsetune/jobs/JOB.sh: $1 env file (sourced, then deleted before anything
# else runs), $2 exit-status file, then the command. No secret is ever an argument.
JOB_SCRIPT = """set -a; . "$1"; set +a; rm -f -- "$1"
rc_file=$2
shift 2
echo "[parsetune tpu] $(date -u +%Y-%m-%dT%H:%M:%SZ) start on $(hostname): $*"
"$@"
rc=$?
echo "[parsetune tpu] $(date -u +%Y-%m-%dT%H:%M:%SZ) exit status $rc"
echo "$rc" > "$rc_file"
exit "$rc"
"""

LAUNCH_BODY = f"""
J={JOBS}
ENV_FILE="$J/$JOB.env"
if [ ! -f "$ENV_FILE" ]; then echo "missing $ENV_FILE on $(hostname)" >&2; exit 5; fi
chmod 600 "$ENV_FILE"
cat > "$J/$JOB.sh" <<"PARSETUNE_JOB"
{JOB_SCRIPT}PARSETUNE_JOB
rm -f "$J/$JOB.rc"
echo "$JOB" > "$J/current"
setsid nohup bash "$J/$JOB.sh" "$ENV_FILE" "$J/$JOB.rc" "$@" < /dev/null > "$J/$JOB.log" 2>&1 &
echo "$!" > "$J/$JOB.pid"
echo "started $JOB as pid $! on $(hostname)"
"""


PARSETUNE = f"{VENV}/bin/parsetune"


def launch(job: str, argv: list[str]) -> str:
    """Start ``argv`` (``parsetune/venv/bin/parsetune COMMAND ...``) in the background in its own session,
    output to the job log."""
    return step("launch", positional(argv) + LAUNCH_BODY, JOB=job)


ELSEWHERE = f"""cd "$HOME" || exit 1
J={JOBS}
echo "$JOB" > "$J/current"
echo "[parsetune tpu] job $JOB runs on worker $RUN_ON only" > "$J/$JOB.log"
echo skipped > "$J/$JOB.rc"
"""


def elsewhere(job: str, run_on: int) -> str:
    """On the workers that do not run a one-worker job: make it their current job, marked ``skipped``, so
    ``status``/``logs``/``stop`` and the next ``submit`` see one job on the whole slice."""
    return assignments(JOB=job, RUN_ON=int(run_on)) + ELSEWHERE


PROBE = f"""cd "$HOME" || exit 1
J={JOBS}
if [ -z "$JOB" ]; then JOB=$(cat "$J/current" 2>/dev/null || true); fi
if [ -z "$JOB" ]; then echo "state=none"; exit 0; fi
echo "job=$JOB"
if [ -f "$J/$JOB.rc" ]; then echo "state=exited"; echo "rc=$(cat "$J/$JOB.rc")"
elif [ -f "$J/$JOB.pid" ] && alive "$(cat "$J/$JOB.pid")"; then echo "state=running"
elif [ -f "$J/$JOB.rc" ]; then echo "state=exited"; echo "rc=$(cat "$J/$JOB.rc")"  # it ended between the two checks
elif [ -f "$J/$JOB.pid" ]; then echo "state=died"
else echo "state=unknown"; fi
echo "--- log"
tail -n "$LINES" "$J/$JOB.log" 2>/dev/null || true
"""


def probe(job: str | None, lines: int = 10) -> str:
    """Print ``job=``, ``state=`` (running/exited/died/none/unknown), ``rc=``, then ``--- log`` and its tail."""
    return assignments(JOB=job or "", LINES=int(lines)) + ALIVE + PROBE


TAIL = f"""cd "$HOME" || exit 1
if [ -z "$JOB" ]; then JOB=$(cat {JOBS}/current 2>/dev/null || true); fi
if [ -z "$JOB" ]; then echo "no job on $(hostname)" >&2; exit 6; fi
if [ "$FOLLOW" = 1 ]; then exec tail -n "$LINES" -F "{JOBS}/$JOB.log"; fi
tail -n "$LINES" "{JOBS}/$JOB.log"
"""


def tail(job: str | None, lines: int, follow: bool) -> str:
    return assignments(JOB=job or "", LINES=int(lines), FOLLOW=int(follow)) + TAIL


STOP = f"""cd "$HOME" || exit 1
J={JOBS}
if [ -z "$JOB" ]; then JOB=$(cat "$J/current" 2>/dev/null || true); fi
if [ -z "$JOB" ]; then echo "no job on $(hostname)"; exit 0; fi
rm -f -- "$J/$JOB.env"
pid=$(cat "$J/$JOB.pid" 2>/dev/null || true)
if [ -n "$pid" ] && alive "$pid"; then
  kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid"
  i=0
  while alive "$pid" && [ "$i" -lt "$GRACE" ]; do sleep 1; i=$((i + 1)); done
  if alive "$pid"; then kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid"; fi
  if [ ! -f "$J/$JOB.rc" ]; then echo stopped > "$J/$JOB.rc"; fi
  echo "stopped $JOB (pid $pid) on $(hostname)"
else
  echo "$JOB is not running on $(hostname)"
fi
"""


def stop(job: str | None, grace_seconds: int = 30) -> str:
    """SIGTERM the job's process group, SIGKILL after ``grace_seconds``; delete a leftover env file."""
    return assignments(JOB=job or "", GRACE=int(grace_seconds)) + ALIVE + STOP
