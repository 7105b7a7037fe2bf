"""A viewer started with a token, in a real Chromium: opened once with ``?token=``, its pages work throughout."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from playwright.sync_api import expect

from otelflow import attributes as A
from otelflow.viewer.security import SESSION_COOKIE
from tests.viewer.conftest import Viewer, record, span_id, trace_id

pytestmark = pytest.mark.browser

TOKEN = "browser-s3cret"


def test_pages_work_after_opening_them_with_the_token(make_viewer: Callable[..., Viewer], page: Any) -> None:
    viewer = make_viewer(token=TOKEN)
    trace, root = trace_id(), span_id()
    running = [record(trace, root, "invoke_workflow guarded", kind=A.KIND_WORKFLOW, run_id="job-guarded")]
    assert viewer.post_json(running, authorization=f"Bearer {TOKEN}").status_code == 200

    page.goto(f"{viewer.url}/?token={TOKEN}")
    expect(page.locator(f'tr[data-run-id="{trace}"]')).to_have_attribute("data-status", "running")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    assert page.url == f"{viewer.url}/", "the token must not stay in the address bar"
    (cookie,) = [c for c in page.context.cookies() if c["name"] == SESSION_COOKIE]
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert TOKEN not in cookie["value"]

    # live updates reach the page over its stream, which carries only the cookie
    step = record(trace, span_id(), "invoke_agent late", parent=root, kind=A.KIND_AGENT, ended=True)
    ended = record(trace, root, "invoke_workflow guarded", kind=A.KIND_WORKFLOW, run_id="job-guarded", ended=True)
    assert viewer.post_json([step, ended], authorization=f"Bearer {TOKEN}").status_code == 200
    expect(page.locator(f'tr[data-run-id="{trace}"]')).to_have_attribute("data-status", "ok")

    page.locator(f'tr[data-run-id="{trace}"] .run-link').click()
    page.wait_for_url(f"{viewer.url}/runs/**")
    expect(page.locator("#run-name")).to_contain_text("guarded")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    expect(page.locator(".tl-row")).to_have_count(2)
    page.probe.assert_clean()

    # a run page opened directly with the token is redirected too, keeping its other parameters
    page.goto(f"{viewer.url}/runs/{trace}?token={TOKEN}&kind=agent")
    assert page.url == f"{viewer.url}/runs/{trace}?kind=agent"
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    page.probe.assert_clean()


def test_a_link_with_the_token_from_another_site_works(make_viewer: Callable[..., Viewer], page: Any) -> None:
    # A page of another origin (about:blank's is opaque) links to the viewer, as a chat message or a dashboard
    # would: Chromium withholds SameSite=Strict cookies on redirects of such a navigation.
    viewer = make_viewer(token=TOKEN)
    trace = trace_id()
    run = [record(trace, span_id(), "invoke_workflow shared", kind=A.KIND_WORKFLOW)]
    assert viewer.post_json(run, authorization=f"Bearer {TOKEN}").status_code == 200
    page.set_content(f'<a id="link" href="{viewer.url}/runs/{trace}?token={TOKEN}">the run</a>')
    page.locator("#link").click()
    page.wait_for_url(f"{viewer.url}/runs/{trace}")
    expect(page.locator("#run-name")).to_contain_text("shared")
    expect(page.locator("#conn")).to_have_attribute("data-state", "connected")
    page.go_back()
    assert TOKEN not in page.url, "the token must not stay in the history"
    page.probe.assert_clean()
