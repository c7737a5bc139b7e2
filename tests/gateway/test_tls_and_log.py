"""TLS material (CA, server and SNI certificates) and access-log line formatting."""

from __future__ import annotations

import io
import json
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from config.settings import Settings
from gateway.accesslog import AccessEntry, AccessLog, _Clock, format_entry
from gateway.tls import SniMinter, ensure_tls, server_context


def settings_for(home: Path, domain: str = "localhost") -> Settings:
    return Settings(home=home, domain=domain)


def sans(path: Path) -> set[str]:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(ext.get_values_for_type(x509.DNSName)) | {
        str(ip) for ip in ext.get_values_for_type(x509.IPAddress)
    }


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


def test_a_new_domain_remakes_the_server_certificate_but_keeps_the_ca(tmp_path: Path) -> None:
    first = ensure_tls(settings_for(tmp_path))
    ca = first.ca_cert.read_bytes()
    second = ensure_tls(settings_for(tmp_path, domain="ml.example.test"))
    assert second.ca_cert.read_bytes() == ca
    assert "*.ml.example.test" in sans(second.cert)


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


def test_access_log_writes_the_file_and_the_structlog_stream(tmp_path: Path) -> None:
    stream = io.StringIO()
    log = AccessLog(tmp_path / "gateway" / "access.log", stream=stream)
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
