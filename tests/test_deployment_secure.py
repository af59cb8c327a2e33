"""Secure mode of scripts/deploy_local.sh: TLS with a CA made by the script and
SuperNode authentication (Flower 1.42: `--enable-supernode-auth` on the SuperLink,
public keys registered with `flwr supernode register`, `--auth-supernode-private-key`
on each SuperNode).

The fast tests check the credentials scripts/make_certs.sh makes (certificate chain,
SAN, key formats Flower accepts, a real TLS handshake). The slow one runs the app with
2 authenticated SuperNodes over TLS and, while it runs, tries to get in without
credentials: a SuperNode with an unregistered key, one with no key, one without the
CA, one in plain HTTP, and the `flwr` CLI without the CA or without TLS must all be
refused.
"""

from __future__ import annotations

import ipaddress
import json
import os
import queue
import re
import signal
import socket
import ssl
import subprocess
import threading
import time
import tomllib
from pathlib import Path

import pytest
from conftest import ROOT, metric_history
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding
from cryptography.x509.oid import ExtendedKeyUsageOID

MAKE_CERTS = ROOT / "scripts" / "make_certs.sh"
DEPLOY = ROOT / "scripts" / "deploy_local.sh"
VENV_BIN = ROOT / ".venv" / "bin"
NICE = ["nice", "-n", "19"]


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "MLFLOW_DISABLE_TELEMETRY": "true",
           "FLWR_DISABLE_UPDATE_CHECK": "1", **extra}
    if VENV_BIN.is_dir():
        env["PATH"] = f"{VENV_BIN}{os.pathsep}{env['PATH']}"
    return env


def _make_certs(out: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*NICE, "bash", str(MAKE_CERTS), *args, str(out)],
                          capture_output=True, text=True, timeout=60, env=_env())


def _handshake(port: int, context: ssl.SSLContext) -> dict:
    """TLS handshake with 127.0.0.1:port; returns the verified peer certificate."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        with context.wrap_socket(sock, server_hostname="127.0.0.1") as tls:
            return tls.getpeercert()


def _client_context(cafile: Path | None) -> ssl.SSLContext:
    """A client context that verifies the server like httpx does: against `cafile`, or
    against the system's CAs when None."""
    if cafile is None:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=str(cafile))


# ------------------------------------------------------------------ credentials
@pytest.mark.parametrize("tool", ["openssl", "python"])
def test_make_certs_chain_sans_and_node_keys(tmp_path, tool):
    out = tmp_path / "certs"
    proc = _make_certs(out, "-n", "2", "-s", "DNS:server.lan", "-s", "IP:10.1.2.3",
                       *(["-p"] if tool == "python" else []))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    expected_tool = "openssl" if tool == "openssl" else "python-cryptography"
    assert f"made with {expected_tool}" in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == [
        "ca.crt", "ca.key", "server.key", "server.pem",
        "supernode-0", "supernode-0.pub", "supernode-1", "supernode-1.pub"]
    # Private material is readable by the owner only.
    assert out.stat().st_mode & 0o777 == 0o700
    for name in ("ca.key", "server.key", "supernode-0", "supernode-1"):
        assert (out / name).stat().st_mode & 0o777 == 0o600, name

    ca = x509.load_pem_x509_certificate((out / "ca.crt").read_bytes())
    srv = x509.load_pem_x509_certificate((out / "server.pem").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert srv.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert srv.issuer == ca.subject
    # The CA's key signed the server certificate (raises InvalidSignature otherwise).
    ca.public_key().verify(srv.signature, srv.tbs_certificate_bytes, padding.PKCS1v15(),
                           srv.signature_hash_algorithm)
    assert isinstance(srv.signature_hash_algorithm, hashes.SHA256)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1"),
                                                       ipaddress.ip_address("10.1.2.3")]
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "server.lan"]
    eku = srv.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]
    # The server key belongs to the certificate.
    srv_key = serialization.load_pem_private_key((out / "server.key").read_bytes(), None)
    assert srv_key.public_key().public_numbers() == srv.public_key().public_numbers()

    # SuperNode keys: the exact loaders Flower 1.42 uses (flower-supernode
    # --auth-supernode-private-key; `flwr supernode register` for the public key).
    from flwr.cli.supernode.register import try_load_public_key
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    pubs = set()
    for i in range(2):
        priv = serialization.load_ssh_private_key((out / f"supernode-{i}").read_bytes(), None)
        assert isinstance(priv, ec.EllipticCurvePrivateKey)
        assert priv.curve.name == "secp384r1"
        registered = try_load_public_key(out / f"supernode-{i}.pub")
        assert registered == public_key_to_bytes(priv.public_key())
        pubs.add(registered)
    assert len(pubs) == 2  # one key pair per SuperNode


