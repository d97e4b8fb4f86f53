"""Fetching a query image by URL, without letting the URL reach into the service's own network (SSRF).

Every hop, the URL and then each redirect (at most ``url_max_redirects``), is checked the same way:

- https only (http too with ``url_allow_http``), no ``user:password@``, a host name or a literal address;
- port 443, 80 where http is allowed, or one of ``url_allowed_ports`` (``allowed_ports``);
- the host is resolved once (``resolve``) and every answer must be a public address (``refusal``): loopback,
  private, link-local, multicast, reserved and cloud metadata addresses are refused, in any spelling
  (``2130706433``, ``::ffff:127.0.0.1``, a name that resolves to them);
- the connection goes to the checked address itself (``open_socket``), with the original host name in the
  Host header, as the TLS SNI and as the name the certificate must match. Nothing looks the name up again,
  so a second DNS answer cannot swap in another address (DNS rebinding).

The body is read in chunks and the reading stops once it passes the upload limit (``max_upload_bytes``); the
content type must be ``image/*``. Connecting, each read and the whole fetch have their own time limits. Each
refusal is an ``ApiError``: ``url_not_allowed`` (where it points), ``url_unreachable`` (nothing usable came
back), ``too_large``, ``unsupported_type`` or ``empty_image``. Every refusal of an address or a port answers
the same message (``refused_address``; the reason goes to the log only), so the fetch tells a client nothing
about which addresses a name has or which ports a host opens.
"""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import logging
import socket
import ssl
import threading
import time
from functools import lru_cache
from urllib.parse import quote, urljoin, urlsplit

