"""The web page in a real headless Chromium (the OS's, through its chromedriver), end to end.

``mitrailleuse serve http`` on a loopback port serves the page at ``/``; real workers and the
simulator run the tasks. Each test writes a screenshot of its page to ``.screenshots/`` (not
committed). The run page's first load is measured (bytes, milliseconds) and printed: reported,
never asserted on time.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.providers.base import Answer
from mitrailleuse.records import ItemRef, failed, succeeded
from mitrailleuse.simulator import chat_answer
from mitrailleuse.taskfolder import Counts, now
from tests.e2e.helpers import questions
from tests.e2e.test_http import ALICE, TOKENS, serve  # noqa: F401

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SCREENSHOTS = REPO / ".screenshots"
#: How long a page may take to show what a test waits for (the fleet shares 2 cores).
WAIT_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.skip("no chromium and chromedriver here: apt-get install chromium chromium-driver")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1280,900")
    browser = webdriver.Chrome(service=Service(driver), options=options)
    yield browser
    browser.quit()


@pytest.fixture
def page(browser: WebDriver, serve, start_worker) -> Callable[..., WebDriver]:  # noqa: F811
    """Open the page at ``path`` (a ``#/...`` route) on a fresh server."""
    start_worker(queues=["openai", "mitrailleuse"], concurrency=4)
    server = serve()

    def open_page(route: str = "#/") -> WebDriver:
        browser.get(f"{server.url}/{route}")
        return browser

    open_page.server = server  # type: ignore[attr-defined]
    return open_page


def shot(browser: WebDriver, name: str) -> None:
    SCREENSHOTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def text_of(browser: WebDriver, css: str) -> str:
    found = browser.find_elements(By.CSS_SELECTOR, css)
    return found[0].text if found else ""


def wait_for(browser: WebDriver, check: Callable[[WebDriver], Any], what: str) -> Any:
    try:
        waiting = WebDriverWait(
            browser, WAIT_S, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
        )
        return waiting.until(check)
    except TimeoutException:
        logs = browser.get_log("browser")
        shown = browser.find_element(By.TAG_NAME, "main").text[-800:]
        raise AssertionError(
            f"{what}: not in {WAIT_S} s; page: {shown!r}; console: {logs}"
        ) from None


def create(server, name: str, rows: list[dict], config: dict | None = None) -> dict:
    body = {"user_id": "alice", "api": "openai", "task_name": name, "items": rows}
    response = server.client.post("/v1/tasks", json={**body, "config": config or {}})
    assert response.status_code == 201, response.text
    return response.json()


def execute(server, task: dict) -> None:
    response = server.client.post(f"/v1/tasks/{task['id']}/execute")
    assert response.status_code == 202, response.text


def finished(server, task: dict) -> dict:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = server.client.get(f"/v1/tasks/{task['id']}").json()
        if view["state"] in ("completed", "failed", "cancelled"):
            return view
        time.sleep(0.2)
    raise AssertionError(f"{task['id']} did not finish")


def run_href(task: dict) -> str:
    return "#/run/" + task["id"]


def test_the_runs_page_lists_a_finished_and_a_running_task(page, sim):
    server = page.server
    done = create(server, "finished-one", questions(5))
    execute(server, done)
    finished(server, done)
    sim.configure(latency_ms=400)
    going = create(server, "running-one", questions(60))
    execute(server, going)
    browser = page("#/")
    row = f"#runs-table tr[data-task-id='{going['id']}'] .state"
    wait_for(browser, lambda b: text_of(b, row) in ("queued", "running"), "the running task")
    finished_row = f"#runs-table tr[data-task-id='{done['id']}'] .state"
    assert text_of(browser, finished_row) == "completed"
    names = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "#runs-table tbody tr a")]
    assert names.index("running-one") < names.index("finished-one")  # newest first
    shot(browser, "runs")


