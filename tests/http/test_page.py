"""The chat page at `/`, used in a real headless Chromium against a live gateway.

Most tests run the real tiny vLLM engine; the ones that need an exact answer
(markup in the model output) or a generation held at a gate (a full queue)
use the fake engine.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from playwright.async_api import Browser, BrowserContext, Page, ViewportSize, expect
from starlette.requests import Request

from gateway import ChatStream, CompletionState, RedisStore, SessionStore, Settings, create_app
from gateway.core.engine import Engine
from gateway.core.vllm_engine import VLLMEngine
from tests.browser import DESKTOP, PHONE, launch_chromium
from tests.fakes import AwayStore, FakeEngine, PacedEngine
from tests.live import serve

WAIT_MS = 120_000  # bound on every browser wait: the shared CPU is slow, never a timing assertion
# Every wait goes through Playwright's selector engine (locators, `expect`): `wait_for_function`
# evaluates its predicate with `eval` in the page, which the page's Content-Security-Policy forbids.
expect.set_options(timeout=WAIT_MS)

ANSWER = "article.msg.assistant"
LOADED = "#conversation[data-loaded]"  # the page has drawn the session's conversation: it may send


@dataclass
class Gateway:
    url: str
    chat: ChatStream
    endings: list[CompletionState] = field(default_factory=list)

    async def wait_for_ending(self, state: CompletionState) -> None:
        async with asyncio.timeout(WAIT_MS / 1000):
            while state not in self.endings:
                await asyncio.sleep(0.05)


@asynccontextmanager
async def run_gateway(
    engine: Engine, *, lifespan: str, settings: Settings | None = None, store: SessionStore | None = None, **chat: Any
) -> AsyncIterator[Gateway]:
    chat_stream = ChatStream(engine=engine, **chat)
    endings: list[CompletionState] = []

    def record(request: Request, state: CompletionState) -> None:
        endings.append(state)

    settings = settings or Settings(secure_cookies=False)
    app = create_app(settings, chat_stream=chat_stream, callback=record, store=store)
    async with serve(app, lifespan=lifespan) as url:
        yield Gateway(url, chat_stream, endings)


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with launch_chromium() as chromium:
        yield chromium


@pytest.fixture
def paced_engine(real_engine: VLLMEngine) -> PacedEngine:
    # Paced to a real model's streaming speed (see PacedEngine), so the page has time to draw.
    return PacedEngine(real_engine, interval=0.015)


@pytest.fixture
async def real_gateway(paced_engine: PacedEngine) -> AsyncIterator[Gateway]:
    # The session's engine is shared by the whole run: this app must not start or stop it.
    async with run_gateway(paced_engine, lifespan="off", max_new_tokens=900, ignore_eos=True) as gw:
        yield gw


OpenPage = Callable[..., Awaitable[Page]]


@pytest.fixture
async def open_page(browser: Browser) -> AsyncIterator[OpenPage]:
    """Opens `url` in a new browser context (its own cookies, so its own session).

    Every page must run without a script error or a Content-Security-Policy
    violation (refused requests may log errors: those are expected).
    """
    contexts: list[BrowserContext] = []
    problems: list[str] = []

    def watch(page: Page) -> None:
        page.on("pageerror", lambda error: problems.append(f"script error: {error}"))
        page.on(
            "console",
            lambda message: problems.append(message.text) if "Content Security Policy" in message.text else None,
        )

    async def open_in_new_context(url: str, viewport: ViewportSize = DESKTOP) -> Page:
        context = await browser.new_context(viewport=viewport)
        context.on("page", watch)
        contexts.append(context)
        page = await context.new_page()
        page.set_default_timeout(WAIT_MS)
        await page.goto(url)
        await page.wait_for_selector(LOADED)
        return page

    yield open_in_new_context
    for context in contexts:
        await context.close()
    assert problems == []


async def set_params(page: Page, **params: float) -> None:
    response = await page.request.post(page.url.rstrip("/") + "/set_generation_params", data=params)
    assert response.ok, await response.text()


async def send(page: Page, text: str) -> None:
    await page.fill("#input", text)
    await page.press("#input", "Enter")


async def answers_done(page: Page, count: int) -> None:
    await expect(page.locator(f"{ANSWER}[data-state='done']")).to_have_count(count)


async def shown_messages(page: Page) -> list[tuple[str, str]]:
    rows = await page.eval_on_selector_all(
        "article.msg", "els => els.map(e => [e.dataset.role, e.querySelector('.body').innerText])"
    )
    return [(role, text) for role, text in rows]


async def server_messages(page: Page) -> list[dict[str, str]]:
    response = await page.request.get(page.url.rstrip("/") + "/get_prompt")
    messages: list[dict[str, str]] = (await response.json())["messages"]
    return messages


# Records the visible text of the newest answer each time the page changes it.
WATCH_ANSWER = """() => {
  window.answerSnapshots = [];
  new MutationObserver(() => {
    const answers = document.querySelectorAll('article.msg.assistant');
    const last = answers[answers.length - 1];
    if (last) window.answerSnapshots.push([last.dataset.state, last.querySelector('.body').textContent]);
  }).observe(document.getElementById('conversation'),
             {subtree: true, childList: true, characterData: true, attributes: true});
}"""


DESCRIBE_ENDING = """() => {
  const a = document.querySelector('article.msg.assistant');
  const notice = document.getElementById('notice').textContent;
  return a ? `${a.dataset.state}: ${a.querySelector('.meta').textContent}` : notice;
}"""


# --- with the real engine -------------------------------------------------------------------


@pytest.mark.engine
async def test_answer_streams_in_and_both_turns_survive_a_reload(
    real_gateway: Gateway, paced_engine: PacedEngine, open_page: OpenPage
) -> None:
    page = await open_page(real_gateway.url)
    await page.click("#settings-toggle")
    await page.fill("#p-max_new_tokens", "64")
    await page.click("#settings-save")
    await page.wait_for_selector("#settings-status[data-kind='ok']")
    assert await page.get_attribute("#p-max_new_tokens", "max") == "900"

    await page.evaluate(WATCH_ANSWER)
    await page.fill("#input", "Hello")
    await page.press("#input", "Shift+Enter")
    await page.type("#input", "there")
    assert await page.input_value("#input") == "Hello\nthere"
    assert await page.locator("article.msg").count() == 0
    # The answer is held after 8 of its 64 tokens until the page shows it streaming: it must
    # draw what has come, before the rest (a loaded machine may deliver the rest in one read).
    paced_engine.hold, paced_engine.hold_after = asyncio.Event(), 8
    await page.press("#input", "Enter")
    streaming = page.locator(f"{ANSWER}[data-state='streaming'] .body")
    await expect(streaming).not_to_have_text("")
    partial = await streaming.text_content() or ""
    paced_engine.hold.set()
    await answers_done(page, 1)

    snapshots: list[list[str]] = await page.evaluate("window.answerSnapshots")
    streamed = {text for state, text in snapshots if state == "streaming" and text}
    final = await page.text_content(f"{ANSWER} .body") or ""  # the property the snapshots read
    assert partial in streamed and len(partial) < len(final), "the answer appeared in one piece instead of growing"
    # Never more than the answer has: each snapshot draws a part of it. (Against the answer's own
    # text: the page hides markdown marks once closed, so a snapshot may be longer than `final`.)
    answer = (await server_messages(page))[-1]
    assert answer["role"] == "assistant"
    assert all(len(text) <= len(answer["content"]) for text in streamed)
    assert await page.inner_text(f"{ANSWER} .meta") == "64 tokens · reached the token limit"
    assert await page.input_value("#input") == ""

    await page.fill("#input", "And a second question")
    await page.click("#send")
    await answers_done(page, 2)
    before = await shown_messages(page)
    assert [role for role, _ in before] == ["user", "assistant", "user", "assistant"]
    assert before[0][1] == "Hello\nthere" and before[2][1] == "And a second question"

    await page.reload()
    await page.wait_for_selector(LOADED)
    await expect(page.locator("article.msg")).to_have_count(4)
    assert await shown_messages(page) == before
    assert await page.is_hidden("#empty")


@pytest.mark.engine
async def test_a_second_browser_context_has_its_own_conversation(real_gateway: Gateway, open_page: OpenPage) -> None:
    first = await open_page(real_gateway.url)
    await set_params(first, max_new_tokens=8)
    await send(first, "I am the first browser")
    await answers_done(first, 1)

    second = await open_page(real_gateway.url)
    assert await second.locator("article.msg").count() == 0
    assert await second.is_visible("#empty")
    await set_params(second, max_new_tokens=8)
    await send(second, "I am the second browser")
    await answers_done(second, 1)

    await first.reload()
    await first.wait_for_selector(LOADED)
    assert [text for role, text in await shown_messages(first) if role == "user"] == ["I am the first browser"]
    assert [m["content"] for m in await server_messages(second) if m["role"] == "user"] == ["I am the second browser"]


# Was intermittent (issue 13: "the answer is never seen streaming"): the page's first
# GET /get_prompt could answer after the test had sent, and drawing the conversation
# wiped the new turn off the page. The page now sends only once it has drawn it.
@pytest.mark.engine
async def test_stop_ends_the_answer_and_the_server_records_the_disconnect(
    real_gateway: Gateway, open_page: OpenPage, real_engine: VLLMEngine
) -> None:
    page = await open_page(real_gateway.url)
    await send(page, "Tell me a long story")
    await page.wait_for_selector(f"{ANSWER}[data-state='streaming']")
    if not await page.is_visible("#stop"):
        pytest.fail(f"the answer ended before Stop could be pressed: {await page.evaluate(DESCRIBE_ENDING)}")
    await page.click("#stop")

    await page.wait_for_selector(f"{ANSWER}[data-state='stopped']")
    assert await page.inner_text(f"{ANSWER} .meta") == "Stopped"
    assert await page.is_visible("#send") and await page.is_hidden("#stop")
    await real_gateway.wait_for_ending(CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING)
    assert real_gateway.endings == [CompletionState.CLIENT_DISCONNECTED_WHILE_STREAMING]
    async with asyncio.timeout(WAIT_MS / 1000):
        while real_engine.num_unfinished():
            await asyncio.sleep(0.05)
    kept = await server_messages(page)
    assert [m["role"] for m in kept] == ["user", "assistant"] and kept[1]["content"]


@pytest.mark.engine
async def test_regenerate_replaces_the_last_answer_on_the_page_and_the_server(
    real_gateway: Gateway, open_page: OpenPage
) -> None:
    page = await open_page(real_gateway.url)
    await set_params(page, max_new_tokens=32, temperature=1.0)
    await send(page, "Say something")
    await answers_done(page, 1)
    first_id = await page.get_attribute(ANSWER, "data-message-id")
    first_shown = await page.inner_text(f"{ANSWER} .body")
    first_stored = (await server_messages(page))[1]["content"]

    await page.click("#regenerate")
    await expect(page.locator(f"{ANSWER}[data-state='done']:not([data-message-id='{first_id}'])")).to_have_count(1)
    shown = await shown_messages(page)
    assert [role for role, _ in shown] == ["user", "assistant"]
    assert shown[1][1] != first_shown
    stored = await server_messages(page)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[0]["content"] == "Say something" and stored[1]["content"] != first_stored

    await page.reload()  # the page draws what the session holds: the same answer
    await page.wait_for_selector(LOADED)
    assert await shown_messages(page) == shown


# --- with the fake engine ---------------------------------------------------------------------


@pytest.fixture
async def fake_gateway(fake_engine: FakeEngine) -> AsyncIterator[Gateway]:
    async with run_gateway(fake_engine, lifespan="on") as gw:
        yield gw


async def test_an_answer_the_server_could_not_save_is_shown_whole_and_marked_not_saved(
    fake_engine: FakeEngine, open_page: OpenPage
) -> None:
    store = AwayStore()
    async with run_gateway(fake_engine, lifespan="on", store=store) as gw:
        page = await open_page(gw.url)
        fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
        await send(page, "Hello?")
        async with asyncio.timeout(WAIT_MS / 1000):
            while fake_engine.at_gate < 1:  # the turn's start is saved; its end will not be
                await asyncio.sleep(0.01)
        store.away = True
        fake_engine.gate.set()
        await gw.wait_for_ending(CompletionState.UNKNOWN_ERROR_OCCURRED)
        await expect(page.locator(f"{ANSWER} .meta")).to_have_text("Not saved on the server.")
        assert await page.inner_text(f"{ANSWER} .body") == fake_engine.answer
        assert "could not save this answer" in await page.inner_text("#notice")


async def test_a_full_queue_shows_the_busy_message_and_keeps_the_input(
    fake_engine: FakeEngine, open_page: OpenPage
) -> None:
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1  # the only slot, held mid-answer
    async with run_gateway(fake_engine, lifespan="on", num_of_concurrent_executions=1, max_queue_size=0) as gw:
        holder = await open_page(gw.url)
        await send(holder, "I take the only slot")
        await holder.wait_for_selector(f"{ANSWER}[data-state='streaming']")

        other = await open_page(gw.url)
        await send(other, "Am I too late?")
        await other.wait_for_selector("#notice:not([hidden])")
        assert "busy" in await other.inner_text("#notice")
        assert re.search(r"try again in \d+ seconds?;", await other.inner_text("#notice"))
        assert await other.input_value("#input") == "Am I too late?"
        assert await other.locator("article.msg").count() == 0

        fake_engine.gate.set()
        await answers_done(holder, 1)
        await other.press("#input", "Enter")
        await answers_done(other, 1)
        assert await other.input_value("#input") == ""
        assert await other.is_hidden("#notice")


@pytest.mark.parametrize("store_kind", ["memory", "redis"])
async def test_a_reload_during_the_first_answer_shows_the_question_and_a_second_tab_gets_409(
    fake_engine: FakeEngine, open_page: OpenPage, request: pytest.FixtureRequest, store_kind: str
) -> None:
    # Regression (issue 13): the store learnt of a new session only when its first answer ended,
    # so a reload during it showed nothing (and a second tab started another conversation).
    store: SessionStore | None = None
    if store_kind == "redis":
        store = RedisStore.from_url(request.getfixturevalue("redis_server").url, prefix=f"page-{id(request)}:")
    fake_engine.gate, fake_engine.gate_after = asyncio.Event(), 1
    async with run_gateway(fake_engine, lifespan="on", store=store) as gw:
        page = await open_page(gw.url)
        await send(page, "My very first question")
        await page.wait_for_selector(f"{ANSWER}[data-state='streaming']")
        cookie = await session_cookie(page)

        second_tab = await page.context.new_page()
        second_tab.set_default_timeout(WAIT_MS)
        await second_tab.goto(gw.url)
        await second_tab.wait_for_selector(LOADED)
        assert (await shown_messages(second_tab))[0] == ("user", "My very first question")
        await send(second_tab, "From a second tab")
        await second_tab.wait_for_selector("#notice:not([hidden])")
        assert "already being generated" in await second_tab.inner_text("#notice")
        assert await second_tab.input_value("#input") == "From a second tab"

        await page.reload()
        await page.wait_for_selector(LOADED)
        assert (await shown_messages(page))[0] == ("user", "My very first question")
        assert await session_cookie(page) == cookie
        fake_engine.gate.set()


async def session_cookie(page: Page) -> str:
    [value] = [c["value"] for c in await page.context.cookies() if c["name"] == "chatstream_session"]
    return value


MARKUP_ANSWER = (
    'Look: <script>document.title = "pwned"</script> and <img src=x onerror="document.title = \'pwned\'">\n\n'
    "**bold** and `<b>code</b>` and [a site](https://example.com/) and [a trap](javascript:alert(1))"
)


async def test_markup_in_a_model_answer_is_shown_as_text(
    fake_engine: FakeEngine, fake_gateway: Gateway, open_page: OpenPage
) -> None:
    fake_engine.answer = MARKUP_ANSWER
    page = await open_page(fake_gateway.url)
    title = await page.title()
    await send(page, "Show me some markup")
    await answers_done(page, 1)

    for _ in ("streamed", "restored from the session"):
        answer = page.locator(f"{ANSWER} .body")
        text = await answer.inner_text()
        assert '<script>document.title = "pwned"</script>' in text
        assert "<img src=x onerror=" in text
        assert "[a trap](javascript:alert(1))" in text
        assert await answer.locator("script, img, b").count() == 0
        assert await answer.locator("strong").inner_text() == "bold"
        assert await answer.locator("code").inner_text() == "<b>code</b>"
        links = answer.locator("a")
        assert await links.count() == 1
        assert await links.get_attribute("href") == "https://example.com/"
        assert "noopener" in (await links.get_attribute("rel") or "")
        assert await page.title() == title
        await page.reload()
        await page.wait_for_selector(LOADED)


async def test_settings_show_their_ranges_and_refuse_bad_values(fake_gateway: Gateway, open_page: OpenPage) -> None:
    page = await open_page(fake_gateway.url)
    await page.click("#settings-toggle")
    assert await page.get_attribute("#settings-toggle", "aria-expanded") == "true"
    assert await page.inner_text("#r-temperature") == "from 0 to 2"
    await page.fill("#p-temperature", "5")
    await page.click("#settings-save")
    await page.wait_for_selector("#settings-status[data-kind='error']")
    assert "temperature" in await page.inner_text("#settings-status")
    response = await page.request.get(fake_gateway.url + "/get_generation_params")
    assert (await response.json())["params"]["temperature"] == 0.7

    await page.fill("#p-temperature", "0.2")
    await page.click("#settings-save")
    await page.wait_for_selector("#settings-status[data-kind='ok']")
    await page.reload()
    await expect(page.locator("#p-temperature")).to_have_value("0.2")


async def test_an_unavailable_engine_is_reported_and_the_input_kept(
    fake_engine: FakeEngine, fake_gateway: Gateway, open_page: OpenPage
) -> None:
    page = await open_page(fake_gateway.url)
    fake_engine.dead = True
    await send(page, "Hello?")
    await page.wait_for_selector("#notice:not([hidden])")
    notice = await page.inner_text("#notice")
    assert "not available right now" in notice and re.search(r"try again in \d+ seconds?\.", notice)
    assert await page.input_value("#input") == "Hello?"
    assert await page.locator("article.msg").count() == 0


async def test_a_lost_connection_is_reported_and_the_input_kept(fake_engine: FakeEngine, open_page: OpenPage) -> None:
    async with run_gateway(fake_engine, lifespan="on") as gw:
        page = await open_page(gw.url)
    await send(page, "Is anyone there?")
    await page.wait_for_selector("#notice:not([hidden])")
    assert "Could not reach the server" in await page.inner_text("#notice")
    assert await page.input_value("#input") == "Is anyone there?"
    assert await page.locator("article.msg").count() == 0


async def test_phone_width_needs_no_sideways_scrolling(
    fake_engine: FakeEngine, fake_gateway: Gateway, open_page: OpenPage
) -> None:
    fake_engine.answer = "A long word: " + "x" * 200 + "\n\n```\n" + "code " * 60 + "\n```"
    page = await open_page(fake_gateway.url, viewport=PHONE)
    await send(page, "Something wide")
    await answers_done(page, 1)
    assert await page.locator(f"{ANSWER} .body pre code").count() == 1
    assert await page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]
    send_box = await page.locator("#send").bounding_box()
    assert send_box is not None and send_box["x"] + send_box["width"] <= PHONE["width"]
    assert send_box["y"] + send_box["height"] <= PHONE["height"]


# --- headers and CORS (no browser needed) -------------------------------------------------------


async def get(settings: Settings, path: str, **kwargs: Any) -> httpx.Response:
    app = create_app(settings, engine=FakeEngine())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        return await client.request(kwargs.pop("method", "GET"), path, **kwargs)


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/app.css"])
async def test_the_page_and_its_files_carry_the_security_headers(path: str) -> None:
    response = await get(Settings(secure_cookies=False), path)
    assert response.status_code == 200
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["referrer-policy"] == "no-referrer"


PREFLIGHT = {"Origin": "https://front.example", "Access-Control-Request-Method": "POST"}


async def test_cors_is_off_by_default() -> None:
    response = await get(Settings(secure_cookies=False), "/chat_stream", method="OPTIONS", headers=PREFLIGHT)
    assert "access-control-allow-origin" not in response.headers


async def test_cors_allows_the_configured_origins_without_credentials() -> None:
    settings = Settings(secure_cookies=False, cors_origin=["https://front.example"])
    allowed = await get(settings, "/chat_stream", method="OPTIONS", headers=PREFLIGHT)
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://front.example"
    assert "access-control-allow-credentials" not in allowed.headers
    other = await get(settings, "/get_load", headers={"Origin": "https://elsewhere.example"})
    assert "access-control-allow-origin" not in other.headers
