"""Search by image URL: the fetch against real loopback HTTP and HTTPS servers, and every refusal.

Only 127.0.0.1 is ever connected to. With ``url_allow_private`` on, the servers are reached directly. The
refusals are proven with it off: the host names tests pretend are public go through the two seams of
``lambda_fn.search.fetch`` (``resolve`` answers what the test says; ``open_socket`` records the address the fetch
connected to and carries the connection to the loopback server), and an autouse guard fails any test whose
fetch would connect anywhere but loopback.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl

import pytest

from lambda_fn.contract.config import Settings
from lambda_fn.search import fetch
from lambda_fn.search.errors import ApiError
from lambda_fn.search.fetch import address_refusal_message, fetch_image, refusal
from lambda_fn.search.schemas import ErrorCode
from tests.helpers import assert_json_error, jpeg_bytes, png_bomb
from tests.lambda_fn.links import TLS_NAME, LinkServer, public_address, self_signed_cert

IMAGE = jpeg_bytes((64, 48))
LIMIT = 64 * 1024
PUBLIC = public_address()


def settings(**overrides) -> Settings:
    """Loopback servers allowed, small limits; tests that prove refusals turn url_allow_private off."""
    values = {
        "artifacts_uri": "unused",
        "url_allow_private": True,
        "url_allow_http": True,
        "max_upload_bytes": LIMIT,
        "url_read_timeout_s": 1,
        "url_fetch_timeout_s": 5,
    }
    return Settings(**(values | overrides))


def refusal_reasons(caplog) -> str:
    """The reasons the fetch logged for its refusals (the public message gives none)."""
    return " | ".join(r.reason for r in caplog.records if r.getMessage() == "url refused")


def refused(code: ErrorCode, url: str, config: Settings) -> str:
    with pytest.raises(ApiError) as raised:
        fetch_image(url, config)
    assert raised.value.code == code, raised.value.message
    return raised.value.message


@pytest.fixture(autouse=True)
def loopback_only(monkeypatch) -> list[tuple[str, int]]:
    """Every address the fetch connects to (a test may reroute); anything but loopback fails the test."""
    connected: list[tuple[str, int]] = []
    real = fetch.open_socket

    def guarded(address: str, port: int, timeout: float) -> socket.socket:
        connected.append((address, port))
        assert ipaddress.ip_address(address).is_loopback, f"the fetch tried to connect to {address}"
        return real(address, port, timeout)

    monkeypatch.setattr(fetch, "open_socket", guarded)
    return connected


@pytest.fixture(scope="module")
def http_server():
    with LinkServer(IMAGE) as server:
        yield server


@pytest.fixture(scope="module")
def cert(tmp_path_factory):
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def https_server(cert):
    with LinkServer(IMAGE, cert=cert) as server:
        yield server


@pytest.fixture
def trusted(monkeypatch, cert):
    """The fetch's TLS context trusts the test certificate (and still checks the name against it)."""
    context = ssl.create_default_context(cafile=str(cert[0]))
    monkeypatch.setattr(fetch, "tls_context", lambda: context)


@pytest.fixture
def dns(monkeypatch, http_server, loopback_only):
    """``dns[name] = [answers...]`` (or a list of answer lists, one per lookup); every connection to a
    pretended public address goes to the loopback HTTP server. ``dns.lookups`` lists the names looked up."""

    class Resolver(dict):
        def __init__(self):
            super().__init__()
            self.lookups: list[str] = []

        def __call__(self, host: str, port: int) -> list[str]:
            self.lookups.append(host)
            if host not in self:  # numbers only (2130706433): parsed locally, never sent to a DNS server
                return [info[4][0] for info in socket.getaddrinfo(host, port, flags=socket.AI_NUMERICHOST)]
            answers = self[host]
            return answers.pop(0) if isinstance(answers[0], list) else answers

    resolver = Resolver()

    def reroute(address: str, port: int, timeout: float) -> socket.socket:
        loopback_only.append((address, port))
        assert address == PUBLIC, f"the fetch connected to {address}, not the checked public address"
        return socket.create_connection(("127.0.0.1", http_server.port), timeout=timeout)

    monkeypatch.setattr(fetch, "resolve", resolver)
    monkeypatch.setattr(fetch, "open_socket", reroute)
    return resolver


