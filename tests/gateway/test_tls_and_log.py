"""TLS material (CA, server and SNI certificates), the access log's lines, file and rotation."""

from __future__ import annotations

import datetime as dt
import io
import ipaddress
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from structlog.testing import capture_logs

from config.settings import Settings
from gateway.accesslog import (
    MAX_PATH_CHARS,
    AccessEntry,
    AccessLog,
    RotatingFile,
    _Clock,
    find_request,
    format_entry,
)
from gateway.tls import SniMinter, ensure_tls, server_context


def settings_for(home: Path, domain: str = "localhost") -> Settings:
    return Settings(home=home, domain=domain)


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


def permitted(ca_path: Path) -> set[str]:
    """The CA's permitted name constraints, as strings."""
    cert = x509.load_pem_x509_certificate(ca_path.read_bytes())
    constraints = cert.extensions.get_extension_for_class(x509.NameConstraints).value
    return {str(name.value) for name in constraints.permitted_subtrees or []}


def issue(ca_dir: Path, out: Path, *, dns: list[str] = (), ips: list[str] = ()) -> tuple[Path, Path]:  # type: ignore[assignment]
    """A server certificate for these names signed with the CA's key, as anyone holding the
    key could make one; its certificate and key files."""
    ca = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((ca_dir / "ca-key.pem").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns]
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ips]
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        # A common name that is no host name: OpenSSL checks a host-like one against the DNS
        # constraints when the certificate has no DNS name.
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test leaf")]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    out.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = out / "leaf.pem", out / "leaf-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def handshake(cert: Path, key: Path, ca: Path, server_name: str) -> None:
    """A real TLS handshake in memory: a server with ``cert``, a client trusting ``ca`` only
    and checking ``server_name``. Raises ``ssl.SSLCertVerificationError`` when it refuses."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    client_ctx = ssl.create_default_context(cafile=str(ca))
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(to_client, to_server, server_hostname=server_name)
    server = server_ctx.wrap_bio(to_server, to_client, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):  # a TLS 1.3 handshake takes a few round trips
        for name, side in (("client", client), ("server", server)):
            if not done[name]:
                try:
                    side.do_handshake()
                    done[name] = True
                except ssl.SSLWantReadError:
                    pass
        if all(done.values()):
            return
    raise AssertionError("the handshake did not finish")


def test_first_start_makes_a_ca_and_a_server_certificate(tmp_path: Path) -> None:
    material = ensure_tls(settings_for(tmp_path, domain="ml.example.test"))
    assert material.ca_cert == tmp_path / "tls" / "ca.pem"
    assert material.ca_key.stat().st_mode & 0o777 == 0o600
    assert material.key.stat().st_mode & 0o777 == 0o600
    assert {"localhost", "*.localhost", "ml.example.test", "*.ml.example.test", "127.0.0.1"} <= (
        sans(material.cert)
    )
    server = x509.load_pem_x509_certificate(material.cert.read_bytes())
    ca = x509.load_pem_x509_certificate(material.ca_cert.read_bytes())
    server.verify_directly_issued_by(ca)


def test_later_starts_reuse_the_material(tmp_path: Path) -> None:
    first = ensure_tls(settings_for(tmp_path))
    before = (first.ca_cert.read_bytes(), first.cert.read_bytes())
    second = ensure_tls(settings_for(tmp_path))
    assert (second.ca_cert.read_bytes(), second.cert.read_bytes()) == before


def test_a_new_domain_makes_a_new_ca_constrained_to_it_and_a_new_server_certificate(tmp_path: Path) -> None:
    first = ensure_tls(settings_for(tmp_path))
    ca = first.ca_cert.read_bytes()
    second = ensure_tls(settings_for(tmp_path, domain="ml.example.test"))
    assert second.ca_cert.read_bytes() != ca
    assert "ml.example.test" in permitted(second.ca_cert)
    assert "*.ml.example.test" in sans(second.cert)
    server = x509.load_pem_x509_certificate(second.cert.read_bytes())
    server.verify_directly_issued_by(x509.load_pem_x509_certificate(second.ca_cert.read_bytes()))


def test_the_ca_is_constrained_critically_to_the_names_the_gateway_serves(tmp_path: Path) -> None:
    material = ensure_tls(settings_for(tmp_path, domain="ml.example.test"))
    ca = x509.load_pem_x509_certificate(material.ca_cert.read_bytes())
    assert ca.extensions.get_extension_for_class(x509.NameConstraints).critical
    assert permitted(material.ca_cert) == {"localhost", "ml.example.test", "127.0.0.0/8", "::1/128"}


def test_on_localhost_the_ca_permits_localhost_and_loopback_only(tmp_path: Path) -> None:
    material = ensure_tls(settings_for(tmp_path))
    assert permitted(material.ca_cert) == {"localhost", "127.0.0.0/8", "::1/128"}


@pytest.mark.parametrize(
    "server_name",
    ["localhost", "ml.example.test", "my-ep.ml.example.test", "127.0.0.1", "::1"],
)
def test_the_gateway_certificates_verify_for_every_name_they_serve(tmp_path: Path, server_name: str) -> None:
    material = ensure_tls(settings_for(tmp_path, domain="ml.example.test"))
    handshake(material.cert, material.key, material.ca_cert, server_name)


def test_a_minted_endpoint_certificate_verifies(tmp_path: Path) -> None:
    material = ensure_tls(settings_for(tmp_path))
    SniMinter(material, lambda _: True).callback(FakeSslObject(), "my-ep.localhost", None)  # type: ignore[arg-type]
    sni = material.sni_dir
    handshake(
        sni / "my-ep.localhost.pem", sni / "my-ep.localhost-key.pem", material.ca_cert, "my-ep.localhost"
    )


@pytest.mark.parametrize(
    ("dns", "ips", "server_name", "verifies"),
    [
        (["my-ep.localhost"], [], "my-ep.localhost", True),
        (["other.ml.example.test"], [], "other.ml.example.test", True),
        ([], ["127.0.0.2"], "127.0.0.2", True),
        (["www.example.com"], [], "www.example.com", False),
        (["example.test"], [], "example.test", False),
        (["evil-ml.example.test"], [], "evil-ml.example.test", False),
        (["localhost.evil.test"], [], "localhost.evil.test", False),
        ([], ["10.0.0.1"], "10.0.0.1", False),
        (["my-ep.localhost", "www.example.com"], [], "my-ep.localhost", False),
    ],
    ids=[
        "endpoint_under_localhost",
        "endpoint_under_the_domain",
        "loopback_address",
        "another_site",
        "the_domain_s_parent",
        "a_lookalike_of_the_domain",
        "localhost_as_a_prefix",
        "a_private_address",
        "a_served_name_beside_another",
    ],
)
def test_a_certificate_the_ca_key_signs_for_another_name_fails_verification(
    tmp_path: Path, dns: list[str], ips: list[str], server_name: str, verifies: bool
) -> None:
    material = ensure_tls(settings_for(tmp_path, domain="ml.example.test"))
    cert, key = issue(material.ca_cert.parent, tmp_path / "leaf", dns=dns, ips=ips)
    if verifies:
        handshake(cert, key, material.ca_cert, server_name)
    else:
        with pytest.raises(ssl.SSLCertVerificationError, match="subtree violation"):
            handshake(cert, key, material.ca_cert, server_name)


def test_an_unconstrained_ca_on_disk_is_replaced_on_start_and_logged(tmp_path: Path) -> None:
    tls = tmp_path / "tls"
    tls.mkdir()
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Tidegate local CA")])
    now = dt.datetime.now(dt.UTC)
    old = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    (tls / "ca.pem").write_bytes(old.public_bytes(serialization.Encoding.PEM))
    (tls / "ca-key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with capture_logs() as logs:
        material = ensure_tls(settings_for(tmp_path))
    assert [e["event"] for e in logs if e["event"].startswith("tls.ca")] == ["tls.ca_replaced"]
    assert permitted(material.ca_cert) == {"localhost", "127.0.0.0/8", "::1/128"}
    handshake(material.cert, material.key, material.ca_cert, "localhost")  # the server cert follows


def test_server_context_loads(tmp_path: Path) -> None:
    context = server_context(ensure_tls(settings_for(tmp_path)))
    assert context.sni_callback is not None


class FakeSslObject:
    context: ssl.SSLContext | None = None


@pytest.mark.parametrize(
    ("server_name", "minted"),
    [
        ("my-ep.localhost", True),
        ("MY-EP.localhost", True),
        ("unknown.localhost", False),
        ("a.b.localhost", False),
        ("my-ep.example.com", False),
        ("localhost", False),
        (None, False),
    ],
)
def test_sni_mints_exact_names_of_served_endpoints_only(
    tmp_path: Path, server_name: str | None, minted: bool
) -> None:
    material = ensure_tls(settings_for(tmp_path))
    minter = SniMinter(material, serves=lambda label: label == "my-ep")
    sslobj = FakeSslObject()
    minter.callback(sslobj, server_name, ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER))  # type: ignore[arg-type]
    assert (sslobj.context is not None) is minted
    files = {p.name for p in material.sni_dir.iterdir()}
    assert files == ({"my-ep.localhost.pem", "my-ep.localhost-key.pem"} if minted else set())
    if minted:
        assert sans(material.sni_dir / "my-ep.localhost.pem") == {"my-ep.localhost"}
        assert (material.sni_dir / "my-ep.localhost-key.pem").stat().st_mode & 0o777 == 0o600


def test_minted_certificate_is_reused_from_disk(tmp_path: Path) -> None:
    material = ensure_tls(settings_for(tmp_path))
    SniMinter(material, lambda _: True).callback(FakeSslObject(), "my-ep.localhost", None)  # type: ignore[arg-type]
    pem = (material.sni_dir / "my-ep.localhost.pem").read_bytes()
    SniMinter(material, lambda _: True).callback(FakeSslObject(), "my-ep.localhost", None)  # type: ignore[arg-type]
    assert (material.sni_dir / "my-ep.localhost.pem").read_bytes() == pem


ENTRY = AccessEntry(
    time=1764072000.25,
    method=b"POST",
    path=b'/endpoints/my-ep/score"\\',
    endpoint="my-ep",
    deployment="blue",
    instance=None,
    status=200,
    code=None,
    latency_ms=1.23456,
    bytes_in=10,
    bytes_out=20,
    request_id='id-with-"quotes"\n',
)


def test_access_line_is_json_with_the_agreed_fields() -> None:
    line = format_entry(tuple(ENTRY), _Clock())
    fields = json.loads(line)
    assert fields == {
        "time": "2025-11-25T12:00:00.250Z",
        "method": "POST",
        "path": '/endpoints/my-ep/score"\\',
        "endpoint": "my-ep",
        "deployment": "blue",
        "instance": None,
        "status": 200,
        "code": None,
        "latency_ms": 1.235,
        "bytes_in": 10,
        "bytes_out": 20,
        "request_id": 'id-with-"quotes"\n',
    }


def test_a_long_path_is_logged_cut_with_a_marker_saying_how_much() -> None:
    path = b"/endpoints/" + b"x" * 4085  # 4096 bytes
    line = json.loads(format_entry(tuple(ENTRY._replace(path=path)), _Clock()))
    assert line["path"] == path[:MAX_PATH_CHARS].decode() + f"...[{4096 - MAX_PATH_CHARS} more bytes]"


def test_by_default_the_access_log_writes_each_line_to_its_file_only(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = AccessLog(tmp_path / "gateway" / "access.log", stream=stream)
    log.start()
    log.record(tuple(ENTRY))
    log.close()
    assert len((tmp_path / "gateway" / "access.log").read_text().splitlines()) == 1
    assert stream.getvalue() == ""


def test_the_access_log_rotates_by_size_keeping_the_newest_lines_in_order(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotating = RotatingFile(path, max_bytes=1000, backups=2)
    lines = [f"{i:09d}".ljust(99, ".") + "\n" for i in range(100)]  # 100 bytes each
    for start in range(0, 100, 7):  # flushes of several lines, as the log thread writes
        rotating.write("".join(lines[start : start + 7]).encode())
    rotating.release()
    files = [path.with_name("access.log.2"), path.with_name("access.log.1"), path]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".access.log.lock",
        "access.log",
        "access.log.1",
        "access.log.2",
    ]
    assert all(p.stat().st_size <= 1000 for p in files)
    kept = "".join(p.read_text() for p in files)
    assert lines[-1] in kept and lines[0] not in kept
    assert kept == "".join(lines[-len(kept.splitlines()) :])  # the newest lines, whole and in order


def test_two_writers_sharing_the_access_log_rotate_it_once_between_them(tmp_path: Path) -> None:
    """Two gateway processes share the file: each follows the other's rotation."""
    path = tmp_path / "access.log"
    first = RotatingFile(path, max_bytes=1000, backups=3)
    second = RotatingFile(path, max_bytes=1000, backups=3)
    lines = [f"{i:09d}".ljust(99, ".") + "\n" for i in range(60)]
    for index, line in enumerate(lines):
        (first if index % 2 else second).write(line.encode())
    first.release()
    second.release()
    files = [path.with_name(f"access.log.{n}") for n in (3, 2, 1)] + [path]
    assert all(p.stat().st_size <= 1000 for p in files)
    assert "".join(p.read_text() for p in files) == "".join(lines[-40:])


