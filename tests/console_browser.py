#!/usr/bin/env python3
"""Drives meterline's console (/console/ of `meterline api`) in headless
Chromium with Playwright, as finance operators would. Run by
tests/console.rs against a running pipeline; exits 1 naming the first
expectation that failed, and saves a screenshot of every page.

Needs: playwright (PyPI, in the venv deploy/local/deps makes) and Debian's
chromium (`$METERLINE_CHROMIUM`, default /usr/bin/chromium); Playwright's own
browser download is not used (no network needed).
"""

import argparse
import json
import os
import sys
import time

from playwright.sync_api import expect, sync_playwright

# Generous: the pipeline shares two cores with the browser.
WAIT_MS = 90_000
PAGE_ROWS = 50


def fail(message):
    print(f"FAILED: {message}")
    sys.exit(1)


def sign_in(page, url, key):
    page.goto(f"{url}/console/")
    page.evaluate("sessionStorage.clear()")
    page.goto(f"{url}/console/#/invoices")
    page.fill("#key", key)
    page.click("#signin button[type=submit]")
    expect(page.locator("#signout")).to_be_visible(timeout=WAIT_MS)


def go(page, url, route):
    page.goto(f"{url}/console/#/{route}")


def shot(page, shots, name):
    page.screenshot(path=os.path.join(shots, f"{name}.png"), full_page=True)


def reader_checks(page, a):
    """A read key: sees invoices and the held one's rules, no action button,
    and a command forged with it is refused 403."""
    sign_in(page, a.url, a.reader_key)
    expect(page.locator("table tbody tr").first).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text(a.held)).to_be_visible()
    shot(page, a.shots, "invoices")
    go(page, a.url, f"invoice/{a.held}")
    expect(page.locator("#invoice-status")).to_have_text("pending_approval", timeout=WAIT_MS)
    expect(page.get_by_role("cell", name="total_above")).to_be_visible()
    if page.locator("#actions").count() or page.locator("button[data-action]").count():
        fail("a read key is shown action buttons")
    shot(page, a.shots, "invoice-reader")
    status = page.evaluate(
        """async ([id, key]) => {
            const r = await fetch('/v1/invoices/' + encodeURIComponent(id) + '/commands', {
              method: 'POST',
              headers: {Authorization: 'Bearer ' + key, 'Content-Type': 'application/json'},
              body: JSON.stringify({kind: 'approve', reason: 'forged'})});
            return [r.status, (await r.json()).code];
        }""",
        [a.held, a.reader_key],
    )
    if status != [403, "forbidden"]:
        fail(f"a forged approve with the read key answered {status}, not [403, 'forbidden']")
    return {"forged_status": status[0]}


def approver_checks(page, a):
    """An approver approves the held invoice; the page shows it posted and
    its postings (more than before)."""
    sign_in(page, a.url, a.approver_key)
    go(page, a.url, f"invoice/{a.held}")
    expect(page.locator("#invoice-status")).to_have_text("pending_approval", timeout=WAIT_MS)
    postings_before = page.locator("table:has(caption:text-is('Postings')) tbody tr").count()
    page.click("button[data-action=approve]")
    expect(page.locator("#status")).to_contain_text("A reason is required")
    page.fill("#reason", "checked in the console")
    page.click("button[data-action=approve]")
    expect(page.locator("#status")).to_contain_text("approve applied: the invoice is posted", timeout=WAIT_MS)
    expect(page.locator("#invoice-status")).to_have_text("posted")
    postings_after = page.locator("table:has(caption:text-is('Postings')) tbody tr").count()
    if postings_after <= postings_before:
        fail(f"the approval added no posting to the invoice ({postings_before} -> {postings_after})")
    expect(page.get_by_role("cell", name="checked in the console").first).to_be_visible()
    shot(page, a.shots, "invoice-approved")
    # Approving it again does not fit: the page shows the stage's refusal.
    page.fill("#reason", "again")
    page.click("button[data-action=approve]")
    expect(page.locator("#status")).to_contain_text("approve refused [", timeout=WAIT_MS)
    refusal = page.locator("#status").inner_text()
    expect(page.locator("#invoice-status")).to_have_text("posted")
    return {"postings_before": postings_before, "postings_after": postings_after, "second_approve": refusal}


def credit_and_dispute(page, a):
    """On the posted invoice of c-late (85.00: 7,500 tokens at 0.01 and the
    10.00 base fee): a 10% credit memo, a dispute of 5.00 opened and won;
    the totals the page shows after each, to the cent."""
    go(page, a.url, f"invoice/{a.late_invoice}")
    expect(page.locator("#invoice-status")).to_have_text("posted", timeout=WAIT_MS)
    totals = page.locator("table:has(caption:text-is('Totals (USD)')) tbody tr")
    expect(totals).to_contain_text("85.00")
    steps = [
        ("percent", "10", "credit", "credit applied: the invoice is posted", "open 76.50 USD"),
        ("amount", "5.00", "dispute_open", "dispute_open applied", "open 71.50 USD"),
        (None, None, "dispute_resolve", "dispute_resolve applied", "open 76.50 USD"),
    ]
    for field, value, action, said, open_now in steps:
        page.fill("#reason", f"console {action}")
        if field:
            page.fill(f"#{field}", value)
        page.click(f"button[data-action={action}]")
        expect(page.locator("#status")).to_contain_text(said, timeout=WAIT_MS)
        expect(page.locator("#status")).to_contain_text(open_now)
    memos = page.locator("table:has(caption:text-is('Credit memos')) tbody tr")
    expect(memos).to_have_count(1)
    expect(memos.first).to_contain_text("8.50")
    disputes = page.locator("table:has(caption:text-is('Disputes')) tbody tr")
    expect(disputes.first).to_contain_text("won")
    return {"totals_after": totals.inner_text()}


