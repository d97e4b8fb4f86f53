"""The page in a real Chromium against the local server with a small real model and index."""

from __future__ import annotations

import base64
import io
import time
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from PIL import Image, ImageOps
from playwright.sync_api import Page, Request, Route, expect

from lambda_fn.contract.manifest import DEFAULT_RESIZE_SIZE
from lambda_fn.contract.site_config import site_config
from tests.helpers import TEST_RESIZE

pytestmark = pytest.mark.browser

RESULTS = "#results button.result"
# Retries of 503 answers made quick, through the page's own config.json knobs.
FAST_RETRY_CONFIG = {"apiBaseUrl": "", "retries": 2, "retryBaseMs": 50, "retryMaxMs": 200}


def open_page(page: Page, base: str) -> None:
    page.goto(base + "/")
    expect(page.locator("#service")).to_contain_text("Ready")


def result_keys(page: Page) -> list[str]:
    return page.locator(RESULTS).evaluate_all("els => els.map(e => e.dataset.key)")


def wait_for_results(page: Page, summary: str = "similar") -> None:
    expect(page.locator("#results-summary")).to_contain_text(summary)
    expect(page.locator(RESULTS).first).to_be_visible()


def open_result(page: Page, n: int) -> str:
    """Click the ``n``-th result and wait for its /similar answer and the summary that says so; its key."""
    target = page.locator(RESULTS).nth(n)
    key = target.get_attribute("data-key")
    with page.expect_response(lambda r: "/similar?" in r.url and r.status == 200):
        target.click()
    expect(page.locator("#results-summary")).to_contain_text("similar to")
    return key


def wait_until_true(page: Page, expression: str, timeout_s: float = 10.0) -> None:
    """Polls a JavaScript expression until it is truthy.

    `page.wait_for_function` re-evaluates its predicate with `eval` from an animation frame, which the page's
    Content-Security-Policy (no 'unsafe-eval') blocks; `page.evaluate` goes through the debugger protocol,
    which the policy does not cover.
    """
    deadline = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"still false after {timeout_s} s: {expression}"
        page.wait_for_timeout(50)


def is_search(request: Request) -> bool:
    return request.method == "POST" and request.url.endswith("/search")


class SearchTap:
    """Records every /search request body on its way out of the browser, then lets it through unchanged.

    (Playwright's `request.post_data_buffer` is empty for FormData with a Blob; a route sees the bytes.)
    """

    def __init__(self, page: Page):
        self.bodies: list[tuple[str, bytes]] = []
        page.route("**/search", self._tap)

    def _tap(self, route) -> None:
        request = route.request
        if request.method == "POST":
            self.bodies.append((request.headers["content-type"], request.post_data_buffer or b""))
        route.continue_()

    def last(self, index: int = -1) -> tuple[str, bytes, dict[str, str]]:
        """The `image` part of the latest (or `index`th) multipart /search: (filename, bytes, other fields)."""
        assert self.bodies, "no /search request was made"
        content_type, body = self.bodies[index]
        message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
        assert message.is_multipart(), content_type
        image, fields = None, {}
        for part in message.iter_parts():
            name = part.get_param("name", header="content-disposition")
            if name == "image":
                image = (part.get_filename(), part.get_payload(decode=True))
            else:
                fields[name] = part.get_payload(decode=True).decode()
        assert image is not None, f"no image part (fields: {sorted(fields)})"
        return image[0], image[1], fields


def photo_like(size: tuple[int, int], source: Path, seed: int = 0) -> bytes:
    """A camera-sized JPEG: a sample dish scaled up under a 1/f colour texture, so that, like a photo, it
    keeps detail at every scale (a plain upscale shrinks back to almost nothing)."""
    rng = np.random.default_rng(seed)
    w, h = size[0] // 2, size[1] // 2
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    amplitude = 1 / np.maximum(np.hypot(fx, fy), 1 / max(w, h))
    spectrum = amplitude[..., None] * np.exp(2j * np.pi * rng.random((*amplitude.shape, 3)))
    texture = np.fft.irfft2(spectrum, s=(h, w), axes=(0, 1))
    texture = Image.fromarray(np.clip(128 + 30 * texture / texture.std(), 0, 255).astype(np.uint8))
    dish = Image.open(source).convert("RGB").resize(size, Image.Resampling.BICUBIC)
    buf = io.BytesIO()
    Image.blend(dish, texture.resize(size, Image.Resampling.BILINEAR), 0.35).save(buf, "JPEG", quality=92)
    return buf.getvalue()


