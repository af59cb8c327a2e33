#!/usr/bin/env bash
# Run a Flower app on a local Deployment Engine: one SuperLink and N SuperNodes on
# loopback (127.0.0.1), each on a free port chosen at start-up.
#
#   scripts/deploy_local.sh [-n NUM_SUPERNODES] [-w WORKDIR] [-a APP_DIR] [-t TIMEOUT]
#                           [-q] [-s|--secure] [-- RUN_CONFIG_OVERRIDES...]
#
# What it does, in order:
#   1. creates WORKDIR (default: <repo>/deploy-<timestamp>-XXXX, git-ignored) with a
#      private FLWR_HOME and a `deploy` connection in its config.toml; with -s, makes a
#      fresh CA, a SuperLink certificate and one key pair per SuperNode in
#      WORKDIR/certs (scripts/make_certs.sh);
#   2. starts `flower-superlink --insecure` (one port for the Fleet, Control and
#      Runtime APIs) and waits until it accepts connections; with -s, it starts it with
#      TLS (--ssl-*) and --enable-supernode-auth instead, and registers the N SuperNode
#      public keys with `flwr supernode register`;
#   3. starts N `flower-supernode`s (with -s: --root-certificates CA and
#      --auth-supernode-private-key KEY_I instead of --insecure), SuperNode I with
#      --node-config "partition-id=I num-partitions=N", and waits until the SuperLink
#      lists all N as online;
#   4. submits the app with `flwr run WORKDIR/app deploy --stream` (WORKDIR/app: a
#      snapshot of APP_DIR, see "stage the app" below), passing `num-clients=N` and
#      the user's overrides as run config, and waits for the run to finish (at most
#      TIMEOUT seconds, then `flwr stop`);
#   5. reads the run's status and the SuperLink's traffic count with
#      `flwr ls deploy --run-id ID --format json`, prints them and writes
#      WORKDIR/result.json;
#   6. stops every process it started (also on error and Ctrl-C).
#
# Exit status: 0 when the run ends `finished:completed`; 1 when it fails (or cannot be
# started); 124 on timeout; 130 on Ctrl-C; 2 on bad usage.
# See docs/deployment.md for details.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"

NUM_SUPERNODES=2
WORKDIR=""
APP_DIR="$REPO_ROOT"
TIMEOUT=600
QUIET=0
SECURE=0                      # -s/--secure: TLS + SuperNode authentication
CONNECTION="deploy"           # connection name written to the private config.toml
STARTUP_TIMEOUT=60            # seconds to wait for the SuperLink / SuperNodes / run id
STOP_GRACE=15                 # seconds between SIGTERM and SIGKILL at clean-up

usage() {
    cat <<EOF
Usage: $(basename "$0") [-n NUM_SUPERNODES] [-w WORKDIR] [-a APP_DIR] [-t TIMEOUT] [-q]
                        [-s|--secure] [-- RUN_CONFIG_OVERRIDES...]

Start a SuperLink and N SuperNodes on 127.0.0.1, run a Flower app on them with
'flwr run WORKDIR/app deploy --stream' (WORKDIR/app: a snapshot of APP_DIR), report
the run status and the SuperLink's traffic byte count, write WORKDIR/result.json and
stop everything again. Exit status: 0 completed, 1 failed, 124 timed out, 130 Ctrl-C.

Options:
  -n NUM   number of SuperNodes (default: 2); the run config gets num-clients=NUM
  -w DIR   work folder for logs, state and result.json
           (default: $REPO_ROOT/deploy-<timestamp>-XXXX)
  -a DIR   Flower app directory with pyproject.toml (default: $REPO_ROOT)
  -t SECS  run timeout in seconds (default: 600); on timeout the run is stopped and
           the script exits 124
  -q       do not echo the run's log stream (it is still written to WORKDIR/run.log)
  -s, --secure
           TLS and SuperNode authentication: make a CA, a SuperLink certificate
           (SAN 127.0.0.1, localhost) and one EC key pair per SuperNode in
           WORKDIR/certs, start the SuperLink with TLS and --enable-supernode-auth,
           register the SuperNodes' public keys and start the SuperNodes with the CA
           and their private keys (default: everything in clear text, no
           authentication: --insecure)
  -h, --help
           show this help

Run-config overrides are key=value words after '--', e.g.
  $(basename "$0") -n 3 -- num-server-rounds=2 'task="digits"' lr=0.01
Values are TOML (int, float, bool, "string"); a value that is not valid TOML is
passed as a string, so task=digits works too.
EOF
}