def test_access_log_echoes_to_the_structlog_stream_when_asked(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = AccessLog(tmp_path / "gateway" / "access.log", stream=stream, echo=True)
    log.start()
    log.record(tuple(ENTRY))
    log.record(tuple(ENTRY._replace(status=401, code="Unauthorized")))
    log.close()
    lines = (tmp_path / "gateway" / "access.log").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines] == [200, 401]
    echoed = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(e["event"], e["level"], e["status"]) for e in echoed] == [
        ("access", "info", 200),
        ("access", "info", 401),
    ]


def test_an_unwritable_access_log_drops_entries_but_keeps_running(tmp_path: Path) -> None:
    target = tmp_path / "access.log"
    target.mkdir()  # opening a directory for append fails
    log = AccessLog(target, stream=io.StringIO())
    log.start()
    log.record(tuple(ENTRY))
    log.close()  # returns: the thread neither died nor hung


def test_a_request_id_is_found_in_the_rotated_files_too_and_only_whole(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotating = RotatingFile(path, max_bytes=2000, backups=3)
    for i in range(40):  # about 230 bytes a line: several rotations
        entry = ENTRY._replace(request_id=f"rid-{i % 12}", status=200 + i)
        rotating.write((format_entry(tuple(entry), _Clock()) + "\n").encode())
    rotating.release()
    with path.with_name("access.log.1").open("a") as cut:  # a line a crash cut short
        cut.write('{"request_id":"rid-1", "sta\n')
    assert path.with_name("access.log.3").exists()

    found = find_request(path, 3, "rid-1")
    kept = "".join(p.read_text() for p in [path.with_name(f"access.log.{n}") for n in (3, 2, 1)] + [path])
    whole = [line for line in kept.splitlines() if line.endswith("}")]
    expected = [json.loads(line) for line in whole if '"request_id":"rid-1"' in line]
    assert found == expected and len(found) >= 2  # oldest first; rid-10 and rid-11 are others
    assert {(line["status"] - 200) % 12 for line in found} == {1}
    assert find_request(path, 3, "rid-99") == []