def health_with_limits(page: Page, **limits: int) -> list[int]:
    """Serves the real /health answer (200 or 503) with `limits` changed; returns the statuses it served."""
    served: list[int] = []

    def handle(route: Route) -> None:
        response = route.fetch()
        body = response.json()
        body["limits"].update(limits)
        served.append(response.status)
        route.fulfill(response=response, json=body)

    page.route("**/health", handle)
    return served


def k_options(page: Page) -> list[str]:
    return page.locator("#k option").evaluate_all("els => els.map(e => e.value)")


def drop_file(page: Page, data: bytes, name: str, mime: str, event: str = "drop") -> None:
    """Drops (or pastes) a file built in the page from `data`, as a person dragging it from a folder would."""
    page.evaluate(
        """([b64, name, mime, event]) => {
            const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], name, { type: mime }));
            if (event === "paste") {
                document.dispatchEvent(new ClipboardEvent("paste", { clipboardData: dt, bubbles: true }));
                return;
            }
            for (const type of ["dragenter", "dragover", "drop"]) {
                document.body.dispatchEvent(
                    new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
            }
        }""",
        [base64.b64encode(data).decode(), name, mime, event],
    )


def test_upload_by_file_picker_finds_the_same_image_first(page: Page, site, sample_dir, output_dir):
    tap = SearchTap(page)
    open_page(page, site)
    # Stored rotated with EXIF orientation 6: found first only if the browser applied the orientation.
    photo = sample_dir / "pizza" / "pizza_0003.jpg"
    assert Image.open(photo).getexif().get(0x0112) == 6

    page.set_input_files("#file", photo)
    expect(page.locator("#query-image")).to_be_visible()
    wait_for_results(page)

    keys = result_keys(page)
    assert keys[0] == "pizza/pizza_0003.jpg", keys
    assert len(keys) == int(page.locator("#k").input_value())
    expect(page.locator("#predictions")).to_be_visible()
    expect(page.locator("#prediction-list li").first).to_be_visible()
    first_alt = page.locator(RESULTS).first.locator("img").get_attribute("alt")
    assert first_alt.startswith("pizza — ") and first_alt.endswith("% similar"), first_alt
    expect(page.locator(RESULTS).first.locator("img")).to_have_js_property("complete", True)
    assert page.locator(RESULTS).first.locator("img").evaluate("img => img.naturalWidth") > 0

    filename, jpeg, fields = tap.last()
    upright = ImageOps.exif_transpose(Image.open(photo)).size
    sent = Image.open(io.BytesIO(jpeg))
    assert (filename, sent.format, fields["k"]) == ("query.jpg", "JPEG", page.locator("#k").input_value())
    assert min(sent.size) == TEST_RESIZE
    assert (sent.width > sent.height) == (upright[0] > upright[1]), (sent.size, upright)

    shot = output_dir / "results.png"
    page.screenshot(path=shot, full_page=True)
    print(f"\nscreenshot of the results page: {shot}")


def test_drop_and_paste_upload(page: Page, site, sample_dir):
    open_page(page, site)
    photo = sample_dir / "sushi" / "sushi_0001.jpg"
    with page.expect_request(is_search):
        drop_file(page, photo.read_bytes(), photo.name, "image/jpeg")
    wait_for_results(page)
    assert result_keys(page)[0] == "sushi/sushi_0001.jpg"
    expect(page.locator("#drop-overlay")).to_be_hidden()
    expect(page.locator("#query-caption")).to_contain_text("sushi_0001.jpg")

    png = sample_dir / "soup" / "soup_0005.png"
    with page.expect_request(is_search):
        drop_file(page, png.read_bytes(), "image.png", "image/png", event="paste")
    expect(page.locator(RESULTS).first).to_have_attribute("data-key", "soup/soup_0005.png")