def test_an_image_over_http_is_fetched(http_server):
    assert fetch_image(http_server.url("/img.jpg"), settings()) == IMAGE


def test_redirects_are_followed_up_to_the_limit(http_server):
    assert fetch_image(http_server.url("/hops/3"), settings()) == IMAGE
    message = refused(ErrorCode.URL_UNREACHABLE, http_server.url("/hops/4"), settings())
    assert "more than 3 times" in message
    assert fetch_image(http_server.url("/hops/1"), settings(url_max_redirects=1)) == IMAGE


def test_https_checks_the_certificate_and_sends_the_original_name(https_server, trusted, monkeypatch):
    # photos.test resolves to 127.0.0.1; the fetch connects there, but TLS and HTTP speak of photos.test
    monkeypatch.setattr(fetch, "resolve", lambda host, port: ["127.0.0.1"] if host == TLS_NAME else [])
    https_server.sni.clear()
    assert fetch_image(https_server.url("/img.jpg", TLS_NAME), settings(url_allow_http=False)) == IMAGE
    assert https_server.sni == [TLS_NAME]
    assert https_server.requests[-1] == ("/img.jpg", f"{TLS_NAME}:{https_server.port}")


def test_https_with_a_certificate_for_another_name_is_refused(https_server, trusted):
    message = refused(ErrorCode.URL_UNREACHABLE, https_server.url("/img.jpg"), settings())
    assert "TLS" in message and "127.0.0.1" in message


def test_https_with_an_untrusted_certificate_is_refused(https_server, monkeypatch):
    monkeypatch.setattr(fetch, "resolve", lambda host, port: ["127.0.0.1"])
    message = refused(ErrorCode.URL_UNREACHABLE, https_server.url("/img.jpg", TLS_NAME), settings())
    assert "certificate" in message


@pytest.mark.parametrize(
    ("url", "code", "says"),
    [
        ("http://photos.example/a.jpg", ErrorCode.URL_NOT_ALLOWED, "only https://"),
        ("ftp://photos.example/a.jpg", ErrorCode.URL_NOT_ALLOWED, "ftp: URLs"),
        ("file:///etc/passwd", ErrorCode.URL_NOT_ALLOWED, "file: URLs"),
        ("gopher://127.0.0.1:6379/_INFO", ErrorCode.URL_NOT_ALLOWED, "gopher: URLs"),
        ("https://user:secret@photos.example/a.jpg", ErrorCode.URL_NOT_ALLOWED, "password"),
        ("not a link", ErrorCode.INVALID_PARAMETERS, "absolute"),
        ("https://", ErrorCode.INVALID_PARAMETERS, "absolute"),
        ("//photos.example/a.jpg", ErrorCode.INVALID_PARAMETERS, "absolute"),
        ("https://photos.example:99999/a.jpg", ErrorCode.INVALID_PARAMETERS, "not a valid URL"),
        ("https://a..b/a.jpg", ErrorCode.INVALID_PARAMETERS, "host name"),
    ],
)
def test_links_that_are_not_https_urls_are_refused_before_any_lookup(url, code, says, monkeypatch):
    monkeypatch.setattr(fetch, "resolve", lambda host, port: pytest.fail(f"{host} was looked up"))
    assert says in refused(code, url, settings(url_allow_http=False, url_allow_private=False))


