#!/usr/bin/env bash
# Make the credentials for a Flower SuperLink with TLS and SuperNode authentication:
# a self-signed CA, a server certificate signed by it, and one EC key pair per SuperNode.
#
#   scripts/make_certs.sh [-n NUM_SUPERNODES] [-s SAN]... [-d DAYS] [-p] OUTDIR
#
# OUTDIR (created, mode 700; must not contain an earlier set) receives
#   ca.crt                     CA certificate: give it to every SuperNode
#                              (--root-certificates) and to the `flwr` CLI
#                              (root-certificates in the connection)
#   ca.key                     CA private key: only needed to sign more certificates
#   server.pem, server.key     SuperLink certificate (SAN: IP:127.0.0.1, DNS:localhost and
#                              every -s entry) and its private key
#   supernode-I, supernode-I.pub
#                              SuperNode I's EC P-384 key pair in OpenSSH format, the
#                              format `flower-supernode --auth-supernode-private-key` and
#                              `flwr supernode register` read
# Private keys are mode 600. The certificates are made with `openssl` (RSA 2048,
# SHA-256); without openssl on PATH, or with -p, with Python's `cryptography` package
# (a dependency of flwr). The SuperNode keys are always made with `cryptography`.
# See docs/deployment.md ("Secure mode").
set -euo pipefail

NUM_SUPERNODES=2
DAYS=30
USE_PYTHON=0
SANS=("IP:127.0.0.1" "DNS:localhost")

usage() {
    cat <<EOF
Usage: $(basename "$0") [-n NUM_SUPERNODES] [-s SAN]... [-d DAYS] [-p] OUTDIR

Make a self-signed CA, a SuperLink TLS certificate signed by it and one EC P-384
key pair per SuperNode (OpenSSH format) in OUTDIR.

Options:
  -n NUM   number of SuperNode key pairs (default: 2; 0 for none)
  -s SAN   extra subjectAltName of the server certificate, e.g. DNS:server.lan or
           IP:10.0.0.5 (repeatable; IP:127.0.0.1 and DNS:localhost are always in)
  -d DAYS  validity of the certificates in days (default: 30)
  -p       make the certificates with Python's cryptography instead of openssl
  -h       show this help
EOF
}

while getopts ":n:s:d:ph" opt; do
    case "$opt" in
        n) NUM_SUPERNODES="$OPTARG" ;;
        s) SANS+=("$OPTARG") ;;
        d) DAYS="$OPTARG" ;;
        p) USE_PYTHON=1 ;;
        h) usage; exit 0 ;;
        :) echo "Option -$OPTARG needs a value" >&2; usage >&2; exit 2 ;;
        *) echo "Unknown option -$OPTARG" >&2; usage >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
(($# == 1)) || { usage >&2; exit 2; }
OUTDIR="$1"

[[ "$NUM_SUPERNODES" =~ ^[0-9]+$ ]] || { echo "-n must be a non-negative integer" >&2; exit 2; }
[[ "$DAYS" =~ ^[1-9][0-9]*$ ]] || { echo "-d must be a positive integer" >&2; exit 2; }
for san in "${SANS[@]}"; do
    [[ "$san" =~ ^(IP|DNS):[A-Za-z0-9.:*-]+$ ]] \
        || { echo "bad SAN '$san': expected IP:ADDRESS or DNS:NAME" >&2; exit 2; }
done
if [[ -e "$OUTDIR/ca.crt" || -e "$OUTDIR/server.key" || -e "$OUTDIR/supernode-0" ]]; then
    echo "'$OUTDIR' already holds credentials; pass a new folder" >&2
    exit 2
fi

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-}"
if [[ -z "$PYTHON" ]]; then
    if [[ -x "$SCRIPT_DIR/../.venv/bin/python" ]]; then
        PYTHON="$SCRIPT_DIR/../.venv/bin/python"
    else
        PYTHON="$(command -v python3)"
    fi
fi
"$PYTHON" -c 'import cryptography' 2>/dev/null \
    || { echo "Python '$PYTHON' lacks the 'cryptography' package (install flwr)" >&2; exit 1; }
if ((!USE_PYTHON)) && ! command -v openssl >/dev/null; then
    echo "openssl not found: making the certificates with Python's cryptography" >&2
    USE_PYTHON=1
fi

umask 077
mkdir -p "$OUTDIR"
chmod 700 "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SAN_LIST="$(IFS=,; echo "${SANS[*]}")"

# ---------------------------------------------------------------- certificates
if ((USE_PYTHON)); then
    TOOL="python-cryptography"
    "$PYTHON" - "$OUTDIR" "$DAYS" "${SANS[@]}" <<'EOF_PY'
import datetime, ipaddress, pathlib, sys
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

out, days, sans = pathlib.Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3:]
now = datetime.datetime.now(datetime.timezone.utc)
start, end = now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=days)