def test_the_run_page_counts_as_the_run_goes_and_ends_completed(page, sim):
    server = page.server
    sim.configure(latency_ms=1000)  # 12 chunks of 5, 4 at a time: about 3 s
    task = create(server, "watched", questions(60), {"openai": {"batch": {"batch_size": 5}}})
    execute(server, task)
    browser = page(run_href(task))
    seen = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline and text_of(browser, "#run-state") != "completed":
        done = text_of(browser, "#run-done")
        if not seen or seen[-1] != done:
            seen.append(done)
        time.sleep(0.05)
    assert text_of(browser, "#run-state") == "completed", seen
    assert text_of(browser, "#run-done") == "60 / 60"
    moved = [s for s in seen if s not in ("–", "0 / 60", "60 / 60")]
    assert moved, f"the counter went straight to the end: {seen}"
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "[data-download]"), "downloads")
    assert browser.find_element(By.ID, "cancel").get_attribute("disabled") is not None
    shot(browser, "run")
    metrics = first_load(browser, page, task)
    print(f"\nrun page first load: {json.dumps(metrics)}")
    assert metrics["bytes"] < 300_000


def first_load(browser: WebDriver, page, task: dict) -> dict[str, float]:
    """The run page loaded afresh: bytes over the wire and ms until its figures show."""
    browser.execute_cdp_cmd("Network.enable", {})
    browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})  # a first visit
    browser.get("about:blank")
    started = time.monotonic()
    page(run_href(task))
    wait_for(browser, lambda b: text_of(b, "#run-done") == "60 / 60", "the figures")
    shown_ms = (time.monotonic() - started) * 1000
    sizes = browser.execute_script(
        "return performance.getEntries().map(e => e.transferSize || e.encodedBodySize || 0)"
    )
    browser.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": False})
    return {"bytes": sum(sizes), "ms_until_figures": round(shown_ms)}


def test_cancel_and_resume_from_the_run_page(page, sim):
    server = page.server
    sim.configure(latency_ms=2000)  # 2,000 items, 80 at a time: about 50 s, far from over
    task = create(server, "to-cancel", questions(2000))
    execute(server, task)
    browser = page(run_href(task))
    wait_for(browser, lambda b: b.find_element(By.ID, "cancel").is_enabled(), "cancel enabled")
    browser.find_element(By.ID, "cancel").click()
    browser.switch_to.alert.accept()
    wait_for(browser, lambda b: text_of(b, "#run-state") == "cancelled", "cancelled")
    view = server.client.get(f"/v1/tasks/{task['id']}").json()
    assert view["state"] == "cancelled" and view["counts"]["done"] < 2000
    shot(browser, "cancelled")
    browser.find_element(By.ID, "resume").click()
    browser.switch_to.alert.accept()
    wait_for(browser, lambda b: text_of(b, "#run-state") in ("queued", "running"), "resumed")
    server.client.post(f"/v1/tasks/{task['id']}/cancel")  # not to be waited for


def test_the_viewer_pages_a_hundred_thousand_records_and_opens_a_failed_one(page, tasks_dir):
    """A finished 100,000-record run, its results file written as the assembler writes them
    (running 100,000 items here would take minutes): the viewer reads it a page at a time."""
    task = hundred_thousand(tasks_dir)
    browser = page("#/records/" + task["id"])
    rows = "#records-table tbody tr"
    wait_for(browser, lambda b: len(b.find_elements(By.CSS_SELECTOR, rows)) == 50, "a page")
    first = browser.find_element(By.CSS_SELECTOR, rows).get_attribute("data-offset")
    browser.find_element(By.ID, "records-next").click()
    wait_for(
        browser,
        lambda b: b.find_element(By.CSS_SELECTOR, rows).get_attribute("data-offset") != first,
        "the next page",
    )
    assert text_of(browser, rows + " td") == "51"
    browser.find_element(By.CSS_SELECTOR, "#records-show option[value='failed']").click()
    wait_for(browser, lambda b: "show=failed" in b.current_url, "the failed filter")
    wait_for(
        browser,
        lambda b: (
            {e.get_attribute("data-status") for e in b.find_elements(By.CSS_SELECTOR, rows)}
            == {"failed"}
        ),
        "failed rows only",
    )
    browser.find_element(By.CSS_SELECTOR, rows).click()
    error = wait_for(browser, lambda b: text_of(b, "#record-error"), "the opened record")
    assert error.startswith("http_500: ")
    assert "what is" in text_of(browser, "#record-request")  # its request, from its input
    shot(browser, "records")