@pytest.mark.parametrize(
    ("host", "says"),
    [
        ("127.0.0.1", "a loopback address"),
        ("127.1.2.3", "a loopback address"),
        ("[::1]", "a loopback address"),
        ("2130706433", "a loopback address"),  # 127.0.0.1 as one decimal number
        ("localhost", "a loopback address"),
        ("10.0.0.5", "a private address"),
        ("172.16.3.4", "a private address"),
        ("192.168.1.1", "a private address"),
        ("[fd12:3456::1]", "a private address"),
        ("100.64.0.1", "not a public address"),
        ("169.254.169.254", "a cloud metadata address"),
        ("[fd00:ec2::254]", "a cloud metadata address"),
        ("100.100.100.200", "a cloud metadata address"),
        ("169.254.1.1", "a link-local address"),
        ("[fe80::1]", "a link-local address"),
        ("[::ffff:127.0.0.1]", "a loopback address"),
        ("[::ffff:169.254.169.254]", "a cloud metadata address"),
        ("[64:ff9b::a9fe:a9fe]", "a cloud metadata address"),  # NAT64 of 169.254.169.254
        ("0.0.0.0", "the unspecified address"),
        ("224.0.0.1", "a multicast address"),
        ("240.0.0.1", "a reserved address"),
    ],
)
def test_addresses_that_are_not_public_are_refused_without_connecting(host, says, loopback_only, caplog):
    config = settings(url_allow_private=False)
    with caplog.at_level("INFO", logger=fetch.log.name):
        message = refused(ErrorCode.URL_NOT_ALLOWED, f"https://{host}/a.jpg", config)
    assert message == address_refusal_message(config)  # the one public answer; the reason is only logged
    assert says not in message and says in refusal_reasons(caplog)
    assert loopback_only == []


@pytest.mark.parametrize("address", ["169.254.169.254", "fd00:ec2::254", "169.254.170.2", "169.254.7.7", "0.0.0.0"])
def test_allowing_private_addresses_never_allows_metadata_or_link_local(address):
    assert refusal(ipaddress.ip_address(address), allow_private=True) is not None
    assert refusal(ipaddress.ip_address("127.0.0.1"), allow_private=True) is None
    assert refusal(ipaddress.ip_address(PUBLIC)) is None


def test_a_public_host_is_fetched_from_the_address_that_was_checked(dns, http_server, loopback_only):
    dns["photos.example"] = [PUBLIC]
    assert fetch_image("http://photos.example/img.jpg", settings(url_allow_private=False)) == IMAGE
    assert loopback_only == [(PUBLIC, 80)]
    assert http_server.requests[-1] == ("/img.jpg", "photos.example")


def test_a_dns_answer_that_changes_cannot_swap_the_address(dns, http_server, loopback_only):
    # DNS rebinding: public when checked, loopback when looked up again for the connection. The fetch looks
    # the name up once per hop and connects to the address it checked.
    dns["photos.example"] = [[PUBLIC], ["127.0.0.1"]]
    assert fetch_image("http://photos.example/img.jpg", settings(url_allow_private=False)) == IMAGE
    assert dns.lookups == ["photos.example"]
    assert loopback_only == [(PUBLIC, 80)]


def test_a_name_with_one_private_answer_among_public_ones_is_refused(dns, loopback_only, caplog):
    dns["photos.example"] = [PUBLIC, "10.1.2.3"]
    with caplog.at_level("INFO", logger=fetch.log.name):
        message = refused(ErrorCode.URL_NOT_ALLOWED, "http://photos.example/img.jpg", settings(url_allow_private=False))
    assert "10.1.2.3" not in message  # what an internal name resolves to is not told to the client
    assert "resolves to 10.1.2.3" in refusal_reasons(caplog) and "a private address" in refusal_reasons(caplog)
    assert loopback_only == []


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("http://127.0.0.1/admin", "a loopback address"),
        ("http://169.254.169.254/latest/meta-data/iam/security-credentials/", "a cloud metadata address"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "a cloud metadata address"),
        ("http://internal.example/", "a private address"),
        ("http://2130706433/", "a loopback address"),
    ],
)
def test_a_redirect_is_checked_like_the_link_itself(dns, http_server, loopback_only, target, says, caplog):
    dns["photos.example"] = [PUBLIC]
    dns["internal.example"] = ["192.168.0.10"]
    config = settings(url_allow_private=False)
    with caplog.at_level("INFO", logger=fetch.log.name):
        message = refused(ErrorCode.URL_NOT_ALLOWED, f"http://photos.example/redirect?to={target}", config)
    assert message == address_refusal_message(config) and says in refusal_reasons(caplog)
    assert loopback_only == [(PUBLIC, 80)]  # only the first hop was connected to


