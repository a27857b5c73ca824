"""The Prefect UI in a real browser: a custom run of the continuous-training deployment with one
parameter changed in the typed form runs to completion with that value."""

from __future__ import annotations

import json
import re
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
            (ARTIFACTS / "ui-custom-run-form.txt").write_text(page.locator("form").first.inner_text())
            check_form_order_and_inputs(page)
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
    # The deployment's own parameter says `schedule`; a person's custom run is recorded as manual.
    version = system.mlflow.client(system.workspace).get_model_version("ui-custom", "1")
    assert json.loads(version.tags["prefect_mlops.trigger"])["kind"] == "manual"


def label_top(page, text: str, *, after: float = 0.0) -> float:
    """The page's y of the first label reading `text` (the form may add " (Optional)") below `after`."""
    label = re.compile(rf"^{re.escape(text)}( \(Optional\))?$")
    tops = [box["y"] for box in (el.bounding_box() for el in page.get_by_text(label).all()) if box]
    found = [y for y in tops if y > after]
    assert found, f"no label {text!r} in the form below y={after}"
    return min(found)


def check_form_order_and_inputs(page) -> None:
    """Features: the target before the seed; trainer: the estimator first; no 'Property is type None'."""
    features = label_top(page, "features")
    trainer = label_top(page, "trainer")
    target, seed = label_top(page, "Target", after=features), label_top(page, "Seed", after=features)
    assert target < seed < trainer, (target, seed, trainer)
    estimator = label_top(page, "Estimator", after=trainer)
    for other in ("Kind", "Params", "Seed", "Label"):
        assert estimator < label_top(page, other, after=trainer), other
    assert page.get_by_text('Property is type "None"').count() == 0
    for name in ("suite_path", "workspace"):  # plain text inputs, with their descriptions
        assert page.get_by_label(re.compile(rf"^{name}( \(Optional\))?$")).first.is_editable(), name
    assert page.get_by_text("learned from the data on first use").is_visible()
    page.get_by_text("Feature, target, slice and split columns.").first.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "ui-custom-run-form-features.png"))
    page.get_by_text("Estimator (or torch network), its parameters, seed and compute route.").first \
        .scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "ui-custom-run-form-trainer.png"))


def test_the_retraining_automation_has_a_name_and_a_description_a_person_reads(system):
    from playwright.sync_api import sync_playwright

    with system.client() as client:
        names = {a.name: a for a in client.read_automations()}
    assert "churn: retrain on drift" in names, sorted(names)
    assert "retraining of `churn`" in names["churn: retrain on drift"].description
    assert not [n for n in names if "__automation_" in n], sorted(names)
    assert names["prefect-mlops: promotion"].description.startswith("Sends a message when")

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 900})
            page.goto(f"{system.ui_url}/v2/automations")
            page.get_by_text("churn: retrain on drift").first.wait_for(timeout=15000)
            page.screenshot(path=str(ARTIFACTS / "ui-automations.png"), full_page=True)
        finally:
            browser.close()