def test_upload_is_resized_in_the_browser(page: Page, site, sample_dir):
    tap = SearchTap(page)
    open_page(page, site)
    original = photo_like((3000, 2000), sample_dir / "steak" / "steak_0002.jpg")
    page.set_input_files("#file", files=[{"name": "big.jpg", "mimeType": "image/jpeg", "buffer": original}])
    wait_for_results(page)
    _, jpeg, _ = tap.last()
    sent = Image.open(io.BytesIO(jpeg))
    print(f"\n3000x2000 photo of {len(original):,} B uploaded as {sent.width}x{sent.height}, {len(jpeg):,} B")
    assert sent.size == (round(3000 * TEST_RESIZE / 2000), TEST_RESIZE)
    assert len(jpeg) < len(original) / 50


def test_twelve_megapixel_photo_uploads_under_100_kb(page: Page, site, sample_dir):
    """The production model's resize size (256): the page's resize of a 4000x3000 photo to it, measured."""
    open_page(page, site)
    original = photo_like((4000, 3000), sample_dir / "pasta" / "pasta_0001.jpg", seed=1)
    page.route("**/twelve-mp.jpg", lambda route: route.fulfill(body=original, content_type="image/jpeg"))
    result = page.evaluate(
        """async (shortSide) => {
            const { resizeForUpload } = await import("./resize.js");
            const file = await (await fetch("twelve-mp.jpg")).blob();
            const started = performance.now();
            const out = await resizeForUpload(file, { shortSide });
            return { bytes: out.blob.size, width: out.width, height: out.height,
                     ms: performance.now() - started };
        }""",
        DEFAULT_RESIZE_SIZE,
    )
    print(
        f"\n12-MP photo (4000x3000, {len(original) / 1e6:.1f} MB) -> {result['width']}x{result['height']} JPEG "
        f"of {result['bytes'] / 1000:.1f} kB in {result['ms']:.0f} ms"
    )
    assert (result["width"], result["height"]) == (round(4000 * DEFAULT_RESIZE_SIZE / 3000), DEFAULT_RESIZE_SIZE)
    assert result["bytes"] < 100_000


@pytest.mark.parametrize("routed_size", [None, 100], ids=["local-server-config", "config-json-value"])
def test_before_the_model_is_loaded_uploads_use_the_resize_size_from_config_json(
    page: Page, unready_site, sample_dir, routed_size
):
    """/health names the model's resize size only once it is loaded; until then config.json's is used."""
    served = page.request.get(unready_site + "/config.json").json()
    assert served == site_config(api_base_url="")
    assert served["defaultResizeSize"] == DEFAULT_RESIZE_SIZE
    config = {**served, **FAST_RETRY_CONFIG}
    if routed_size is not None:
        config["defaultResizeSize"] = routed_size
    page.route("**/config.json", lambda route: route.fulfill(json=config))
    tap = SearchTap(page)
    page.goto(unready_site + "/")
    expect(page.locator("#service")).to_contain_text("not available")

    photo = photo_like((600, 400), sample_dir / "steak" / "steak_0001.jpg")
    page.set_input_files("#file", files=[{"name": "steak.jpg", "mimeType": "image/jpeg", "buffer": photo}])
    expect(page.locator("#error")).to_contain_text("warming up")
    sent = Image.open(io.BytesIO(tap.last(0)[1]))
    size = config["defaultResizeSize"]
    assert sent.size == (round(600 * size / 400), size)


def test_result_click_searches_similar_and_back_restores(page: Page, site, sample_dir):
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "salad" / "salad_0002.jpg")
    wait_for_results(page)
    before = result_keys(page)

    clicked = open_result(page, 1)
    expect(page.locator("#query-caption")).to_contain_text("Dishes similar to")
    after = result_keys(page)
    assert after != before
    assert clicked not in after  # the image itself is left out
    assert f"key={quote(clicked, safe='')}" in page.url
    expect(page.locator("#results-heading")).to_be_focused()

    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url) if "/search" in r.url or "/similar" in r.url else None)
    page.go_back()
    expect(page.locator("#results-summary")).not_to_contain_text("similar to")
    assert result_keys(page) == before
    page.go_forward()
    expect(page.locator("#results-summary")).to_contain_text("similar to")
    assert result_keys(page) == after
    assert requests == [], "back/forward should re-render from history.state, not search again"

    page.reload()  # ?key=KEY is a link to the same search
    expect(page.locator("#results-summary")).to_contain_text("similar to")
    assert result_keys(page) == after