def test_make_certs_tls_handshake_needs_the_ca(tmp_path):
    """A TLS server with the generated certificate is accepted by a client holding the
    CA, and refused by one using the system CAs or another run's CA."""
    out, other = tmp_path / "certs", tmp_path / "other"
    for folder in (out, other):
        proc = _make_certs(folder, "-n", "0")
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not (out / "supernode-0").exists()

    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(out / "server.pem", out / "server.key")
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    stop = threading.Event()

    def serve():
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            conn.settimeout(10)
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        peer = _handshake(port, _client_context(out / "ca.crt"))
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
        for cafile in (None, other / "ca.crt"):
            with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
                _handshake(port, _client_context(cafile))
    finally:
        stop.set()
        thread.join(5)
        listener.close()


def test_make_certs_refuses_used_folder_and_bad_san(tmp_path):
    out = tmp_path / "certs"
    assert _make_certs(out, "-n", "1").returncode == 0
    before = (out / "ca.crt").read_bytes()
    again = _make_certs(out, "-n", "1")
    assert again.returncode == 2 and "already holds credentials" in again.stderr
    assert (out / "ca.crt").read_bytes() == before  # nothing overwritten
    bad = _make_certs(tmp_path / "x", "-s", "server.lan")
    assert bad.returncode == 2 and "expected IP:ADDRESS or DNS:NAME" in bad.stderr


def test_deploy_script_parses_secure_flag():
    def run(*args):
        return subprocess.run([*NICE, "bash", str(DEPLOY), *args], capture_output=True,
                              text=True, timeout=60, env=_env())

    for flag in ("-h", "--help"):
        out = run(flag)
        assert out.returncode == 0 and "-s, --secure" in out.stdout
    bad = run("--secur")
    assert bad.returncode == 2 and "Unknown option --secur" in bad.stderr
    # Flags are parsed before any work: a bad value with --secure fails fast (no
    # work folder, no certificates).
    bad_n = run("--secure", "-n", "0")
    assert bad_n.returncode == 2 and "-n must be a positive integer" in bad_n.stderr


# ------------------------------------------------------------------ deployment
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _flwr_json(args: list[str], flwr_home: Path) -> dict:
    out = subprocess.run([*NICE, "flwr", *args, "--format", "json"], capture_output=True,
                         text=True, timeout=60, env=_env(FLWR_HOME=str(flwr_home)))
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"success": False, "unparsed": out.stdout + out.stderr}


def _connection(home: Path, port: int, security: str) -> Path:
    home.mkdir(parents=True)
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "c"\n\n[superlink.c]\naddress = "127.0.0.1:{port}"\n'
        f"{security}\n")
    return home


