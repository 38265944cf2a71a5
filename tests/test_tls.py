"""TLS: `ahstream serve --tls-cert/--tls-key` serves health, WHIP and events over https/wss."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import wave
from pathlib import Path

import pytest

from tests.conftest import ROOT, ServeProcess


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost: (cert.pem, key.pem)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor the openssl CLI is available")
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            + ["-nodes", "-days", "2", "-subj", "/CN=127.0.0.1", "-keyout", str(key)]
            + ["-out", str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
            check=True,
            capture_output=True,
        )
        return cert, key
    import ipaddress

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = self_signed(directory)
    srv = ServeProcess("--tls-cert", str(cert), "--tls-key", str(key), cafile=cert)
    srv.cert = cert
    yield srv
    srv.stop()


def test_health_over_https_only(tls_server):
    assert tls_server.url.startswith("https://")
    assert tls_server.health()["status"] == "ok"
    # A client that does not trust the CA is refused the handshake ...
    with pytest.raises(urllib.error.URLError) as err:
        urllib.request.urlopen(tls_server.url + "/healthz", timeout=5)
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    # ... and plain http on the TLS port gets no answer.
    plain = tls_server.url.replace("https://", "http://") + "/healthz"
    with pytest.raises((urllib.error.URLError, ConnectionError, OSError)):
        urllib.request.urlopen(plain, timeout=5)
    assert tls_server.health()["status"] == "ok"


def test_whip_and_events_over_https(tls_server, audio_only_wav, tmp_path):
    """`ahstream send` publishes over https and reads its events over wss (CA via SSL_CERT_FILE)."""
    # The first 3 s of the speech: enough for final words, and the call's length is not tested.
    wav = tmp_path / "speech_3s.wav"
    with wave.open(str(audio_only_wav), "rb") as src, wave.open(str(wav), "wb") as dst:
        dst.setparams(src.getparams())
        dst.writeframes(src.readframes(3 * src.getframerate()))
    events_file = tmp_path / "events.jsonl"
    env = {**os.environ, "SSL_CERT_FILE": str(tls_server.cert)}
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "send", str(wav)]
        + ["--url", tls_server.url, "--events", str(events_file), "--quiet"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    events = [json.loads(line) for line in events_file.read_text().splitlines()]
    assert events[0]["type"] == "session.started"
    assert [e for e in events if e["type"] == "transcript" and e["final"]]
    assert events[-1]["type"] == "session.ended"
    assert tls_server.health()["status"] == "ok"


def test_tls_options_are_checked_at_start(tmp_path):
    missing = tmp_path / "nope.pem"
    for args in (["--tls-cert", str(missing)], ["--tls-cert", str(missing), "--tls-key", "x"]):
        proc = subprocess.run(
            [sys.executable, "-m", "stream.cli", "serve", "--port", "1", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 2
        assert "--tls" in proc.stderr or "TLS" in proc.stderr