def test_back_to_results_older_than_presigned_links_searches_again(page: Page, site, sample_dir):
    # Presigned image links expire (900 s by default): Back to results saved more than 10 minutes ago must
    # not show dead thumbnails but search again, with the photo kept in memory.
    page.clock.install()
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "soup" / "soup_0003.jpg")
    wait_for_results(page)
    before = result_keys(page)
    open_result(page, 1)

    page.clock.fast_forward("11:00")
    with page.expect_response(lambda r: is_search(r.request) and r.status == 200):  # the photo goes up again
        page.go_back()
    # the fresh answer replaces the stale history entry
    wait_until_true(page, "Boolean(history.state && Date.now() - history.state.savedAt < 60000)")
    wait_for_results(page)
    expect(page.locator("#results-summary")).not_to_contain_text("similar to")
    assert result_keys(page) == before


def test_keyboard_only(page: Page, site, sample_dir):
    open_page(page, site)
    focus_order = []
    for _ in range(3):
        page.keyboard.press("Tab")
        focus_order.append(page.evaluate("document.activeElement.id || document.activeElement.className"))
    assert focus_order == ["skip-link", "file", "k"], focus_order

    page.set_input_files("#file", sample_dir / "pizza" / "pizza_0006.jpg")
    wait_for_results(page)
    page.locator(RESULTS).nth(2).focus()
    page.keyboard.press("Enter")
    expect(page.locator("#results-summary")).to_contain_text("similar to")
    expect(page.locator("#results-heading")).to_be_focused()


def test_changing_k_searches_again(page: Page, site, sample_dir):
    tap = SearchTap(page)
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "steak" / "steak_0004.jpg")
    wait_for_results(page)
    expect(page.locator(RESULTS)).to_have_count(12)
    page.select_option("#k", "6")
    expect(page.locator(RESULTS)).to_have_count(6)
    assert len(tap.bodies) == 2
    assert tap.last()[2]["k"] == "6"
    assert tap.last()[1] == tap.last(0)[1], "the photo resized for the first search is sent again"


def test_k_choices_and_default_come_from_the_service_limits(page: Page, site, sample_dir):
    health_with_limits(page, default_k=5, max_k=30)
    tap = SearchTap(page)
    open_page(page, site)
    expect(page.locator("#k")).to_be_enabled()
    assert k_options(page) == ["3", "5", "10", "20", "30"]
    expect(page.locator("#k")).to_have_value("5")

    page.set_input_files("#file", sample_dir / "sushi" / "sushi_0002.jpg")
    wait_for_results(page)
    expect(page.locator(RESULTS)).to_have_count(5)
    assert tap.last()[2]["k"] == "5"


def test_k_choices_come_from_the_limits_of_a_503_health(page: Page, unready_site):
    page.route("**/config.json", lambda route: route.fulfill(json=FAST_RETRY_CONFIG))
    served = health_with_limits(page, default_k=7, max_k=40)
    page.goto(unready_site + "/")
    expect(page.locator("#service")).to_contain_text("not available")
    assert set(served) == {503}
    expect(page.locator("#k")).to_be_enabled()
    assert k_options(page) == ["4", "7", "14", "28", "40"]
    expect(page.locator("#k")).to_have_value("7")
    expect(page.locator("#service")).not_to_contain_text("asks again")


def test_k_ladder(page: Page, page_host):
    page.goto(page_host + "/")
    ladders = page.evaluate(
        """async () => {
            const { kChoices } = await import("./view.js");
            return [[12, 100], [5, 30], [7, 40], [10, 100], [100, 100], [1, 1], [1, 3]]
                .map(([d, m]) => kChoices(d, m));
        }"""
    )
    assert ladders == [
        [6, 12, 24, 48, 100],
        [3, 5, 10, 20, 30],
        [4, 7, 14, 28, 40],
        [5, 10, 20, 40, 100],
        [50, 100],
        [1],
        [1, 2, 3],
    ]