from lambda_fn import __version__
from lambda_fn.contract.config import Settings
from lambda_fn.search.errors import ApiError
from lambda_fn.search.schemas import ErrorCode

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Instance metadata and credential endpoints of the clouds (AWS IMDS and ECS task endpoints over IPv4 and
# IPv6, Alibaba, Oracle). Most are link-local or private anyway; these stay refused even with
# url_allow_private, because an answer from them is a credential.
_METADATA = ("169.254.169.254", "169.254.170.2", "169.254.170.23", "fd00:ec2::254", "fd00:ec2::23")
METADATA_ADDRESSES = frozenset(ipaddress.ip_address(a) for a in (*_METADATA, "100.100.100.200", "192.0.0.192"))
_NAT64 = ipaddress.ip_network("64:ff9b::/96")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
# Characters a request target may hold as they are; anything else is percent-encoded (spaces, quotes, ...).
_TARGET_SAFE = "/%:@!$&'()*+,;=~-._?"


def _not_allowed(message: str) -> ApiError:
    return ApiError(ErrorCode.URL_NOT_ALLOWED, message)


def _unreachable(message: str) -> ApiError:
    return ApiError(ErrorCode.URL_UNREACHABLE, message)


def allowed_ports(settings: Settings) -> list[int]:
    """The ports a fetch may connect to: 443, 80 where http is allowed, and ``url_allowed_ports``."""
    return sorted({443, *((80,) if settings.url_allow_http else ()), *settings.url_allowed_ports})


def address_refusal_message(settings: Settings) -> str:
    """The one public answer to a link whose address or port is refused, whatever the reason."""
    ports = allowed_ports(settings)
    listed = ", ".join(map(str, ports[:-1])) + (" or " if len(ports) > 1 else "") + str(ports[-1])
    return f"the link's address or port is not one the service fetches from: only public hosts, on port {listed}"


def refused_address(settings: Settings, host: str, port: int, reason: str) -> ApiError:
    """``url_not_allowed`` with the one public message; the reason (which may name a resolved address) is logged."""
    log.info("url refused", extra={"host": host, "port": port, "reason": reason})
    return _not_allowed(address_refusal_message(settings))


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 one carries (mapped, 6to4, Teredo, NAT64), which is where it really goes."""
    if address.version != 6:
        return None
    if address.ipv4_mapped:
        return address.ipv4_mapped
    if address.sixtofour:
        return address.sixtofour
    if address.teredo:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal(address: IPAddress, *, allow_private: bool = False) -> str | None:
    """Why the service must not connect to ``address`` (e.g. "a loopback address"), or None when it may.

    ``allow_private`` lets loopback and private addresses through (the tests' local servers); metadata,
    link-local, multicast, unspecified and reserved addresses are refused regardless.
    """
    embedded = _embedded_ipv4(address)
    if embedded is not None:
        reason = refusal(embedded, allow_private=allow_private)
        return f"{reason} (inside {address})" if reason else None
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_multicast:
        return "a multicast address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_reserved and not address.is_loopback:  # ::1 lies inside the reserved ::/8
        return "a reserved address"
    if allow_private:
        return None
    if address.is_loopback:
        return "a loopback address"
    if address.is_private:
        return "a private address"
    if not address.is_global:
        return "not a public address"
    return None


def resolve(host: str, port: int) -> list[str]:
    """Every address ``host`` resolves to, IPv4 first (Lambda functions have no IPv6 route by default).

    The one place the fetch looks a name up; tests replace it to play a DNS server that changes its answer.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise _unreachable(f"the host {host!r} could not be resolved") from exc
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    return sorted(addresses, key=lambda a: ":" in a)


def open_socket(address: str, port: int, timeout: float) -> socket.socket:
    """A TCP connection to exactly ``address`` (already checked), never to a name."""
    return socket.create_connection((address, port), timeout=timeout)


@lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """Certificate and host name verification against the system's trust store."""
    return ssl.create_default_context()


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to a checked address: the request names ``host`` (Host header, SNI, certificate) but the socket
    goes to ``address``."""

    def __init__(self, host: str, port: int, address: str, timeout: float, context: ssl.SSLContext | None):
        super().__init__(host, port, timeout=timeout)
        self.address, self.context = address, context

    def connect(self) -> None:
        sock = open_socket(self.address, self.port, self.timeout)
        try:
            if self.context is not None:
                sock = self.context.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Hop:
    """One URL, parsed and checked: scheme, host, port and request target."""

    def __init__(self, url: str, settings: Settings):
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as exc:
            raise ApiError(ErrorCode.INVALID_PARAMETERS, f"not a valid URL: {url[:200]!r} ({exc})") from exc
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            if scheme in ("http", "https", ""):
                raise ApiError(ErrorCode.INVALID_PARAMETERS, f"not an absolute http(s) URL: {url[:200]!r}")
            raise _not_allowed(f"{scheme}: URLs are not fetched; give an https:// link to the image")
        if scheme == "http" and not settings.url_allow_http:
            raise _not_allowed(f"only https:// links are fetched, not {url[:200]!r}")
        if parts.username is not None or parts.password is not None:
            raise _not_allowed("links with a user name or password are not fetched")
        try:
            self.host = parts.hostname.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise ApiError(ErrorCode.INVALID_PARAMETERS, f"not a valid host name: {parts.hostname[:200]!r}") from exc
        self.url, self.scheme = url, scheme
        self.port = port or (443 if scheme == "https" else 80)
        if not settings.url_allow_private and self.port not in allowed_ports(settings):
            raise refused_address(settings, self.host, self.port, f"port {self.port} is not allowed")
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        self.target = quote(target, safe=_TARGET_SAFE)

    def address(self, settings: Settings) -> str:
        """The one address to connect to, after checking every address the host resolves to."""
        try:
            literal = ipaddress.ip_address(self.host.strip("[]"))
        except ValueError:
            literal = None
        answers = [str(literal)] if literal is not None else resolve(self.host, self.port)
        if not answers:
            raise _unreachable(f"the host {self.host!r} has no address")
        for answer in answers:
            reason = refusal(ipaddress.ip_address(answer.split("%")[0]), allow_private=settings.url_allow_private)
            if reason:
                where = self.host if literal is not None else f"{self.host} (resolves to {answer})"
                raise refused_address(settings, self.host, self.port, f"{where} is {reason}")
        return answers[0]


class _Deadline:
    """The whole fetch's time limit: shuts the open socket when it passes, so no read can outlast it."""

    def __init__(self, seconds: float):
        self.ends = time.monotonic() + seconds
        self.expired = False
        self.binding = False  # the last timeout set was cut short by the deadline
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> _Deadline:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()

    def cap(self, timeout: float) -> float:
        """``timeout``, or what is left of the deadline when that is less; a timeout then is the deadline's."""
        left = self.ends - time.monotonic()
        if left <= 0:
            self.expired = True
            raise TimeoutError
        self.binding = left < timeout
        return min(timeout, left)

    def watch(self, sock: socket.socket | None) -> None:
        self._sock = sock

    def _expire(self) -> None:
        self.expired = True
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


def _read_body(
    response: http.client.HTTPResponse, sock: socket.socket, timeout: float, limit: int, deadline: _Deadline
) -> bytes:
    declared = response.getheader("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ApiError(
            ErrorCode.TOO_LARGE, f"the linked image is {int(declared):,} bytes; the limit is {limit:,}"
        )  # refused before reading a byte of it
    body = bytearray()
    while True:
        sock.settimeout(deadline.cap(timeout))
        chunk = response.read1(_CHUNK)
        if not chunk:
            break
        body += chunk
        if len(body) > limit:
            raise ApiError(ErrorCode.TOO_LARGE, f"the linked image is over the {limit:,}-byte limit")
    if deadline.expired:  # the deadline shut the socket: what looked like the end of the body was not
        raise TimeoutError
    if not body:
        raise ApiError(ErrorCode.EMPTY_IMAGE, "the link answered with an empty body")
    return bytes(body)


def _get(hop: _Hop, address: str, settings: Settings, deadline: _Deadline) -> tuple[int, str | None, bytes | None]:
    """One request: (status, redirect location, body). The body is read only for a 200."""
    context = tls_context() if hop.scheme == "https" else None
    conn = _PinnedConnection(hop.host, hop.port, address, deadline.cap(settings.url_connect_timeout_s), context)
    response = None
    try:
        conn.connect()
        sock = conn.sock  # the response keeps reading from it after the connection lets go of it
        deadline.watch(sock)
        sock.settimeout(deadline.cap(settings.url_read_timeout_s))
        conn.request(
            "GET",
            hop.target,
            headers={
                "Accept": "image/*",
                "Accept-Encoding": "identity",
                "User-Agent": f"DeepFood-search/{__version__}",
                "Connection": "close",
            },
        )
        response = conn.getresponse()
        if response.status in _REDIRECTS:
            return response.status, response.getheader("Location"), None
        if response.status != 200:
            raise _unreachable(f"{hop.host} answered {response.status} {response.reason[:100]}".strip())
        ctype = (response.getheader("Content-Type") or "").split(";")[0].strip().lower()
        if not ctype.startswith("image/"):
            raise ApiError(
                ErrorCode.UNSUPPORTED_TYPE,
                f"the link is {ctype or 'of no declared type'}, not an image; link to the image file itself",
            )
        return 200, None, _read_body(response, sock, settings.url_read_timeout_s, settings.max_upload_bytes, deadline)
    finally:
        deadline.watch(None)
        if response is not None:
            response.close()  # stops the download here: the server sees the connection end
        conn.close()


def fetch_image(url: str, settings: Settings) -> bytes:
    """The image bytes at ``url``, following at most ``url_max_redirects`` redirects, every hop checked."""
    started = time.perf_counter()
    hop = _Hop(url, settings)
    redirects = 0
    try:
        with _Deadline(settings.url_fetch_timeout_s) as deadline:
            while True:
                address = hop.address(settings)
                status, location, body = _get(hop, address, settings, deadline)
                if body is not None:
                    log.info(
                        "url fetched",
                        extra={
                            "host": hop.host,
                            "address": address,
                            "bytes": len(body),
                            "redirects": redirects,
                            "ms": round((time.perf_counter() - started) * 1000, 2),
                        },
                    )
                    return body
                if not location:
                    raise _unreachable(f"{hop.host} answered {status} without a Location to go to")
                redirects += 1
                if redirects > settings.url_max_redirects:
                    raise _unreachable(f"the link redirects more than {settings.url_max_redirects} times")
                hop = _Hop(urljoin(hop.url, location), settings)
    except ApiError:
        raise
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise _unreachable(_failure(exc, hop.host, settings, deadline)) from exc


def _failure(exc: Exception, host: str, settings: Settings, deadline: _Deadline) -> str:
    """What went wrong, in words. A socket the deadline shut shows up as any of these errors, or as EOF."""
    if deadline.expired or (isinstance(exc, TimeoutError) and deadline.binding):
        return f"fetching the link took longer than {settings.url_fetch_timeout_s:g} s"
    if isinstance(exc, TimeoutError):
        return (
            f"{host} did not answer in time ({settings.url_connect_timeout_s:g} s to connect, "
            f"{settings.url_read_timeout_s:g} s per read)"
        )
    if isinstance(exc, ssl.SSLError):  # certificate and host name mismatches included
        return f"the TLS connection to {host} failed ({getattr(exc, 'verify_message', None) or exc.reason or exc})"
    if isinstance(exc, http.client.HTTPException | ValueError):
        return f"{host} did not answer with valid HTTP ({type(exc).__name__})"
    return f"could not connect to {host}: {exc.strerror or exc}"
