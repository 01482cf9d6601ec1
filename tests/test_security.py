"""TLS, mutual TLS and bearer tokens, with certificates this test makes for itself."""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc_health.v1 import health_pb2, health_pb2_grpc

from seqpredict.server.config import Settings
from seqpredict.v1 import seqpredict_pb2 as pb
from seqpredict.v1 import seqpredict_pb2_grpc as pb_grpc
from tests.conftest import RunningServer
from tests.serverproc import ServerProcess

TOKEN = "s3cret-token-for-tests"


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _certificate(subject: str, key, issuer_name: x509.Name | None, issuer_key, ca: bool) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name or name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


class Pki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate."""

    def __init__(self, folder: Path) -> None:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca = _certificate("seqpredict test CA", ca_key, None, ca_key, ca=True)
        self.ca = ca.public_bytes(serialization.Encoding.PEM)
        self.files: dict[str, Path] = {"ca": folder / "ca.pem"}
        self.files["ca"].write_bytes(self.ca)
        for who in ("server", "client"):
            key = ec.generate_private_key(ec.SECP256R1())
            cert = _certificate(f"seqpredict {who}", key, ca.subject, ca_key, ca=False)
            setattr(self, f"{who}_key", _pem_key(key))
            setattr(self, f"{who}_cert", cert.public_bytes(serialization.Encoding.PEM))
            self.files[f"{who}_key"] = folder / f"{who}.key"
            self.files[f"{who}_cert"] = folder / f"{who}.pem"
            self.files[f"{who}_key"].write_bytes(_pem_key(key))
            self.files[f"{who}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _predict(channel: grpc.Channel, metadata=None) -> pb.PredictResponse:
    stub = pb_grpc.SequencePredictorStub(channel)
    (response,) = list(
        stub.Predict(iter([pb.PredictRequest(session_id="tls", text="a")]), metadata=metadata, timeout=10)
    )
    return response


def _health(channel: grpc.Channel) -> int:
    return health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10).status


def test_tls(pki):
    server = RunningServer(tls_cert=str(pki.files["server_cert"]), tls_key=str(pki.files["server_key"]))
    try:
        creds = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        with grpc.secure_channel(server.address, creds) as channel:
            assert _predict(channel).position >= 1
        with grpc.insecure_channel(server.address) as plaintext, pytest.raises(grpc.RpcError) as err:
            _predict(plaintext)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


def test_mutual_tls_requires_a_client_certificate(pki):
    server = RunningServer(
        tls_cert=str(pki.files["server_cert"]),
        tls_key=str(pki.files["server_key"]),
        tls_client_ca=str(pki.files["ca"]),
    )
    try:
        with_cert = grpc.ssl_channel_credentials(pki.ca, private_key=pki.client_key, certificate_chain=pki.client_cert)
        with grpc.secure_channel(server.address, with_cert) as channel:
            assert _predict(channel).position >= 1
        without = grpc.ssl_channel_credentials(root_certificates=pki.ca)
        with grpc.secure_channel(server.address, without) as channel, pytest.raises(grpc.RpcError) as err:
            _predict(channel)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.stop()


@pytest.fixture(scope="module")
def authed(tmp_path_factory):
    tokens = tmp_path_factory.mktemp("auth") / "tokens"
    tokens.write_text(f"# one token per line\n{TOKEN}\n\nsecond-token\n")
    server = RunningServer(auth_tokens_file=str(tokens))
    yield server
    server.stop()


@pytest.mark.parametrize(
    "metadata",
    [None, (("authorization", "Bearer wrong"),), (("authorization", TOKEN),), (("authorization", f"Basic {TOKEN}"),)],
    ids=["missing", "wrong", "no-scheme", "basic"],
)
def test_calls_without_a_valid_token_are_unauthenticated(authed, metadata):
    with grpc.insecure_channel(authed.address) as channel:
        with pytest.raises(grpc.RpcError) as err:
            _predict(channel, metadata)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        stub = pb_grpc.SequencePredictorStub(channel)
        for call, request in ((stub.GetModelInfo, pb.GetModelInfoRequest()), (stub.GetSession, pb.GetSessionRequest())):
            with pytest.raises(grpc.RpcError) as err:
                call(request, metadata=metadata, timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_valid_tokens_are_accepted_and_health_needs_none(authed):
    with grpc.insecure_channel(authed.address) as channel:
        for token in (TOKEN, "second-token"):
            assert _predict(channel, (("authorization", f"Bearer {token}"),)).position >= 1
        assert _health(channel) == health_pb2.HealthCheckResponse.SERVING


def test_tokens_from_the_environment_are_never_printed():
    settings = Settings.from_args([], environ={"SEQPREDICT_AUTH_TOKENS": f"{TOKEN},other"})
    assert settings.auth_tokens == f"{TOKEN},other"
    described = settings.describe()
    assert TOKEN not in described and "<2 token(s)>" in described
    server = RunningServer(auth_tokens=settings.auth_tokens)
    try:
        with grpc.insecure_channel(server.address) as channel:
            assert _predict(channel, (("authorization", f"Bearer {TOKEN}"),)).position >= 1
    finally:
        server.stop()


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "BeArEr"])
def test_the_bearer_scheme_is_case_insensitive(authed, scheme):
    """RFC 6750 / RFC 9110: auth schemes are case-insensitive; the token itself is not."""
    with grpc.insecure_channel(authed.address) as channel:
        assert _predict(channel, (("authorization", f"{scheme} {TOKEN}"),)).position >= 1
        with pytest.raises(grpc.RpcError) as err:
            _predict(channel, (("authorization", f"{scheme} {TOKEN.upper()}"),))
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(
    ("environ", "file_text", "message"),
    [
        ({"SEQPREDICT_AUTH_TOKENS": ","}, None, "auth_tokens is set but holds no token"),
        ({"SEQPREDICT_AUTH_TOKENS": " "}, None, "auth_tokens is set but holds no token"),
        ({"SEQPREDICT_AUTH_TOKENS": ""}, None, "auth_tokens is set but holds no token"),
        ({}, "", "holds no token (only blank lines or # comments)"),
        ({}, "# tokens go here\n\n   \n# none yet\n", "holds no token (only blank lines or # comments)"),
    ],
    ids=["comma", "blank", "empty", "empty-file", "comments-only-file"],
)
def test_auth_that_yields_no_token_is_a_start_up_error_never_an_open_server(tmp_path, environ, file_text, message):
    """Asking for auth and getting no token must stop the server (exit 2, naming the setting),
    not start it accepting everyone."""
    env = dict(environ)
    if file_text is not None:
        tokens = tmp_path / "tokens"
        tokens.write_text(file_text)
        env["SEQPREDICT_AUTH_TOKENS_FILE"] = str(tokens)
    server = ServerProcess(tmp_path / "server.log", env=env, wait=False)
    assert server.wait(60) == 2
    assert message in server.log() and "Traceback" not in server.log()
    assert "plaintext" not in server.log(), "it never started serving"