def test_a_redirect_to_metadata_is_refused_even_with_private_addresses_allowed(http_server, loopback_only, caplog):
    url = http_server.url("/redirect?to=http://169.254.169.254/latest/meta-data/")
    with caplog.at_level("INFO", logger=fetch.log.name):
        refused(ErrorCode.URL_NOT_ALLOWED, url, settings())
    assert "a cloud metadata address" in refusal_reasons(caplog)
    assert [address for address, _ in loopback_only] == ["127.0.0.1"]


@pytest.mark.parametrize(
    ("url", "extra", "fetched"),
    [
        ("https://photos.example:8443/img.jpg", [], False),
        ("https://photos.example:22/img.jpg", [], False),
        ("http://photos.example:80/img.jpg", [], True),  # http is allowed in these settings, so is its port
        ("http://photos.example:8080/img.jpg", [], False),
        ("http://photos.example:8080/img.jpg", [8080], True),
        ("http://photos.example:9090/img.jpg", [8080], False),
    ],
)
def test_only_443_80_and_the_configured_ports_are_fetched(dns, loopback_only, url, extra, fetched):
    dns["photos.example"] = [PUBLIC]
    config = settings(url_allow_private=False, url_allowed_ports=extra)
    if fetched:
        assert fetch_image(url, config) == IMAGE
        return
    assert refused(ErrorCode.URL_NOT_ALLOWED, url, config) == address_refusal_message(config)
    assert dns.lookups == [] and loopback_only == []  # refused before any lookup or connection


def test_port_80_needs_http_allowed(dns, loopback_only):
    dns["photos.example"] = [PUBLIC]
    config = settings(url_allow_private=False, url_allow_http=False)
    assert address_refusal_message(config).endswith("on port 443")
    assert refused(ErrorCode.URL_NOT_ALLOWED, "https://photos.example:80/a.jpg", config) == address_refusal_message(
        config
    )


def test_a_redirect_to_another_port_is_refused(dns, http_server, loopback_only):
    dns["photos.example"] = [PUBLIC]
    config = settings(url_allow_private=False)
    url = "http://photos.example/redirect?to=http://photos.example:6379/"
    assert refused(ErrorCode.URL_NOT_ALLOWED, url, config) == address_refusal_message(config)
    assert loopback_only == [(PUBLIC, 80)]


def test_every_refused_address_or_port_answers_the_same(dns, loopback_only):
    # Distinct answers would make the fetch a prober: of ports on public hosts, of what internal names resolve to.
    dns["photos.example"] = [PUBLIC]
    dns["internal.example"] = ["10.9.8.7"]
    config = settings(url_allow_private=False, url_allowed_ports=[8443])
    links = [
        "https://photos.example:22/",
        "https://photos.example:6379/",
        "https://internal.example/",
        "https://internal.example:8443/",
        "https://127.0.0.1/",
        "https://[::1]:8443/",
        "https://169.254.169.254/",
        "https://10.0.0.1:25/",
    ]
    messages = {refused(ErrorCode.URL_NOT_ALLOWED, link, config) for link in links}
    assert messages == {address_refusal_message(config)}
    assert "8443" in address_refusal_message(config) and loopback_only == []


def test_extra_ports_are_read_from_the_environment(monkeypatch):
    monkeypatch.setenv("DEEPFOOD_URL_ALLOWED_PORTS", "8443, 8080")
    assert Settings(artifacts_uri="unused").url_allowed_ports == [8443, 8080]
    monkeypatch.setenv("DEEPFOOD_URL_ALLOWED_PORTS", "70000")
    with pytest.raises(ValueError, match="between 1 and 65535"):
        Settings(artifacts_uri="unused")


def test_a_redirect_from_https_to_http_is_refused(https_server, trusted, monkeypatch):
    monkeypatch.setattr(fetch, "resolve", lambda host, port: ["127.0.0.1"])
    url = https_server.url("/redirect?to=http://photos.test/x.jpg", TLS_NAME)
    assert "only https://" in refused(ErrorCode.URL_NOT_ALLOWED, url, settings(url_allow_http=False))
    assert https_server.requests[-1][0].startswith("/redirect")


def test_a_page_is_not_an_image(http_server):
    message = refused(ErrorCode.UNSUPPORTED_TYPE, http_server.url("/page.html"), settings())
    assert "text/html" in message


