"""The Prefect UI in a real browser: a custom run of the continuous-training deployment with one
parameter changed in the typed form runs to completion with that value."""

from __future__ import annotations

import shutil
import time
from datetime import datetime, timezone

import pytest

from tests.system.stack import ARTIFACTS

pytestmark = [pytest.mark.system, pytest.mark.browser]
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--no-first-run"]


def test_custom_run_from_the_ui_form_completes_with_the_changed_parameter(system):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium")
    assert chromium, "chromium is not installed: run `make browser` (apt-get install -y chromium)"
    deployment = system.deployment("continuous-training/churn")
    since = datetime.now(timezone.utc)
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{system.ui_url}/v2/deployments/deployment/{deployment.id}")
            page.get_by_role("button", name="Run").first.click()
            page.get_by_role("menuitem", name="Custom run").click()
            model_name = page.get_by_label("model_name", exact=True)
            model_name.wait_for()
            assert model_name.input_value() == "churn"
            run_name = page.get_by_label("Run Name")
            deadline = time.monotonic() + 10
            while not run_name.input_value() and time.monotonic() < deadline:  # the form fills it late
                time.sleep(0.1)
            assert page.get_by_text("Where the training data comes from.").is_visible()  # descriptions render
            name = run_name.input_value()
            model_name.fill("ui-custom")
            page.screenshot(path=str(ARTIFACTS / "ui-custom-run-form.png"), full_page=True)
            page.get_by_role("button", name="Submit").click()
            page.wait_for_url("**/deployments/deployment/**", timeout=15000)  # back on the deployment page

            # The page does not show the run's parameters: confirm it through the API.
            (run,) = [r for r in system.runs_of("continuous-training/churn", since=since)
                      if r.parameters.get("model_name") == "ui-custom"]
            assert run.name == name
            assert set(run.parameters["source"]) == {"$ref"}, "the block parameter lost its reference"
            run = system.wait(run.id, timeout=300)
            assert run.state.name == "Completed", f"{run.state.name}: {run.state.message}"

            page.goto(f"{system.ui_url}/v2/runs/flow-run/{run.id}")
            page.get_by_text("Completed").first.wait_for(timeout=15000)
            page.screenshot(path=str(ARTIFACTS / "ui-custom-run-completed.png"), full_page=True)
        finally:
            browser.close()
    assert system.champion("ui-custom") == "1"
