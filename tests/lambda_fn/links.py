"""A loopback HTTP(S) server with every answer an image link can give, and a self-signed certificate for it.

The URL-fetch tests only ever connect to 127.0.0.1: this server plays both the photo host and the hosts a
redirect or a DNS answer would send the fetch to.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

TLS_NAME = "photos.test"  # the certificate's only name


def self_signed_cert(folder: Path, name: str = TLS_NAME) -> tuple[Path, Path]:
    """(certificate, key) PEM files for ``name``, made with the cryptography package, else the openssl CLI."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            [
                *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
                *("-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", f"/CN={name}"),
                *("-addext", f"subjectAltName=DNS:{name}"),
            ],
            check=True,
            capture_output=True,
        )
        return cert, key
    private = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert, key


class LinkServer:
    """Answers by path: ``/img.jpg`` (the image), ``/hops/N`` (N redirects, then the image),
    ``/redirect?to=URL`` (a 302 there), ``/page.html``, ``/missing`` (404), ``/empty``, ``/big`` (declares a
    gigabyte), ``/stream`` (image bytes without end, counted in ``streamed``), ``/slow`` (answers after 2 s),
    ``/drip`` (a byte every 50 ms) and ``/no-location`` (a 302 to nowhere).

    ``requests`` records (path, Host header) of every request; with ``tls``, ``sni`` the names clients sent.
    """

    def __init__(self, image: bytes, *, cert: tuple[Path, Path] | None = None):
        self.image = image
        self.requests: list[tuple[str, str | None]] = []
        self.sni: list[str | None] = []
        self.streamed = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.scheme = "http"
        if cert is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*cert)
            context.sni_callback = lambda _sock, name, _ctx: self.sni.append(name)
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"

    def __enter__(self) -> LinkServer:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def _handler(owner: LinkServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def _answer(self, status: int, body: bytes = b"", ctype: str = "image/jpeg", **headers: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", headers.pop("length", str(len(body))))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            owner.requests.append((self.path, self.headers.get("Host")))
            parts = urlsplit(self.path)
            path, query = parts.path, parse_qs(parts.query)
            if path == "/img.jpg":
                self._answer(200, owner.image)
            elif path.startswith("/hops/"):
                left = int(path.rsplit("/", 1)[1])
                if left:
                    self._answer(302, Location=f"/hops/{left - 1}")
                else:
                    self._answer(200, owner.image)
            elif path == "/redirect":
                self._answer(302, Location=query["to"][0])
            elif path == "/no-location":
                self._answer(302)
            elif path == "/page.html":
                self._answer(200, b"<html><body><img src=img.jpg></body></html>", "text/html; charset=utf-8")
            elif path == "/missing":
                self._answer(404, b"not here", "text/plain")
            elif path == "/empty":
                self._answer(200)
            elif path == "/big":
                self._answer(200, owner.image, length=str(10**9))
            elif path == "/stream":
                self._stream()
            elif path == "/slow":
                time.sleep(2)
                self._answer(200, owner.image)
            elif path == "/drip":
                self._drip()
            else:
                self._answer(404, b"", "text/plain")

        def _stream(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.end_headers()  # no length: the body ends when the connection does
            chunk = owner.image + b"\0" * 16384
            try:
                while owner.streamed < 1 << 30:
                    self.wfile.write(chunk)
                    owner.streamed += len(chunk)
            except OSError:
                pass  # the client stopped reading: what this test wants

        def _drip(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(owner.image)))
            self.end_headers()
            try:
                for byte in owner.image[:200]:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:
                pass

    return Handler


def public_address() -> str:
    """A global unicast address the tests pretend a host name resolves to; nothing ever connects to it."""
    address = "93.184.215.14"
    assert ipaddress.ip_address(address).is_global
    return address