def _start_supernode(tmp: Path, name: str, port: int, args: list[str], retries: int = 2,
                     wait_s: int = 20) -> subprocess.Popen:
    """A SuperNode in its own process group, its output in tmp/NAME.log. (Not a pipe:
    the SuperNode's `flower-superexec` child outlives it for a while and would hold a
    pipe open.) It gives up connecting after `retries` retries or `wait_s` seconds."""
    home = tmp / f"home-{name}"
    home.mkdir()
    with open(tmp / f"{name}.log", "w") as log:
        return subprocess.Popen(
            [*NICE, "flower-supernode", *args, "--superlink", f"127.0.0.1:{port}",
             "--max-retries", str(retries), "--max-wait-time", str(wait_s),
             "--host", "127.0.0.1", "--port", str(_free_port())],
            stdout=log, stderr=subprocess.STDOUT, cwd=tmp, env=_env(FLWR_HOME=str(home)),
            start_new_session=True)


def _kill_group(proc: subprocess.Popen, grace: float = 15.0) -> None:
    """SIGTERM the process group of `proc` (also when `proc` itself has exited: its
    children may not have), then SIGKILL what is left after `grace` seconds."""
    for sig, wait_s in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass


@pytest.mark.slow
def test_secure_deployment_runs_and_refuses_strangers(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    work = tmp_path / "deploy"
    script = subprocess.Popen(
        [*NICE, "bash", str(DEPLOY), "--secure", "-n", "2", "-t", "400", "-q",
         "-w", str(work), "--", "task=digits", "num-server-rounds=1", "partition=iid",
         f"tracking-uri={uri}", "experiment=deploy-secure"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(),
        start_new_session=True)
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(target=lambda: [lines.put(ln) for ln in script.stdout],
                              daemon=True)
    reader.start()
    log: list[str] = []
    probes: list[subprocess.Popen] = []
    try:
        # Wait until both registered SuperNodes are online (the run starts next).
        deadline = time.monotonic() + 240
        while not any("SuperNode(s) online" in ln for ln in log):
            assert time.monotonic() < deadline and script.poll() is None, "".join(log)
            try:
                log.append(lines.get(timeout=1))
            except queue.Empty:
                pass
        conn = tomllib.loads((work / "flwr-home" / "config.toml").read_text())
        address = conn["superlink"]["deploy"]["address"]
        port = int(address.rsplit(":", 1)[1])
        ca = work / "certs" / "ca.crt"
        assert conn["superlink"]["deploy"]["root-certificates"] == str(ca)
        assert "insecure" not in conn["superlink"]["deploy"]

        # Strangers: an EC P-384 key pair the SuperLink never saw ...
        rogue = ec.generate_private_key(ec.SECP384R1())
        rogue_key = tmp_path / "rogue"
        rogue_key.write_bytes(rogue.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
            serialization.NoEncryption()))
        rogue_key.chmod(0o600)
        # ... used by a SuperNode that trusts the CA (TLS works, authentication
        # must not), and by one that does not have the CA (TLS must fail).
        probes.append(_start_supernode(tmp_path, "unregistered", port,
                                       ["--root-certificates", str(ca),
                                        "--auth-supernode-private-key", str(rogue_key)]))
        probes.append(_start_supernode(tmp_path, "no-ca", port,
                                       ["--auth-supernode-private-key", str(rogue_key)]))
        # ... and, with no credentials at all, one that trusts the CA but has no key
        # (it tries to register itself), and one that speaks plain HTTP.
        probes.append(_start_supernode(tmp_path, "no-key", port,
                                       ["--root-certificates", str(ca)]))
        probes.append(_start_supernode(tmp_path, "plain-http", port, ["--insecure"],
                                       retries=1, wait_s=10))

        # The port speaks TLS with a certificate for 127.0.0.1 that only the CA vouches for.
        peer = _handshake(port, _client_context(ca))
        assert ("IP Address", "127.0.0.1") in peer["subjectAltName"]
        with pytest.raises(ssl.SSLCertVerificationError, match="CERTIFICATE_VERIFY_FAILED"):
            _handshake(port, _client_context(None))

        # The CLI: without the CA, or in plain HTTP, it cannot even list the nodes.
        no_ca = _connection(tmp_path / "cli-no-ca", port, "")
        plain = _connection(tmp_path / "cli-plain", port, "insecure = true")
        for home in (no_ca, plain):
            reply = _flwr_json(["supernode", "list", "c"], home)
            assert reply.get("success") is False and "nodes" not in reply, (home, reply)

        for probe in probes:
            probe.wait(timeout=90)
        unregistered = (tmp_path / "unregistered.log").read_text()
        no_ca_out = (tmp_path / "no-ca.log").read_text()
        assert probes[0].returncode != 0, unregistered
        assert "Failed to activate SuperNode" in unregistered, unregistered
        assert probes[1].returncode != 0, no_ca_out
        assert "CERTIFICATE_VERIFY_FAILED" in no_ca_out, no_ca_out
        assert "Failed to activate SuperNode" not in no_ca_out  # stopped at TLS already
        no_key = (tmp_path / "no-key.log").read_text()
        assert probes[2].returncode != 0, no_key
        assert "All SuperNodes must be registered via the CLI" in no_key, no_key
        plain_out = (tmp_path / "plain-http.log").read_text()
        assert probes[3].returncode != 0, plain_out
        assert "Connection attempt failed" in plain_out, plain_out
        assert "Server disconnected without sending a response" in plain_out, plain_out

        # The SuperLink (with the CA) lists exactly the 2 registered nodes, both online.
        assert script.poll() is None, "the run ended before the probes were done"
        nodes = _flwr_json(["supernode", "list", "deploy"], work / "flwr-home")
        assert nodes.get("success") is True, nodes
        registered = re.findall(r"registered SuperNode \d+'s public key .*: node id (\d+)",
                                "".join(log))
        assert len(registered) == 2, "".join(log)
        assert sorted((n["node-id"], n["status"]) for n in nodes["nodes"]) == sorted(
            (nid, "online") for nid in registered)

        script.wait(timeout=500)
        reader.join(30)
    finally:
        for probe in probes:
            _kill_group(probe)
        # The script's own clean-up (trap on SIGTERM) stops the Flower processes it
        # started, in their own sessions, within its 15 s grace: give it time.
        _kill_group(script, grace=45.0)
    while not lines.empty():
        log.append(lines.get())
    output = "".join(log)
    assert script.returncode == 0, output[-4000:]
    assert "mode: SECURE" in output and "(TLS, --enable-supernode-auth)" in output

    result = json.loads((work / "result.json").read_text())
    assert result["status"] == "finished:completed"
    sec = result["security"]
    assert sec["tls"] is True and sec["supernode_auth"] is True
    assert len(sec["registered_node_ids"]) == 2
    assert sorted((n["node-id"], n["status"]) for n in sec["supernodes_at_start"]) == sorted(
        (nid, "online") for nid in sec["registered_node_ids"])
    # The SuperLink itself refused the unregistered key at activation (HTTP 412).
    superlink_log = (work / "superlink.log").read_text()
    assert "No SuperNode found with the given public key" in superlink_log
    assert '"POST /v1/fleet/activate-node HTTP/1.1" 412' in superlink_log

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("deploy-secure").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    hist = metric_history(uri, runs[0].info.run_id)
    # Only the 2 registered SuperNodes trained; none failed.
    assert [v for _, v in hist["clients/trained"]] == [2]
    assert [v for _, v in hist["clients/failed"]] == [0]
    # TLS changes neither count: fedpers' payload totals and the SuperLink's own count
    # agree as in the insecure test (tests/test_deployment.py).
    ours_up = hist["comm/bytes_up_total"][-1][1]
    ours_down = hist["comm/bytes_down_total"][-1][1]
    link = result["superlink_bytes"]
    assert 0.8 * ours_up <= link["inbound-bytes"] <= 1.2 * ours_up + 20_000, (ours_up, link)
    assert 0.8 * ours_down <= link["outbound-bytes"] <= 1.2 * ours_down + 20_000, (
        ours_down, link)