def write_key(path, key):
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                       serialization.NoEncryption()))
    path.chmod(0o600)


def name(cn):
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ca_cert = (x509.CertificateBuilder().subject_name(name("fedpers local CA"))
           .issuer_name(name("fedpers local CA")).public_key(ca_key.public_key())
           .serial_number(x509.random_serial_number()).not_valid_before(start)
           .not_valid_after(end)
           .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
           .add_extension(x509.KeyUsage(False, False, False, False, False, True, True,
                                        False, False), critical=True)
           .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                          critical=False)
           .sign(ca_key, hashes.SHA256()))
alt = [x509.IPAddress(ipaddress.ip_address(v)) if k == "IP" else x509.DNSName(v)
       for k, _, v in (s.partition(":") for s in sans)]
srv_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
srv_cert = (x509.CertificateBuilder().subject_name(name("fedpers SuperLink"))
            .issuer_name(ca_cert.subject).public_key(srv_key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False,
                                         False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
write_key(out / "ca.key", ca_key)
write_key(out / "server.key", srv_key)
(out / "ca.crt").write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
(out / "server.pem").write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
EOF_PY
else
    TOOL="openssl"
    LOG="$OUTDIR/openssl.log"
    : >"$LOG"
    run_openssl() { openssl "$@" >>"$LOG" 2>&1 || { cat "$LOG" >&2; exit 1; }; }
    run_openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days "$DAYS" \
        -keyout "$OUTDIR/ca.key" -out "$OUTDIR/ca.crt" -subj "/CN=fedpers local CA" \
        -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
        -addext "keyUsage=critical,keyCertSign,cRLSign"
    run_openssl req -newkey rsa:2048 -sha256 -nodes \
        -keyout "$OUTDIR/server.key" -out "$OUTDIR/server.csr" -subj "/CN=fedpers SuperLink"
    cat >"$OUTDIR/server.ext" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = $SAN_LIST
authorityKeyIdentifier = keyid
EOF
    run_openssl x509 -req -sha256 -days "$DAYS" -in "$OUTDIR/server.csr" \
        -CA "$OUTDIR/ca.crt" -CAkey "$OUTDIR/ca.key" -CAcreateserial \
        -extfile "$OUTDIR/server.ext" -out "$OUTDIR/server.pem"
    run_openssl verify -CAfile "$OUTDIR/ca.crt" "$OUTDIR/server.pem"
    rm -f "$OUTDIR/server.csr" "$OUTDIR/ca.srl" "$OUTDIR/server.ext" "$LOG"
fi
chmod 644 "$OUTDIR/ca.crt" "$OUTDIR/server.pem"

# -------------------------------------------------------------- SuperNode keys
# EC P-384 in OpenSSH format, as `ssh-keygen -t ecdsa -b 384` makes them (the format
# Flower 1.42 reads; it accepts NIST curves only).
if ((NUM_SUPERNODES > 0)); then
    "$PYTHON" - "$OUTDIR" "$NUM_SUPERNODES" <<'EOF_PY'
import pathlib, sys
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

out, n = pathlib.Path(sys.argv[1]), int(sys.argv[2])
for i in range(n):
    key = ec.generate_private_key(ec.SECP384R1())
    priv = out / f"supernode-{i}"
    priv.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.OpenSSH,
                                       serialization.NoEncryption()))
    priv.chmod(0o600)
    pub = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                        serialization.PublicFormat.OpenSSH)
    (out / f"supernode-{i}.pub").write_bytes(pub + f" fedpers-supernode-{i}\n".encode())
    (out / f"supernode-{i}.pub").chmod(0o644)
EOF_PY
fi

echo "[certs] made with $TOOL in $OUTDIR:"
echo "[certs]   CA certificate ca.crt (key ca.key), valid $DAYS days"
echo "[certs]   SuperLink certificate server.pem (key server.key), SAN $SAN_LIST"
if ((NUM_SUPERNODES > 0)); then
    echo "[certs]   $NUM_SUPERNODES SuperNode key pair(s) supernode-I / supernode-I.pub" \
         "(EC P-384, OpenSSH format)"
fi