def hundred_thousand(tasks_dir: Path) -> dict:
    """A task of 100,000 items whose run ended: every 97th failed, the rest answered."""
    total = 100_000
    client = Mitrailleuse(tasks_dir=tasks_dir)
    folder = client.create_task("alice", "openai", "hundred-thousand", None, questions(total))
    lines = []
    for n in range(1, total + 1):
        item = ItemRef(f"items.jsonl:{n}", "items.jsonl", n, n - 1)
        if n % 97 == 0:
            error = {"type": "http_500", "message": "the server had an error", "status_code": 500}
            record = failed(item, "openai", "gpt-4o-mini", error, attempts=6, latency_ms=40)
        else:
            answer = Answer(f"{n} squared is {n * n}", {"id": f"r{n}"}, {"total_tokens": 20})
            record = succeeded(item, "openai", "gpt-4o-mini", answer, 1, 40, cost_usd=1e-6)
        lines.append(json.dumps(record, separators=(",", ":")))
    folder.outputs_dir.mkdir(exist_ok=True)
    folder.results_path.write_text("\n".join(lines) + "\n")
    failures = total // 97
    counts = Counts(total=total, done=total, failed=failures, succeeded=total - failures)
    folder.update_status(state="completed", run_id="r-100k", counts=counts, finished_at=now())
    return {"id": f"alice/{folder.name}"}


def ask(page, prompt: str) -> tuple[WebDriver, str]:
    """Open the chat, send ``prompt``: the browser, and the answer the simulator streams."""
    browser = page("#/chat")
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, "#chat-model option"), "models")
    browser.find_element(By.ID, "chat-input").send_keys(prompt)
    browser.find_element(By.ID, "chat-send").click()
    return browser, chat_answer([{"role": "user", "content": prompt}])


def test_the_chat_shows_tokens_as_they_stream(page, sim):
    sim.configure(stream_chunk_ms=120)
    browser, expected = ask(page, "tell me slowly about the seven colours of a rainbow")
    lengths = []
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        shown = text_of(browser, "#chat-answer")
        if not lengths or lengths[-1] != len(shown):
            lengths.append(len(shown))
        if shown == expected:
            break
        time.sleep(0.03)
    assert text_of(browser, "#chat-answer") == expected
    assert len([n for n in lengths if 0 < n < len(expected)]) >= 2, lengths  # it grew
    shot(browser, "chat")


def test_a_chat_reloaded_mid_answer_goes_on_where_it_was(page, sim):
    sim.configure(stream_chunk_ms=150)
    prompt = "tell me about the tides and the moon, one word at a time"
    browser, expected = ask(page, prompt)
    wait_for(browser, lambda b: len(text_of(b, "#chat-answer")) > 5, "the first tokens")
    browser.refresh()
    wait_for(browser, lambda b: text_of(b, "#chat-answer") == expected, "the whole answer")
    assert [e.text for e in browser.find_elements(By.CSS_SELECTOR, ".msg.user")] == [prompt]
    assert sim.stats()["chat_streams"] == 1  # the answer was not asked for again


def test_with_tokens_a_user_signs_in_and_sees_only_their_tasks(browser, serve, tasks_dir):  # noqa: F811
    server = serve({"MITRAILLEUSE_API_TOKENS": TOKENS})
    mine = Mitrailleuse(tasks_dir=tasks_dir).create_task("alice", "openai", "mine", None, [{}])
    Mitrailleuse(tasks_dir=tasks_dir).create_task("bob", "openai", "theirs", None, [{}])
    browser.get(f"{server.url}/#/")
    browser.execute_script("window.sessionStorage.clear()")
    browser.refresh()
    wait_for(browser, lambda b: b.find_elements(By.ID, "login-token"), "the sign-in form")
    browser.find_element(By.ID, "login-token").send_keys("not-a-token-at-all")
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    wait_for(browser, lambda b: "not known" in text_of(b, "#login-error"), "the refusal")
    token = browser.find_element(By.ID, "login-token")
    token.clear()
    token.send_keys(ALICE)
    browser.find_element(By.CSS_SELECTOR, "#login-form button").click()
    rows = "#runs-table tbody tr"
    wait_for(browser, lambda b: b.find_elements(By.CSS_SELECTOR, rows), "alice's tasks")
    ids = [e.get_attribute("data-task-id") for e in browser.find_elements(By.CSS_SELECTOR, rows)]
    assert ids == [f"alice/{mine.name}"]
    shot(browser, "signed-in")
    browser.execute_script("window.sessionStorage.clear()")