log() { printf '[deploy %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() { log "ERROR: $*" >&2; exit 1; }

# ----------------------------------------------------------------------------- args
while getopts ":n:w:a:t:qsh-:" opt; do
    case "$opt" in
        n) NUM_SUPERNODES="$OPTARG" ;;
        w) WORKDIR="$OPTARG" ;;
        a) APP_DIR="$OPTARG" ;;
        t) TIMEOUT="$OPTARG" ;;
        q) QUIET=1 ;;
        s) SECURE=1 ;;
        h) usage; exit 0 ;;
        -)  # long options (getopts reads `--secure` as option '-' with value 'secure')
            case "$OPTARG" in
                secure) SECURE=1 ;;
                help) usage; exit 0 ;;
                *) echo "Unknown option --$OPTARG" >&2; usage >&2; exit 2 ;;
            esac ;;
        :) echo "Option -$OPTARG needs a value" >&2; usage >&2; exit 2 ;;
        *) echo "Unknown option -$OPTARG" >&2; usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
OVERRIDES=("$@")   # everything after '--'

[[ "$NUM_SUPERNODES" =~ ^[1-9][0-9]*$ ]] || { echo "-n must be a positive integer" >&2; exit 2; }
[[ "$TIMEOUT" =~ ^[1-9][0-9]*$ ]] || { echo "-t must be a positive integer" >&2; exit 2; }
[[ -f "$APP_DIR/pyproject.toml" ]] || { echo "No pyproject.toml in app dir '$APP_DIR'" >&2; exit 2; }
APP_DIR="$(cd "$APP_DIR" && pwd)"

# ------------------------------------------------------------------------ binaries
# The SuperLink and SuperNodes start `flower-superexec`, `flwr-serverapp` and
# `flwr-clientapp` by name, through PATH: the venv's bin must come first so that the
# app processes run in the venv's Python (with the app's dependencies installed).
if [[ -x "$REPO_ROOT/.venv/bin/flower-superlink" ]]; then
    export PATH="$REPO_ROOT/.venv/bin:$PATH"
fi
for cmd in flower-superlink flower-supernode flower-superexec flwr flwr-serverapp \
           flwr-clientapp python3; do
    command -v "$cmd" >/dev/null || die "'$cmd' not found on PATH (install flwr or create .venv)"
done
PYTHON="$(command -v python3)"

# ------------------------------------------------------------------------- workdir
if [[ -z "$WORKDIR" ]]; then
    WORKDIR="$(mktemp -d "$REPO_ROOT/deploy-$(date +%Y%m%d-%H%M%S)-XXXX")"
else
    mkdir -p "$WORKDIR"
    WORKDIR="$(cd "$WORKDIR" && pwd)"
    if [[ -e "$WORKDIR/state.db" || -e "$WORKDIR/result.json" || -e "$WORKDIR/app" ]]; then
        die "work folder '$WORKDIR' was used before; pass a new one"
    fi