def test_a_declared_length_over_the_limit_is_refused_before_reading(http_server):
    message = refused(ErrorCode.TOO_LARGE, http_server.url("/big"), settings())
    assert "1,000,000,000 bytes" in message and f"{LIMIT:,}" in message


def test_a_body_without_length_stops_being_read_past_the_limit(http_server):
    http_server.streamed = 0
    assert "limit" in refused(ErrorCode.TOO_LARGE, http_server.url("/stream"), settings())
    # the server kept writing only until the fetch hung up: socket buffers' worth, not its gigabyte
    assert http_server.streamed < 64 << 20


@pytest.mark.parametrize(
    ("path", "code", "says"),
    [
        ("/missing", ErrorCode.URL_UNREACHABLE, "answered 404"),
        ("/no-location", ErrorCode.URL_UNREACHABLE, "without a Location"),
        ("/empty", ErrorCode.EMPTY_IMAGE, "empty"),
        ("/slow", ErrorCode.URL_UNREACHABLE, "did not answer in time"),
    ],
)
def test_links_that_give_no_image_say_why(http_server, path, code, says):
    assert says in refused(code, http_server.url(path), settings(url_read_timeout_s=0.3))


def test_the_whole_fetch_has_a_deadline(http_server):
    # each byte arrives well within the read timeout; only the total limit stops a drip
    message = refused(ErrorCode.URL_UNREACHABLE, http_server.url("/drip"), settings(url_fetch_timeout_s=0.3))
    assert "longer than 0.3 s" in message


def test_a_closed_port_is_unreachable():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        message = refused(ErrorCode.URL_UNREACHABLE, f"http://127.0.0.1:{port}/a.jpg", settings())
    assert "could not connect" in message


def test_an_unknown_host_is_unreachable(monkeypatch):
    def no_such_host(host, port, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(fetch.socket, "getaddrinfo", no_such_host)
    message = refused(ErrorCode.URL_UNREACHABLE, "https://no-such-host.example/a.jpg", settings())
    assert "could not be resolved" in message


@pytest.fixture(scope="module")
def url_client(make_client):
    """The real app, allowed to fetch from the loopback server over http."""
    with make_client(url_allow_private=True, url_allow_http=True) as client:
        yield client


def test_search_by_url_finds_the_linked_image(url_client, sample_dir, artifacts_dir):
    key = "sushi/sushi_0003.jpg"
    with LinkServer((sample_dir / key).read_bytes()) as server:
        r = url_client.post("/search", json={"url": server.url("/img.jpg"), "k": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["results"][0]["key"] == key and body["results"][0]["similarity"] > 0.999 and body["k"] == 3


def test_search_by_url_applies_the_pixel_limit(url_client):
    with LinkServer(png_bomb()) as server:
        assert_json_error(url_client.post("/search", json={"url": server.url("/img.jpg")}), 413, "too_large")


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://127.0.0.1/a.jpg", "url_not_allowed"),
        ("http://169.254.169.254/latest/meta-data/", "url_not_allowed"),
        ("ftp://example.com/a.jpg", "url_not_allowed"),
        ("http://example.com/a.jpg", "url_not_allowed"),
        ("no link", "invalid_parameters"),
    ],
)
def test_search_by_url_refusals_are_json_errors(client, url, code, loopback_only):
    assert_json_error(client.post("/search", json={"url": url}), 422, code)
    assert loopback_only == []


@pytest.mark.parametrize(
    "body",
    [{"url": "https://example.com/a.jpg", "image": "aGk="}, {"k": 3}, {"url": None}, {"url": "x" * 2049}],
)
def test_a_json_body_needs_exactly_one_of_image_and_url(client, body):
    assert_json_error(client.post("/search", json=body), 422, "invalid_parameters")


def test_openapi_documents_the_url_body_and_its_errors(client):
    operation = client.get("/openapi.json").json()["paths"]["/search"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert {"image", "url", "k"} <= set(schema["properties"])
    assert "url_not_allowed" in operation["responses"]["422"]["description"]
    assert "url_unreachable" in operation["responses"]["422"]["description"]