def trace_checks(page, a):
    """The late event's trace: its adjustment window, the invoice it ended
    on, the ledger's ack; then back from one of its postings."""
    go(page, a.url, f"trace?source={a.late_source}&id={a.late_id}")
    expect(page.get_by_text("adjusting 2026-09-10").first).to_be_visible(timeout=WAIT_MS)
    windows = page.locator("table:has(caption:text-is('Windows, postings, invoice and ledger'))")
    adjustment = windows.locator("tr", has_text="adjusting 2026-09-10").first
    expect(adjustment).to_contain_text(a.late_invoice)
    expect(adjustment).to_contain_text("posted")
    # ledger-sync acknowledges asynchronously: reload until the ack shows.
    deadline = time.time() + WAIT_MS / 1000
    while "accepted" not in adjustment.inner_text():
        if time.time() > deadline:
            fail(f"no ledger ack on the adjustment row: {adjustment.inner_text()}")
        page.reload()
        expect(windows).to_be_visible(timeout=WAIT_MS)
        adjustment = windows.locator("tr", has_text="adjusting 2026-09-10").first
    for stage in ["validate", "dedupe", "enrich", "rate", "aggregate"]:
        expect(page.get_by_role("cell", name=stage, exact=True).first).to_be_visible()
    shot(page, a.shots, "trace")
    key = adjustment.locator("code").inner_text().lstrip("* ").strip()
    go(page, a.url, f"trace?posting={key}")
    expect(page.get_by_text("event(s), lineage digest")).to_be_visible(timeout=WAIT_MS)
    expect(page.get_by_text("* " + key)).to_be_visible()
    shot(page, a.shots, "trace-posting")
    return {"adjustment_row": adjustment.inner_text()}


def other_pages(page, a):
    """Usage (with its chart) and the last reconcile run, as the approver."""
    go(page, a.url, f"usage/{a.usage_subscription}")
    expect(page.locator("svg.chart")).to_be_visible(timeout=WAIT_MS)
    shot(page, a.shots, "usage")
    go(page, a.url, "reconcile")
    expect(page.locator("#reconcile-summary")).to_contain_text("every check held", timeout=WAIT_MS)
    shot(page, a.shots, "reconcile")
    return {"reconcile": page.locator("#reconcile-summary").inner_text()}


def admin_checks(page, a):
    """Exceptions as admin: the parked event and the dead letter, a dry run."""
    sign_in(page, a.url, a.admin_key)
    go(page, a.url, "exceptions")
    dead = page.locator("table:has(caption:text-is('Dead letters (within retention)')) tbody tr", has_text="validate")
    expect(dead.first).to_be_visible(timeout=WAIT_MS)
    parked = page.locator("table:has(caption:text-is('Parked events (waiting for reference data)')) tbody tr")
    expect(parked.first).to_contain_text("1")
    dead.first.locator("button", has_text="Dry run").click()
    expect(page.locator("#replay-result")).to_contain_text("would replay 1 record(s)", timeout=WAIT_MS)
    shot(page, a.shots, "exceptions")
    return {"parked_row": parked.first.inner_text()}


def bulk_checks(page, a):
    """10,000 invoices: the first page (50 rows) and the next, timed."""
    sign_in(page, a.bulk_url, a.reader_key)
    rows = page.locator("table tbody tr")
    started = time.monotonic()
    go(page, a.bulk_url, "invoices?status=")
    page.reload()
    expect(page.get_by_text(f"{a.bulk_invoices} invoice(s) match; {PAGE_ROWS} shown")).to_be_visible(timeout=WAIT_MS)
    first_ms = round((time.monotonic() - started) * 1000)
    expect(rows).to_have_count(PAGE_ROWS)
    first_id = rows.first.locator("a").inner_text()
    shot(page, a.shots, "invoices-10000")
    started = time.monotonic()
    page.click("text=Next page")
    expect(rows.first.locator("a")).not_to_have_text(first_id, timeout=WAIT_MS)
    next_ms = round((time.monotonic() - started) * 1000)
    expect(rows).to_have_count(PAGE_ROWS)
    go(page, a.bulk_url, "invoices?status=pending_approval")
    expect(page.get_by_text(f"{a.bulk_invoices // 5} invoice(s) match")).to_be_visible(timeout=WAIT_MS)
    return {"bulk_first_page_ms": first_ms, "bulk_next_page_ms": next_ms}


def main():
    p = argparse.ArgumentParser()
    for name in ["url", "bulk-url", "reader-key", "approver-key", "admin-key", "held", "late-invoice",
                 "late-source", "late-id", "usage-subscription", "shots"]:
        p.add_argument(f"--{name}", required=True)
    p.add_argument("--bulk-invoices", type=int, required=True)
    a = p.parse_args()
    chromium = os.environ.get("METERLINE_CHROMIUM", "/usr/bin/chromium")
    results = {}
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        for check in [reader_checks, approver_checks, credit_and_dispute, trace_checks, other_pages, admin_checks, bulk_checks]:
            results[check.__name__] = check(page, a)
        browser.close()
    if errors:
        fail(f"JavaScript errors on the pages: {errors}")
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
