"""What the integration tests share: a certificate authority of the test session's own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest


def openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


class TestCA:
    """A throw-away CA (``ca.crt``) that issues certificates for loopback servers and
    clients; keys are unencrypted PKCS#8 PEM, as Redis, Kafka and Python all read them."""

    __test__ = False  # a helper, not a test class

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.key, self.cert = directory / "ca.key", directory / "ca.crt"
        openssl(
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=flowlearn test CA",
            "-keyout",
            self.key,
            "-out",
            self.cert,
        )

    def issue(self, name: str, san: str = "IP:127.0.0.1") -> tuple[Path, Path]:
        """A certificate for ``name`` valid for ``san``: (certificate, key) files."""
        key, csr, cert = (self.directory / f"{name}.{ext}" for ext in ("key", "csr", "crt"))
        openssl(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            key,
            "-out",
            csr,
        )
        ext = self.directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n")
        openssl(
            "x509",
            "-req",
            "-in",
            csr,
            "-CA",
            self.cert,
            "-CAkey",
            self.key,
            "-CAcreateserial",
            "-days",
            "1",
            "-extfile",
            ext,
            "-out",
            cert,
        )
        return cert, key


@pytest.fixture(scope="session")
def test_ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not on PATH")
    return TestCA(tmp_path_factory.mktemp("ca"))