fi
# The FAB that `flwr run` builds takes *.py/*.toml/*.md/*.json/*.yaml files from the app
# dir that its .gitignore does not exclude: a work folder inside the app dir must be
# ignored, or its FLWR_HOME/apps copies and JSON files end up in the next FAB.
case "$WORKDIR/" in
    "$APP_DIR"/*)
        if ! git -C "$APP_DIR" check-ignore -q "$WORKDIR" 2>/dev/null; then
            log "WARNING: work folder is inside the app dir and not git-ignored;" \
                "its files may be packed into the app bundle (FAB)"
        fi ;;
esac

export FLWR_HOME="$WORKDIR/flwr-home"           # CLI config + SuperLink's installed apps
export FLWR_TELEMETRY_ENABLED=0
export MLFLOW_DISABLE_TELEMETRY=true
export FLWR_DISABLE_UPDATE_CHECK=1               # no outbound update check
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1   # use this venv, no `uv sync`
mkdir -p "$FLWR_HOME"

# ----------------------------------------------------------------- process control
SUPERLINK_PID=""
SUPERNODE_PIDS=()
RUN_PID=""
TAIL_PID=""
CLEANED_UP=0

alive() { [[ -n "${1:-}" ]] && kill -0 "$1" 2>/dev/null; }

# All descendants of a pid (children first found, recursively). SuperLink and
# SuperNode each start a `flower-superexec`, which starts flwr-serverapp /
# flwr-clientapp processes; the SuperLink's superexec runs in its own session.
descendants() {
    local child
    for child in $(pgrep -P "$1" 2>/dev/null || true); do
        echo "$child"
        descendants "$child"
    done
}

cleanup() {
    [[ "$CLEANED_UP" == 1 ]] && return 0
    CLEANED_UP=1
    set +e
    if alive "$RUN_PID"; then kill -TERM "$RUN_PID" 2>/dev/null; fi
    # Stop the SuperNodes before the SuperLink (else they keep retrying to reconnect).
    local roots=() all=() pid
    for pid in "${SUPERNODE_PIDS[@]}" "$SUPERLINK_PID"; do
        alive "$pid" && roots+=("$pid")
    done
    if ((${#roots[@]})); then
        log "stopping ${#roots[@]} Flower process(es) and their children"
        for pid in "${roots[@]}"; do
            all+=("$pid")
            while read -r child; do [[ -n "$child" ]] && all+=("$child"); done \
                < <(descendants "$pid")
        done
        kill -TERM "${all[@]}" 2>/dev/null
        local deadline=$((SECONDS + STOP_GRACE)) left
        while ((SECONDS < deadline)); do
            left=0
            for pid in "${all[@]}"; do alive "$pid" && left=1 && break; done
            ((left)) || break
            sleep 0.2
        done
        for pid in "${all[@]}"; do
            if alive "$pid"; then
                log "process $pid did not stop within ${STOP_GRACE}s: SIGKILL"
                kill -KILL "$pid" 2>/dev/null
            fi
        done
    fi
    if alive "$RUN_PID"; then kill -KILL "$RUN_PID" 2>/dev/null; fi
    if alive "$TAIL_PID"; then kill -TERM "$TAIL_PID" 2>/dev/null; fi
    wait 2>/dev/null
    log "logs and state are in $WORKDIR"
    return 0
}
trap cleanup EXIT
trap 'log "interrupted"; exit 130' INT
trap 'log "terminated"; exit 143' TERM

# Print the last lines of a log file to stderr (for error reports).
show_tail() { echo "---- last lines of $1 ----" >&2; tail -n "${2:-25}" "$1" >&2 || true; }

# ------------------------------------------------------------------------- helpers
# N distinct free TCP ports on 127.0.0.1 (all sockets held open together, then freed).
free_ports() {
    "$PYTHON" -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# Number of SuperNodes the SuperLink lists as online.
online_supernodes() {
    flwr supernode list "$CONNECTION" --format json 2>/dev/null | "$PYTHON" 2>/dev/null -c '
import json, sys
try:
    nodes = json.load(sys.stdin).get("nodes", [])
except ValueError:
    nodes = []
print(sum(1 for n in nodes if n.get("status") == "online"))' || echo 0
}

# `flwr ls` JSON for one run, or nothing.
run_info() {
    flwr ls "$CONNECTION" --run-id "$1" --format json 2>/dev/null || true
}

# Field of run_info's JSON (status, status-details, ...), empty when unavailable.
run_field() {
    "$PYTHON" -c '
import json, sys
try:
    run = json.loads(sys.argv[1])["runs"][0]
    print(run.get(sys.argv[2], ""))
except (ValueError, LookupError, TypeError):
    print("")' "$1" "$2"
}

# Normalise key=value overrides for `--run-config`: keep values that are valid TOML
# scalars (int, float, bool, quoted string), quote everything else as a string.
# Prints the results NUL-separated.
normalise_overrides() {
    "$PYTHON" -c '
import json, sys, tomllib
for kv in sys.argv[1:]:
    key, sep, value = kv.partition("=")
    key = key.strip()
    if not sep or not key or any(c.isspace() for c in key):
        sys.exit(f"bad run-config override {kv!r}: expected key=value")
    try:
        ok = isinstance(tomllib.loads(f"v = {value}")["v"], (bool, int, float, str))
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        value = json.dumps(value)  # a TOML basic string
    sys.stdout.write(f"{key}={value}\0")' "$@"
}

# --------------------------------------------------------------------- run config
# The SuperLink rejects a run whose overrides name a key the app does not declare
# ("Invalid run configuration"), so num-clients is passed only when declared.
app_has_key() {
    "$PYTHON" -c '
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    cfg = tomllib.load(f).get("tool", {}).get("flwr", {}).get("app", {}).get("config", {})
sys.exit(0 if sys.argv[2] in cfg else 1)' "$APP_DIR/pyproject.toml" "$1"
}
RUN_CONFIG=()
if app_has_key num-clients; then
    RUN_CONFIG+=("num-clients=$NUM_SUPERNODES")
else
    log "WARNING: the app declares no 'num-clients' run-config key; not passing it"
fi
if ((${#OVERRIDES[@]})); then
    mapfile -d '' -t USER_CONFIG < <(normalise_overrides "${OVERRIDES[@]}") \
        || die "bad run-config overrides"
    ((${#USER_CONFIG[@]} == ${#OVERRIDES[@]})) || die "bad run-config overrides"
    RUN_CONFIG+=("${USER_CONFIG[@]}")
fi
RUN_CONFIG_ARGS=()
for kv in "${RUN_CONFIG[@]}"; do RUN_CONFIG_ARGS+=(--run-config "$kv"); done

log "work folder: $WORKDIR"
log "app: $APP_DIR"
log "python: $PYTHON"
if ((SECURE)); then
    log "mode: SECURE (TLS on the SuperLink's port, SuperNode authentication)"
else
    log "mode: INSECURE (--insecure: plain HTTP, any SuperNode may connect; -s for TLS + auth)"
fi

# ----------------------------------------------------------------- stage the app
# `flwr run DIR` rewrites DIR/pyproject.toml in place when it has a legacy
# [tool.flwr.federations] table (it comments the table out and moves it into
# $FLWR_HOME/config.toml). So the app is not run from APP_DIR: it is packed with the
# function `flwr run` itself uses to build the FAB (same files: *.py, *.toml, *.md,
# *.json, *.yaml not excluded by .gitignore; federations stripped), unpacked into
# WORKDIR/app and run from there. APP_DIR is only read; the run uses a snapshot.
# (`flwr build --app` would do too, but it also insists that the folder's name is a
# valid app name.)
STAGED_APP="$WORKDIR/app"
log "packing the app into $STAGED_APP"
"$PYTHON" - "$APP_DIR" "$STAGED_APP" >"$WORKDIR/build.log" 2>&1 <<'EOF_PY' \
    || { show_tail "$WORKDIR/build.log"; die "could not pack the app in $APP_DIR"; }
import io, pathlib, sys, zipfile
from flwr.cli.build import build_fab_from_disk

app_dir, dest = (pathlib.Path(p).resolve() for p in sys.argv[1:])
fab = build_fab_from_disk(app_dir)
print(f"FAB: {len(fab)} bytes")
with zipfile.ZipFile(io.BytesIO(fab)) as z:
    for name in z.namelist():
        if name.startswith(".info/"):
            continue  # the FAB's manifest; `flwr run` writes a new one
        target = (dest / name).resolve()
        if not target.is_relative_to(dest):
            sys.exit(f"unsafe path in FAB: {name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read(name))
        print(name)
EOF_PY

# -------------------------------------------------------------------- credentials
# Secure mode: a CA made for this run only, a SuperLink certificate for 127.0.0.1 /
# localhost signed by it, and one EC P-384 key pair per SuperNode, all in
# WORKDIR/certs (mode 700, private keys 600; the work folder is git-ignored by default,
# and .pem/.key/key files are never packed into the FAB).
CERT_DIR="$WORKDIR/certs"
SUPERLINK_TLS_ARGS=(--insecure)
if ((SECURE)); then
    log "making TLS certificates and SuperNode keys in $CERT_DIR"
    PYTHON="$PYTHON" "$SCRIPT_DIR/make_certs.sh" -n "$NUM_SUPERNODES" "$CERT_DIR" \
        >"$WORKDIR/certs.log" 2>&1 \
        || { show_tail "$WORKDIR/certs.log"; die "could not make the certificates"; }
    sed 's/^\[certs\]/ /' "$WORKDIR/certs.log"
    SUPERLINK_TLS_ARGS=(--ssl-ca-certfile "$CERT_DIR/ca.crt"
                        --ssl-certfile "$CERT_DIR/server.pem"
                        --ssl-keyfile "$CERT_DIR/server.key"
                        --enable-supernode-auth)
fi

# ------------------------------------------------------------------------ SuperLink
read -r -a PORTS <<<"$(free_ports $((NUM_SUPERNODES + 1)))"
SUPERLINK_PORT="${PORTS[0]}"

# The CLI connection: TLS verified against the run's CA, or plain HTTP.
if ((SECURE)); then
    # (a JSON string is a valid TOML basic string: quotes and backslashes escaped)
    CONNECTION_SECURITY="root-certificates = $("$PYTHON" -c \
        'import json, sys; print(json.dumps(sys.argv[1]))' "$CERT_DIR/ca.crt")"
else
    CONNECTION_SECURITY="insecure = true"
fi
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "$CONNECTION"

[superlink.$CONNECTION]
address = "127.0.0.1:$SUPERLINK_PORT"
$CONNECTION_SECURITY
EOF

if ((SECURE)); then
    log "starting SuperLink on 127.0.0.1:$SUPERLINK_PORT (TLS, --enable-supernode-auth)"
else
    log "starting SuperLink on 127.0.0.1:$SUPERLINK_PORT (--insecure)"
fi
# All processes run with WORKDIR as their working directory (ServerApp and ClientApp
# processes inherit it, and the environment, from SuperLink / SuperNode).
cd "$WORKDIR"
setsid flower-superlink "${SUPERLINK_TLS_ARGS[@]}" \
    --host 127.0.0.1 --port "$SUPERLINK_PORT" \
    --database "$WORKDIR/state.db" \
    --disable-runtime-dependency-installation \
    >"$WORKDIR/superlink.log" 2>&1 </dev/null &
SUPERLINK_PID=$!

deadline=$((SECONDS + STARTUP_TIMEOUT))
until port_open "$SUPERLINK_PORT"; do
    if ! alive "$SUPERLINK_PID"; then show_tail "$WORKDIR/superlink.log"; die "SuperLink exited"; fi
    if ((SECONDS >= deadline)); then show_tail "$WORKDIR/superlink.log"; die "SuperLink not ready after ${STARTUP_TIMEOUT}s"; fi
    sleep 0.2
done
log "SuperLink ready (pid $SUPERLINK_PID)"

# ---------------------------------------------------------- SuperNode registration
# With --enable-supernode-auth the SuperLink refuses every SuperNode whose public key
# was not registered through its Control API first (`flwr supernode register`, over
# TLS); each registration creates the node (status "registered") and returns its id.
REGISTERED_NODE_IDS=()
if ((SECURE)); then
    : >"$WORKDIR/register.log"
    for ((i = 0; i < NUM_SUPERNODES; i++)); do
        reply="$(flwr supernode register "$CERT_DIR/supernode-$i.pub" "$CONNECTION" \
                 --name "supernode-$i" --format json 2>>"$WORKDIR/register.log")" || true
        printf '%s\n' "$reply" >>"$WORKDIR/register.log"
        node_id="$("$PYTHON" -c '
import json, sys
try:
    r = json.loads(sys.argv[1])
    print(r["node-id"] if r.get("success") else "")
except (ValueError, KeyError, TypeError):
    print("")' "$reply")"
        if [[ -z "$node_id" ]]; then
            show_tail "$WORKDIR/register.log"
            die "could not register SuperNode $i's public key"
        fi
        REGISTERED_NODE_IDS+=("$node_id")
        log "registered SuperNode $i's public key (certs/supernode-$i.pub): node id $node_id"
    done
fi

# ------------------------------------------------------------------------ SuperNodes
for ((i = 0; i < NUM_SUPERNODES; i++)); do
    node_home="$WORKDIR/flwr-home-supernode-$i"    # own app install dir per SuperNode
    mkdir -p "$node_home"
    if ((SECURE)); then
        node_security=(--root-certificates "$CERT_DIR/ca.crt"
                       --auth-supernode-private-key "$CERT_DIR/supernode-$i")
    else
        node_security=(--insecure)
    fi
    FLWR_HOME="$node_home" setsid flower-supernode "${node_security[@]}" \
        --superlink "127.0.0.1:$SUPERLINK_PORT" \
        --node-config "partition-id=$i num-partitions=$NUM_SUPERNODES" \
        --host 127.0.0.1 --port "${PORTS[$((i + 1))]}" \
        >"$WORKDIR/supernode-$i.log" 2>&1 </dev/null &
    SUPERNODE_PIDS+=($!)
done
log "started $NUM_SUPERNODES SuperNode(s) (pids ${SUPERNODE_PIDS[*]}), waiting for them to connect"

deadline=$((SECONDS + STARTUP_TIMEOUT))
while :; do
    for ((i = 0; i < NUM_SUPERNODES; i++)); do
        if ! alive "${SUPERNODE_PIDS[$i]}"; then
            show_tail "$WORKDIR/supernode-$i.log"; die "SuperNode $i exited"
        fi
    done
    online="$(online_supernodes)"
    ((online >= NUM_SUPERNODES)) && break
    if ((SECONDS >= deadline)); then
        die "only $online of $NUM_SUPERNODES SuperNodes online after ${STARTUP_TIMEOUT}s"
    fi
    sleep 0.5
done
log "$online SuperNode(s) online"
# The SuperLink's node table (ids, status) as the run starts.
flwr supernode list "$CONNECTION" --format json >"$WORKDIR/supernodes.json" 2>/dev/null || true
if ((SECURE)); then
    log "TLS: the SuperLink's port serves HTTPS only (certificate certs/server.pem," \
        "CA certs/ca.crt); SuperNodes, 'flwr' and the ServerApp verify it against the CA"
    log "SuperNode authentication: ${#REGISTERED_NODE_IDS[@]} registered key(s);" \
        "every SuperNode request is signed with its private key; unregistered keys are refused"
fi

# ----------------------------------------------------------------------------- run
log "flwr run $STAGED_APP $CONNECTION --stream ${RUN_CONFIG_ARGS[*]}"
RUN_START=$SECONDS
: >"$WORKDIR/run.log"
flwr run "$STAGED_APP" "$CONNECTION" --stream "${RUN_CONFIG_ARGS[@]}" \
    >"$WORKDIR/run.log" 2>&1 </dev/null &
RUN_PID=$!
if ((!QUIET)); then
    tail -n +1 -f --pid="$RUN_PID" "$WORKDIR/run.log" &
    TAIL_PID=$!
fi

RUN_ID=""
deadline=$((SECONDS + STARTUP_TIMEOUT))
while [[ -z "$RUN_ID" ]]; do
    RUN_ID="$(grep -oE 'Successfully started run [0-9]+' "$WORKDIR/run.log" | grep -oE '[0-9]+$' || true)"
    [[ -n "$RUN_ID" ]] && break
    if ! alive "$RUN_PID" || ((SECONDS >= deadline)); then
        # `flwr run` exits non-zero when it cannot submit the run (bad config,
        # invalid override, unreachable SuperLink ...).
        ((QUIET)) && show_tail "$WORKDIR/run.log"
        die "'flwr run' did not start a run (see $WORKDIR/run.log)"
    fi
    sleep 0.2
done
log "run id: $RUN_ID"

# `flwr run --stream` returns when the run's log stream ends, i.e. when the run has
# finished -- with exit status 0 even when the run failed: the status comes from
# `flwr ls`.
TIMED_OUT=0
deadline=$((RUN_START + TIMEOUT))
while alive "$RUN_PID"; do
    if ((SECONDS >= deadline)); then
        TIMED_OUT=1
        log "timeout after ${TIMEOUT}s: stopping run $RUN_ID"
        flwr stop "$RUN_ID" "$CONNECTION" >>"$WORKDIR/run.log" 2>&1 || true
        sleep 2
        alive "$RUN_PID" && kill -TERM "$RUN_PID" 2>/dev/null
        break
    fi
    sleep 0.5
done
RUN_RC=0
wait "$RUN_PID" 2>/dev/null || RUN_RC=$?
if [[ -n "$TAIL_PID" ]]; then wait "$TAIL_PID" 2>/dev/null || true; fi

# The stream can end a moment before the status is final: poll briefly.
INFO=""
STATUS=""
for _ in $(seq 1 40); do
    INFO="$(run_info "$RUN_ID")"
    STATUS="$(run_field "$INFO" status)"
    [[ "$STATUS" == finished* ]] && break
    sleep 0.5
done
WALL=$((SECONDS - RUN_START))
# A ClientApp exception does not fail the run (the strategy counts it as a failure
# and goes on); count them from the SuperNode logs.
CLIENT_ERRORS="$(cat "$WORKDIR"/supernode-*.log | grep -c 'ClientApp raised an exception' || true)"
[[ -n "$INFO" ]] || die "could not read run $RUN_ID from the SuperLink"
printf '%s\n' "$INFO" >"$WORKDIR/flwr-ls.json"

# ------------------------------------------------------------------------ results
DEPLOY_SECURE="$SECURE" DEPLOY_CERT_DIR="$CERT_DIR" \
DEPLOY_REGISTERED="${REGISTERED_NODE_IDS[*]}" DEPLOY_PORT="$SUPERLINK_PORT" \
"$PYTHON" - "$INFO" "$WORKDIR/result.json" "$TIMED_OUT" "$RUN_RC" "$WALL" \
    "$CLIENT_ERRORS" "$NUM_SUPERNODES" "$APP_DIR" "$WORKDIR" "${RUN_CONFIG[@]}" <<'EOF'
import json, os, sys

(info, out, timed_out, run_rc, wall, client_errors, n, app_dir, workdir,
 *run_config) = sys.argv[1:]
run = json.loads(info)["runs"][0]
secure = os.environ["DEPLOY_SECURE"] == "1"
cert_dir = os.environ["DEPLOY_CERT_DIR"]
try:
    with open(os.path.join(workdir, "supernodes.json")) as f:
        nodes = [{"node-id": nd.get("node-id"), "status": nd.get("status")}
                 for nd in json.load(f).get("nodes", [])]
except (OSError, ValueError, AttributeError):
    nodes = None
result = {
    "run_id": run["run-id"],
    "status": run["status"],
    "superlink_bytes": run.get("network-traffic", {}),
    "status_details": run.get("status-details"),
    "timed_out": timed_out == "1",
    "flwr_run_exit_code": int(run_rc),
    "elapsed_seconds": run.get("elapsed"),
    "wall_seconds": int(wall),
    "compute_time": run.get("compute-time", {}),
    "clientapp_errors": int(client_errors),
    "num_supernodes": int(n),
    "run_config": run_config,
    "app_dir": app_dir,
    "workdir": workdir,
    "superlink_address": f"127.0.0.1:{os.environ['DEPLOY_PORT']}",
    "security": {
        "tls": secure,
        "supernode_auth": secure,
        "ca_certificate": os.path.join(cert_dir, "ca.crt") if secure else None,
        "server_certificate": os.path.join(cert_dir, "server.pem") if secure else None,
        "registered_node_ids": os.environ["DEPLOY_REGISTERED"].split(),
        "supernodes_at_start": nodes,
    },
}
with open(out, "w") as f:
    json.dump(result, f, indent=2)
    f.write("\n")
b = result["superlink_bytes"]
print(f"[deploy] status: {result['status']}"
      + (f" ({result['status_details']})" if result["status_details"] not in (None, "", "N/A") else ""))
print(f"[deploy] SuperLink traffic bytes: inbound={b.get('inbound-bytes')} "
      f"outbound={b.get('outbound-bytes')} total={b.get('total-bytes')}")
sec = result["security"]
if secure:
    print(f"[deploy] security: TLS (CA {sec['ca_certificate']}), SuperNode authentication "
          f"with {len(sec['registered_node_ids'])} registered key(s): node ids "
          + ", ".join(sec["registered_node_ids"]))
else:
    print("[deploy] security: none (--insecure: plain HTTP, no SuperNode authentication)")
if result["clientapp_errors"]:
    print(f"[deploy] WARNING: {result['clientapp_errors']} ClientApp call(s) raised an "
          "exception (see supernode-*.log)")
EOF
log "run took ${WALL}s from submission; result: $WORKDIR/result.json"

if ((TIMED_OUT)); then
    log "FAILED: run $RUN_ID timed out after ${TIMEOUT}s"
    exit 124
fi
if [[ "$STATUS" != "finished:completed" ]]; then
    ((QUIET)) && show_tail "$WORKDIR/run.log" 40
    log "FAILED: run $RUN_ID ended with status '${STATUS:-unknown}'"
    exit 1
fi
log "run $RUN_ID completed"
