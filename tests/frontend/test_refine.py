"""The page's newer searches in a real Chromium: results looked up by key (true across index rebuilds), search
by link, label chips and "Show more"."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from playwright.sync_api import Page, Route, expect

from tests.frontend.test_page import (
    RESULTS,
    open_page,
    open_result,
    result_keys,
    wait_for_results,
    wait_until_true,
)

pytestmark = pytest.mark.browser


def api_requests(page: Page) -> list[str]:
    """The search requests the page makes from now on (URLs)."""
    seen: list[str] = []

    def record(request) -> None:
        if request.resource_type == "fetch" and ("/search" in request.url or "similar" in request.url):
            seen.append(request.url)

    page.on("request", record)
    return seen


def is_search(request) -> bool:
    """A POST /search, whatever its query string."""
    return request.method == "POST" and urlsplit(request.url).path == "/search"


def params(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query)


def stale_ids(route: Route) -> None:
    """The real answer, as a client that kept it across a rebuild holds it: every id now names another image."""
    response = route.fetch()
    body = response.json()
    for n, match in enumerate(body["results"]):
        match["id"] = 10_000 + n
    body["build_id"] = "0123456789abcdef"
    route.fulfill(response=response, json=body)


def test_a_result_is_searched_by_its_key_whatever_its_id(page: Page, site, sample_dir):
    # Ids are dense per build; a rebuild gives them to other images. The page looks results up by key only.
    page.route(lambda url: urlsplit(url).path == "/search", stale_ids)
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "steak" / "steak_0003.jpg")
    wait_for_results(page)
    seen = api_requests(page)
    key = open_result(page, 2)
    assert [urlsplit(u).path for u in seen] == ["/similar"] and params(seen[0])["key"] == [key]
    assert key not in result_keys(page)
    assert page.url.endswith(f"?key={quote(key, safe='')}")


def test_back_to_old_similar_results_searches_again_by_key(page: Page, site, sample_dir):
    page.clock.install()
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "salad" / "salad_0004.jpg")
    wait_for_results(page)
    first = page.locator(RESULTS).nth(1).get_attribute("data-key")
    with page.expect_response(lambda r: "/similar?" in r.url):
        page.locator(RESULTS).nth(1).click()
    expect(page.locator("#results-summary")).to_contain_text("similar to")
    with page.expect_response(lambda r: "/similar?" in r.url):
        page.locator(RESULTS).nth(0).click()
    page.clock.fast_forward("11:00")
    seen = api_requests(page)
    with page.expect_response(lambda r: "/similar?" in r.url and r.status == 200):
        page.go_back()
    wait_until_true(page, "Boolean(history.state && Date.now() - history.state.savedAt < 60000)")
    assert [urlsplit(u).path for u in seen] == ["/similar"] and params(seen[0])["key"] == [first]
    state = page.evaluate("history.state.query")
    assert state["key"] == first and state["id"] is None


def test_an_old_similar_id_link_still_works_and_becomes_a_key_link(page: Page, site):
    page.goto(site + "/?similar=4")
    expect(page.locator("#results-summary")).to_contain_text("similar to photo #4")
    key = page.evaluate("history.state.query.key")
    assert key and page.url.endswith(f"?key={quote(key, safe='')}")


def test_search_by_link(page: Page, site, output_dir):
    open_page(page, site)
    link = f"{site}/files/pizza/pizza_0006.jpg"
    with page.expect_request(is_search) as sent:
        page.fill("#url", link)
        page.keyboard.press("Enter")
    assert json.loads(sent.value.post_data) == {"url": link}
    assert params(sent.value.url)["k"] == [page.locator("#k").input_value()]
    wait_for_results(page)
    assert result_keys(page)[0] == "pizza/pizza_0006.jpg"
    expect(page.locator("#query-caption")).to_have_text(f"Photo from {urlsplit(site).netloc}")
    expect(page.locator("#query-image")).to_have_attribute("src", link)
    page.screenshot(path=output_dir / "search-by-link.png", full_page=True)

    page.reload()  # the history entry keeps the link, and the box shows it again
    expect(page.locator("#url")).to_have_value(link)
    assert result_keys(page)[0] == "pizza/pizza_0006.jpg"


@pytest.mark.parametrize(
    ("link", "shown"),
    [
        (
            "http://169.254.169.254/latest/meta-data/",
            "That link could not be searched: the link's address or port is not one the service fetches from",
        ),
        ("/files/pizza/missing.jpg", "That link could not be searched: 127.0.0.1 answered 404"),
        ("/docs", "That link could not be searched: the link is text/html, not an image"),
    ],
)
def test_a_link_that_gives_no_image_says_why(page: Page, site, link, shown):
    open_page(page, site)
    page.fill("#url", site + link if link.startswith("/") else link)
    with page.expect_response(lambda r: is_search(r.request)):
        page.click("#url-submit")
    error = page.locator("#error")
    expect(error).to_contain_text(shown)
    expect(error).to_have_attribute("role", "alert")
    expect(page.locator("#status")).not_to_have_class("busy")


def test_a_box_without_a_link_sends_nothing(page: Page, site):
    open_page(page, site)
    seen = api_requests(page)
    page.fill("#url", "not a link")
    page.keyboard.press("Enter")
    assert page.locator("#url").evaluate("el => el.validity.valid") is False
    page.wait_for_timeout(300)
    assert seen == []


def test_label_chips_filter_the_results(page: Page, site, sample_dir):
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "soup" / "soup_0002.jpg")
    wait_for_results(page)
    chips = page.locator("#chips button")
    labels = chips.evaluate_all("els => els.map(e => e.dataset.label)")
    shown = page.locator(RESULTS).evaluate_all("els => els.map(e => e.dataset.label)")
    assert labels == list(dict.fromkeys(shown)) and len(labels) >= 2
    expect(page.locator("#filters")).to_have_attribute("role", "group")
    assert chips.evaluate_all("els => els.map(e => e.getAttribute('aria-pressed'))") == ["false"] * len(labels)

    wanted = labels[1]
    with page.expect_request(lambda r: is_search(r) and "label=" in r.url) as sent:
        page.locator(f'#chips button[data-label="{wanted}"]').click()
    assert params(sent.value.url)["label"] == [wanted]
    expect(page.locator("#results-summary")).to_contain_text(f"labelled {wanted}")
    chip = page.locator(f'#chips button[data-label="{wanted}"]')
    expect(chip).to_have_attribute("aria-pressed", "true")
    expect(chip).to_be_focused()  # the keyboard stays on the chip that was pressed
    assert set(page.locator(RESULTS).evaluate_all("els => els.map(e => e.dataset.label)")) == {wanted}
    assert page.locator("#chips button").count() == len(labels)  # the other labels stay on offer
    expect(page.locator("#status-text")).to_contain_text(f"labelled {wanted}")  # the live region says so

    with page.expect_request(lambda r: is_search(r) and "label=" not in r.url):
        page.keyboard.press("Space")  # the focused chip, from the keyboard
    expect(chip).to_have_attribute("aria-pressed", "false")
    expect(page.locator("#results-summary")).not_to_contain_text("labelled")


def test_show_more_adds_the_next_results(page: Page, site, sample_dir):
    open_page(page, site)
    page.select_option("#k", "6")
    page.set_input_files("#file", sample_dir / "pasta" / "pasta_0002.jpg")
    wait_for_results(page)
    expect(page.locator(RESULTS)).to_have_count(6)
    first = result_keys(page)
    more = page.locator("#more")
    expect(more).to_be_visible()
    with page.expect_request(lambda r: is_search(r) and "offset=" in r.url) as sent:
        more.click()
    assert params(sent.value.url)["offset"] == ["6"]
    expect(page.locator(RESULTS)).to_have_count(12)
    keys = result_keys(page)
    assert keys[:6] == first and len(set(keys)) == 12
    expect(page.locator(RESULTS).nth(6)).to_be_focused()
    expect(page.locator("#status-text")).to_contain_text("12 similar dishes")

    page.reload()  # the longer list is what the history entry holds
    expect(page.locator(RESULTS)).to_have_count(12)


def test_show_more_ends_when_the_results_do(page: Page, site, sample_dir):
    open_page(page, site)
    page.select_option("#k", "6")
    page.set_input_files("#file", sample_dir / "pizza" / "pizza_0001.jpg")
    wait_for_results(page)
    with page.expect_response(lambda r: is_search(r.request) and "label=" in r.url):
        page.locator('#chips button[data-label="pizza"]').click()
    expect(page.locator("#results-summary")).to_contain_text("labelled pizza")
    page.locator("#more").click()
    expect(page.locator(RESULTS)).to_have_count(10)  # every pizza of the collection, the photo itself first
    expect(page.locator("#more")).to_be_hidden()
    assert set(page.locator(RESULTS).evaluate_all("els => els.map(e => e.dataset.label)")) == {"pizza"}


def test_keyboard_reaches_the_link_box_chips_and_show_more(page: Page, site, sample_dir):
    open_page(page, site)
    for _ in range(4):
        page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.id") == "url"
    page.set_input_files("#file", sample_dir / "sushi" / "sushi_0004.jpg")
    wait_for_results(page)
    page.locator("#chips button").first.focus()
    page.keyboard.press("Enter")
    expect(page.locator("#chips button").first).to_have_attribute("aria-pressed", "true")
    page.locator("#more").focus()
    with page.expect_response(lambda r: is_search(r.request) and "offset=" in r.url):
        page.keyboard.press("Enter")