def test_unreachable_health_says_so_and_is_asked_again_with_the_next_search(page: Page, site, sample_dir):
    asked: list[str] = []

    def refuse_first(route: Route) -> None:
        asked.append(route.request.url)
        if len(asked) == 1:
            route.abort("connectionrefused")
        else:
            route.continue_()

    page.route("**/health", refuse_first)
    tap = SearchTap(page)
    page.goto(site + "/")
    service = page.locator("#service")
    expect(service).to_contain_text("not available: Could not reach the search service")
    expect(service).to_contain_text("asks again when you search")
    expect(page.locator("#k")).to_be_disabled()

    page.set_input_files("#file", sample_dir / "pizza" / "pizza_0002.jpg")
    wait_for_results(page)
    assert len(asked) == 2
    expect(service).to_contain_text("Ready")
    expect(page.locator("#k")).to_be_enabled()
    k = page.locator("#k").input_value()
    assert tap.last()[2]["k"] == k
    expect(page.locator(RESULTS)).to_have_count(int(k))


def test_without_limits_a_search_leaves_k_to_the_service(page: Page, site):
    page.route("**/health", lambda route: route.abort("connectionrefused"))
    with page.expect_request(lambda r: "/similar" in r.url) as similar:
        page.goto(site + "/?similar=4")
    assert "k=" not in similar.value.url
    expect(page.locator("#results-summary")).to_contain_text("similar to photo #4")
    expect(page.locator("#k")).to_be_disabled()


@pytest.mark.parametrize(
    ("status", "shown"),
    [
        (413, "That file could not be searched: That photo is too large to upload."),
        (422, "The service did not accept the request."),
        (500, "The search service answered with an error (HTTP 500)."),  # 502 and 504 are retried first
    ],
)
def test_error_pages_without_a_message_get_the_status_message(page: Page, site, sample_dir, status, shown):
    """A gateway's HTML error page says nothing the page can show: the status table does."""
    page.route(
        "**/search",
        lambda route: route.fulfill(status=status, body="<html><body>Error</body></html>", content_type="text/html"),
    )
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "soup" / "soup_0001.jpg")
    expect(page.locator("#error")).to_have_text(shown)


def test_non_image_file_gets_a_readable_message(page: Page, site):
    open_page(page, site)
    with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
        page.set_input_files(
            "#file", files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": b"not a photo\n" * 20}]
        )
    assert answer.value.status == 400
    error = page.locator("#error")
    expect(error).to_be_visible()
    expect(error).to_have_attribute("role", "alert")
    expect(error).to_contain_text("could not be searched")
    expect(error).to_contain_text("not a recognisable image")
    expect(page.locator("#status")).not_to_have_class("busy")

    # A HEIC this browser cannot decode goes up as it is, and the service's reason is shown.
    heic = b"\0\0\0\x18ftypheic\0\0\0\0mif1heic" + b"\0" * 2000
    with page.expect_response(lambda r: r.url.endswith("/search")) as answer:
        page.set_input_files("#file", files=[{"name": "IMG_0001.HEIC", "mimeType": "image/heic", "buffer": heic}])
    assert answer.value.status == 415
    expect(error).to_contain_text("HEIC/AVIF files are not supported")


def test_undecodable_file_over_the_limit_is_refused_without_uploading(page: Page, site):
    open_page(page, site)
    searches: list[str] = []
    page.on("request", lambda r: searches.append(r.url) if is_search(r) else None)
    page.set_input_files("#file", files=[{"name": "huge.heic", "mimeType": "image/heic", "buffer": b"\0" * 5_000_000}])
    expect(page.locator("#error")).to_contain_text("over the service's 4.5 MB limit")
    assert searches == []


