"""More like this, less like that, in a real Chromium: toggles on every result, refined searches without another
upload, the picks in the address and in history, and what axe-core finds."""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote, urlsplit

import pytest
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import Page, expect

from tests.frontend.test_page import RESULTS, SearchTap, open_page, result_keys, wait_for_results

pytestmark = pytest.mark.browser

PICKS = "#pick-list button[data-vote]"


def vote_button(page: Page, n: int, vote: str):
    """The ``vote`` ("like" or "dislike") toggle of the ``n``-th result."""
    return page.locator("#results li").nth(n).locator(f'button[data-vote="{vote}"]')


def is_refined(request, method: str = "POST") -> bool:
    return request.method == method and "like=" in request.url


def address(page: Page) -> dict[str, list[str]]:
    return parse_qs(urlsplit(page.url).query)


def assert_no_axe_violations(page: Page) -> None:
    results = Axe().run(page)
    assert results.violations_count == 0, results.generate_report()


def test_like_and_dislike_refine_the_upload_without_choosing_it_again(page: Page, site, sample_dir):
    tap = SearchTap(page)
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "soup" / "soup_0002.jpg")
    wait_for_results(page)
    first = result_keys(page)
    _, photo, _ = tap.last()

    liked = first[1]
    more = vote_button(page, 1, "like")
    expect(more).to_have_attribute("aria-pressed", "false")
    expect(more).to_have_attribute(
        "aria-label", f"More like this: {page.locator(RESULTS).nth(1).get_attribute('data-label')}"
    )
    with page.expect_response(lambda r: is_refined(r.request) and r.status == 200) as answer:
        more.click()
    assert parse_qs(urlsplit(answer.value.url).query)["like"] == [liked]
    assert tap.last()[1] == photo  # the photo held by the page went up again; nobody chose it again
    expect(page.locator("#results-summary")).to_contain_text("steered by 1 liked")
    assert liked not in result_keys(page)
    pick = page.locator(f'{PICKS}[data-vote="like"]')
    expect(pick).to_have_attribute("aria-pressed", "true")
    expect(pick).to_be_focused()  # the keyboard follows the result into the picks
    assert address(page) == {"like": [liked]}

    disliked = result_keys(page)[0]
    with page.expect_response(lambda r: "dislike=" in r.url and r.status == 200) as answer:
        vote_button(page, 0, "dislike").click()
    sent = parse_qs(urlsplit(answer.value.url).query)
    assert sent["like"] == [liked] and sent["dislike"] == [disliked]
    expect(page.locator("#results-summary")).to_contain_text("steered by 1 liked and 1 disliked")
    assert not {liked, disliked} & set(result_keys(page))
    assert address(page) == {"like": [liked], "dislike": [disliked]}
    assert_no_axe_violations(page)

    page.go_back()  # Back undoes the dislike, then the like, from history alone
    expect(page.locator("#results-summary")).not_to_contain_text("disliked")
    assert address(page) == {"like": [liked]}
    expect(page.locator(PICKS)).to_have_count(2)  # one pick: its More (pressed) and Less
    page.go_back()
    expect(page.locator("#picks")).to_be_hidden()
    assert result_keys(page) == first and address(page) == {}


def test_a_pick_can_be_taken_back_or_turned_round_from_the_keyboard(page: Page, site, sample_dir):
    open_page(page, site)
    page.set_input_files("#file", sample_dir / "pasta" / "pasta_0002.jpg")
    wait_for_results(page)
    key = result_keys(page)[2]
    vote_button(page, 2, "dislike").focus()
    with page.expect_response(lambda r: "dislike=" in r.url and r.status == 200):
        page.keyboard.press("Enter")
    pick = page.locator(f'{PICKS}[data-vote="dislike"]')
    expect(pick).to_be_focused()
    expect(pick).to_have_attribute("aria-pressed", "true")

    page.keyboard.press("Shift+Tab")  # to the pick's More: turns the dislike into a like
    with page.expect_response(lambda r: "like=" in r.url and "dislike=" not in r.url and r.status == 200):
        page.keyboard.press("Space")
    expect(page.locator(f'{PICKS}[data-vote="like"]')).to_have_attribute("aria-pressed", "true")
    assert address(page) == {"like": [key]}

    with page.expect_response(lambda r: is_search(r.request) and "like=" not in r.url and r.status == 200):
        page.keyboard.press("Enter")  # pressed again: taken back
    expect(page.locator("#picks")).to_be_hidden()
    assert key in result_keys(page)
    expect(page.locator("#results-heading")).to_be_focused()


def is_search(request) -> bool:
    return request.method == "POST" and urlsplit(request.url).path == "/search"


def test_a_search_by_link_is_refined_with_the_same_link(page: Page, site):
    open_page(page, site)
    link = f"{site}/files/pizza/pizza_0006.jpg"
    page.fill("#url", link)
    page.keyboard.press("Enter")
    wait_for_results(page)
    disliked = result_keys(page)[0]
    with page.expect_request(lambda r: is_search(r) and "dislike=" in r.url) as sent:
        vote_button(page, 0, "dislike").click()
    assert json.loads(sent.value.post_data) == {"url": link}
    assert parse_qs(urlsplit(sent.value.url).query)["dislike"] == [disliked]
    expect(page.locator("#results-summary")).to_contain_text("steered by 1 disliked")
    expect(page.locator("#url")).to_have_value(link)


def test_a_link_keeps_the_query_and_the_picks(page: Page, site, sample_dir):
    keys = sorted(p.relative_to(sample_dir).as_posix() for p in sample_dir.glob("*/*.*") if p.suffix != ".txt")
    query, liked, disliked = keys[3], keys[25], keys[40]
    link = f"{site}/?key={quote(query, safe='')}&like={quote(liked, safe='')}&dislike={quote(disliked, safe='')}"
    with page.expect_response(lambda r: is_refined(r.request, "GET") and r.status == 200) as answer:
        page.goto(link)
    sent = parse_qs(urlsplit(answer.value.url).query)
    assert sent == {"key": [query], "like": [liked], "dislike": [disliked]}
    wait_for_results(page, "similar to")
    expect(page.locator(PICKS)).to_have_count(4)
    assert not {query, liked, disliked} & set(result_keys(page))


def test_liked_images_alone_are_a_search_and_the_last_like_is_kept(page: Page, site, sample_dir):
    liked = "pizza/pizza_0001.jpg"
    with page.expect_response(lambda r: "/similar?like=" in r.url and r.status == 200):
        page.goto(f"{site}/?like={quote(liked, safe='')}")
    wait_for_results(page, "like your picks")
    expect(page.locator("#query")).to_be_hidden()
    assert liked not in result_keys(page)
    seen: list[str] = []
    page.on("request", lambda r: seen.append(r.url) if "/similar" in r.url else None)
    page.locator(f'{PICKS}[data-vote="like"]').click()  # nothing would be left to search from
    expect(page.locator("#error")).to_contain_text("at least one dish")
    page.wait_for_timeout(200)
    assert seen == [] and address(page) == {"like": [liked]}
    assert_no_axe_violations(page)