def test_server_not_ready_retries_then_explains(page: Page, unready_site, sample_dir):
    page.route("**/config.json", lambda route: route.fulfill(json=FAST_RETRY_CONFIG))
    page.add_init_script(
        """window.statusLog = [];
        document.addEventListener("DOMContentLoaded", () => {
            const el = document.getElementById("status-text");
            new MutationObserver(() => window.statusLog.push(el.textContent))
                .observe(el, { childList: true, characterData: true, subtree: true });
        });"""
    )
    searches: list[int] = []
    page.on("response", lambda r: searches.append(r.status) if is_search(r.request) else None)
    page.goto(unready_site + "/")
    expect(page.locator("#service")).to_contain_text("not available")

    page.set_input_files("#file", sample_dir / "pizza" / "pizza_0001.jpg")
    error = page.locator("#error")
    expect(error).to_contain_text("warming up")
    expect(error).to_contain_text("search index is not available")
    assert searches == [503] * (FAST_RETRY_CONFIG["retries"] + 1)
    log = page.evaluate("window.statusLog")
    assert any("trying again" in line and "attempt 2 of 3" in line for line in log), log
    expect(page.locator("#results-section")).to_be_hidden()


def test_dark_mode_and_phone_layout(chromium, site, sample_dir, output_dir):
    context = chromium.new_context(
        viewport={"width": 390, "height": 844}, color_scheme="dark", device_scale_factor=2, is_mobile=True
    )
    try:
        page = context.new_page()
        open_page(page, site)
        page.set_input_files("#file", sample_dir / "pasta" / "pasta_0004.jpg")
        wait_for_results(page)
        background = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert background == "rgb(23, 20, 15)", background
        columns = page.locator("#results").evaluate("el => getComputedStyle(el).gridTemplateColumns.split(' ').length")
        assert columns == 2
        shot = output_dir / "results-dark-phone.png"
        page.screenshot(path=shot, full_page=True)
        print(f"\nscreenshot (dark, phone): {shot}")
    finally:
        context.close()


def test_page_on_another_origin_uses_api_base_url_from_config(page: Page, site, page_host, sample_dir):
    """As deployed: the page on its own origin (S3), the API elsewhere, named only by config.json."""
    assert page_host != site
    page.route(f"{page_host}/config.json", lambda route: route.fulfill(json={"apiBaseUrl": site + "/"}))
    calls: list[str] = []
    page.on("request", lambda r: calls.append(r.url) if r.resource_type in ("fetch", "xhr") else None)
    page.goto(page_host + "/")
    expect(page.locator("#service")).to_contain_text("Ready")

    page.set_input_files("#file", sample_dir / "soup" / "soup_0002.jpg")
    wait_for_results(page)
    assert result_keys(page)[0] == "soup/soup_0002.jpg"
    api_calls = {u.split("?")[0] for u in calls if not u.endswith("/config.json")}
    assert api_calls == {site + "/health", site + "/search"}, calls
    thumb = page.locator(RESULTS).first.locator("img")
    assert thumb.get_attribute("src") == site + "/files/soup/soup_0002.jpg"
    expect(thumb).to_have_js_property("complete", True)
    assert thumb.evaluate("img => img.naturalWidth") > 0


def test_link_to_similar_search_and_unknown_image(page: Page, site):
    page.goto(site + "/?similar=4")
    expect(page.locator("#results-summary")).to_contain_text("similar to photo #4")
    assert len(result_keys(page)) == 12

    page.goto(site + "/?similar=99999")
    expect(page.locator("#error")).to_contain_text("No image with id 99999")
    expect(page.locator("#results-section")).to_be_hidden()


def test_a_gateway_timeout_while_the_service_warms_up_is_retried(page: Page, site, sample_dir):
    """API Gateway gives up at 29 s while a cold container is still loading a large index; the container
    finishes and stays warm, so the page says it is warming up and asks again."""
    page.route("**/config.json", lambda route: route.fulfill(json=FAST_RETRY_CONFIG))
    answered: list[object] = []

    def search(route):
        if not answered:
            answered.append(504)
            route.fulfill(status=504, json={"message": "Endpoint request timed out"})
        else:
            answered.append("service")
            route.fallback()

    page.route(lambda url: "/search" in url, search)
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "pizza" / "pizza_0001.jpg")
    wait_for_results(page)
    assert answered == [504, "service"]
    expect(page.locator("#error")).to_be_hidden()
