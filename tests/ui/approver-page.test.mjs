// End-to-end tests of the approver web page in real headless Chromium (Debian's
// `chromium`, driven by playwright-core; no browser is ever downloaded).
//
// One `approvalplane serve` process (APPROVALPLANE_BIN, default
// target/debug/approvalplane) runs against a fake upstream and a local receiver
// standing in for ntfy. Approver alice has a personal ntfy topic; the sign-in link
// the test opens is the one the server pushed to her there, exactly as a phone
// would get it. On a 390×844 viewport the test:
//   1. opens the link, confirms, sees the pending refund with its amount and risk
//      (screenshots of the pending and detail views go to tests/ui/artifacts/),
//      and rejects it with a reason: the held agent request gets 403
//      approval_rejected with that reason;
//   2. sees a second refund appear without a reload, approves it, and the held
//      agent request completes with the upstream's answer;
//   3. keeps the pending page open while a third approval is decided through the
//      admin API, and measures the time until the page shows it (under 1 s).
//
// Run: node --test tests/ui/   (scripts/test does, after `cargo build`).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import net from "node:net";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, "../..");
const BIN = process.env.APPROVALPLANE_BIN || path.join(repo, "target/debug/approvalplane");
const CHROMIUM = process.env.CHROMIUM_PATH || "/usr/bin/chromium";
const ARTIFACTS = path.join(here, "artifacts");

const AGENT_TOKEN = "e2e-agent-token";
const ALICE_TOKEN = "e2e-alice-token";
const BOB_TOKEN = "e2e-bob-token";
const UPSTREAM_AUTH = "Bearer sk_test_injected";

const RULES = `package approvalplane

amount := to_number(input.request.parsed_body.amount) if is_string(input.request.parsed_body.amount)
dollars := floor(amount / 100)
cents := amount % 100
money := sprintf("$%v.%v", [dollars, cents]) if cents >= 10
money := sprintf("$%v.0%v", [dollars, cents]) if cents < 10

approval contains {
    "id": "stripe.refund.large",
    "reason": "refund over the $500 auto-approve threshold",
    "route": "finance-oncall",
    "risk": "high",
    "action": "issue_refund",
    "summary": {"amount": money, "charge": input.request.parsed_body.charge},
    "escalate_after": "15m",
    "expires_after": "1h",
} if {
    input.request.method == "POST"
    input.request.path == "/v1/refunds"
    amount > 50000
}
`;

// ---------------------------------------------------------------------------
// Fixtures: ports, a fake upstream, an ntfy receiver, the server.
// ---------------------------------------------------------------------------

function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.unref();
    s.on("error", reject);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

/** An HTTP server recording every request; `answer(req, body)` gives [status, json]. */
async function recorder(answer) {
  const seen = [];
  const waiters = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      const body = Buffer.concat(chunks).toString("utf8");
      const entry = { method: req.method, url: req.url, headers: req.headers, body };
      seen.push(entry);
      waiters.splice(0).forEach((w) => w());
      const [status, json] = answer(entry);
      res.writeHead(status, { "content-type": "application/json" });
      res.end(JSON.stringify(json));
    });
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  return {
    port: server.address().port,
    seen,
    /** Resolves with the first request matching `pred`, waiting up to `ms`. */
    async waitFor(pred, ms = 10_000) {
      const deadline = Date.now() + ms;
      for (;;) {
        const hit = seen.find(pred);
        if (hit) return hit;
        if (Date.now() > deadline) throw new Error("timed out waiting for a request");
        await new Promise((r) => { waiters.push(r); setTimeout(r, 100); });
      }
    },
    close: () => new Promise((r) => server.close(r)),
  };
}

let upstream, ntfy, server, serverLog, dir, agentUrl, controlUrl, browser, userDataDir;

async function waitHealthy(url, ms) {
  const deadline = Date.now() + ms;
  for (;;) {
    try {
      const r = await fetch(`${url}/healthz`);
      if (r.ok) return;
    } catch { /* not up yet */ }
    if (Date.now() > deadline) throw new Error(`server not healthy; log:\n${fs.readFileSync(serverLog, "utf8")}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

before(async () => {
  assert.ok(fs.existsSync(BIN), `approvalplane binary not found at ${BIN}: run cargo build first`);
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM}: run scripts/install-deps`);
  fs.mkdirSync(ARTIFACTS, { recursive: true });
  upstream = await recorder((r) => [200, { id: "re_e2e", object: "refund", status: "succeeded", echo: r.body }]);
  ntfy = await recorder(() => [200, { id: "msg" }]);
  dir = fs.mkdtempSync(path.join(os.tmpdir(), "approvalplane-ui-"));
  fs.mkdirSync(path.join(dir, "rules"));
  fs.writeFileSync(path.join(dir, "rules", "refunds.rego"), RULES);
  const [agentPort, controlPort] = [await freePort(), await freePort()];
  agentUrl = `http://127.0.0.1:${agentPort}`;
  controlUrl = `http://127.0.0.1:${controlPort}`;
  fs.writeFileSync(path.join(dir, "config.toml"), `
[server]
listen = "127.0.0.1:${agentPort}"
control_listen = "127.0.0.1:${controlPort}"
hold_timeout = "60s"
shutdown_grace = "2s"

[[upstream]]
name = "stripe"
url = "http://127.0.0.1:${upstream.port}"
inject_header = "Authorization"
inject_value_env = "STRIPE_AUTH"

[[agent]]
id = "support-agent"
token_env = "AGENT_TOKEN"

[[approver]]
id = "alice"
name = "Alice Example"
token_env = "ALICE_TOKEN"
ntfy_url_env = "ALICE_NTFY_URL"

[[approver]]
id = "bob"
token_env = "BOB_TOKEN"

[routes.finance-oncall]
approvers = ["alice", "bob"]

[policy]
rules = "rules"

[audit]
path = "audit"
`);
  serverLog = path.join(ARTIFACTS, "server.log");
  const log = fs.openSync(serverLog, "w");
  server = spawn(BIN, ["serve", "--config", path.join(dir, "config.toml")], {
    env: {
      PATH: process.env.PATH,
      AGENT_TOKEN, ALICE_TOKEN, BOB_TOKEN,
      STRIPE_AUTH: UPSTREAM_AUTH,
      ALICE_NTFY_URL: `http://127.0.0.1:${ntfy.port}/alice-phone`,
      APPROVALPLANE_LOG: "info",
    },
    stdio: ["ignore", log, log],
  });
  await waitHealthy(controlUrl, 15_000);

  userDataDir = fs.mkdtempSync(path.join(os.tmpdir(), "approvalplane-chromium-"));
  browser = await chromium.launchPersistentContext(userDataDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 390, height: 844 },
    isMobile: true,
    hasTouch: true,
    deviceScaleFactor: 1,
  });
});

after(async () => {
  await browser?.close().catch(() => {});
  if (server && server.exitCode === null) {
    const exited = new Promise((r) => server.once("exit", r));
    server.kill("SIGTERM");
    await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
    if (server.exitCode === null) server.kill("SIGKILL");
  }
  await upstream?.close();
  await ntfy?.close();
  for (const d of [dir, userDataDir]) if (d) fs.rmSync(d, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------

/** A refund through the proxy as the agent; held until someone decides. */
function refund(amount, charge) {
  return fetch(`${agentUrl}/stripe/v1/refunds`, {
    method: "POST",
    headers: {
      authorization: `Bearer ${AGENT_TOKEN}`,
      "content-type": "application/x-www-form-urlencoded",
    },
    body: `charge=${charge}&amount=${amount}`,
  }).then(async (r) => ({ status: r.status, body: await r.json() }));
}

async function pendingIds() {
  const r = await fetch(`${controlUrl}/v1/admin/approvals?status=pending`, {
    headers: { authorization: `Bearer ${BOB_TOKEN}` },
  });
  return (await r.json()).approvals.map((a) => a.id);
}

async function waitPending(n) {
  for (let i = 0; i < 200; i++) {
    const ids = await pendingIds();
    if (ids.length === n) return ids;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`never saw ${n} pending approvals`);
}

async function noHorizontalScroll(page) {
  const w = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(w <= 390, `the page is ${w}px wide on a 390px screen`);
}

// ---------------------------------------------------------------------------
// The tests, in order: they share one server and one browser.
// ---------------------------------------------------------------------------

test("without a session /ui is the sign-in page", async () => {
  const page = await browser.newPage();
  const res = await page.goto(`${controlUrl}/ui`);
  assert.equal(res.status(), 200);
  assert.equal(await page.locator('meta[name="viewport"]').count(), 1);
  await page.locator("#token").waitFor();
  await noHorizontalScroll(page);
  await page.screenshot({ path: path.join(ARTIFACTS, "signin.png") });
  await page.close();
});

test("a signed link from a push signs alice in; she rejects the refund and the agent gets 403 with her reason", async () => {
  const held = refund(240000, "ch_3PqE2e");
  const [id] = await waitPending(1);
  // The push alice's phone got: its click URL is her personal sign-in link.
  const push = await ntfy.waitFor((r) => JSON.parse(r.body).topic === "alice-phone");
  const msg = JSON.parse(push.body);
  assert.equal(msg.title, "Approval needed: issue_refund");
  assert.equal(msg.priority, 4);
  assert.match(msg.click, /\/ui\/link\//);
  const link = msg.click.replace(/^https?:\/\/[^/]+/, controlUrl);

  const page = await browser.newPage();
  await page.goto(link);
  // A confirm page: opening the link used nothing up.
  await page.getByRole("button", { name: "Continue as alice" }).waitFor();
  assert.equal(await page.locator("text=issue_refund").count(), 0, "nothing shown before sign-in");
  await Promise.all([page.waitForURL(`**/ui/approvals/${id}`), page.locator("#confirm").click()]);

  // The pending view: the refund with its amount and risk.
  await page.goto(`${controlUrl}/ui`);
  const card = page.locator(`li.card[data-id="${id}"]`);
  await card.waitFor();
  const text = await card.innerText();
  assert.match(text, /issue_refund/);
  assert.match(text, /\$2400\.00/);
  assert.match(text, /high/i);
  assert.match(text, /support-agent/);
  assert.match(text, /refund over the \$500 auto-approve threshold/);
  assert.match(text, /Waiting/);
  assert.match(text, /Escalates/);
  await noHorizontalScroll(page);
  await page.screenshot({ path: path.join(ARTIFACTS, "pending.png"), fullPage: true });

  // The detail view.
  await Promise.all([page.waitForURL(`**/ui/approvals/${id}`), card.locator("a").click()]);
  await page.locator("#reject").waitFor();
  const detail = await page.locator("main").innerText();
  for (const want of ["$2400.00", "Body SHA-256", "stripe.refund.large", "POST /stripe/v1/refunds", "approval_requested"]) {
    assert.ok(detail.includes(want), `detail shows ${want}`);
  }
  await noHorizontalScroll(page);
  await page.screenshot({ path: path.join(ARTIFACTS, "detail.png"), fullPage: true });

  // Reject without a reason: the page asks for one and nothing is sent.
  await page.locator("#reject").click();
  await page.locator("#decision-error").waitFor();
  assert.deepEqual(await pendingIds(), [id]);

  const reason = "Duplicate of re_1Nx: customer already refunded";
  await page.locator("#reason").fill(reason);
  await Promise.all([page.waitForLoadState("load"), page.locator("#reject").click()]);
  await page.locator("#outcome").waitFor();
  assert.match(await page.locator("#outcome").innerText(), /Rejected by alice via web/);

  const answer = await held;
  assert.equal(answer.status, 403);
  assert.equal(answer.body.error.type, "approval_rejected");
  assert.equal(answer.body.error.reason, reason);
  assert.equal(answer.body.error.decided_by, "alice");
  assert.equal(upstream.seen.length, 0, "nothing was forwarded");
  await page.close();
});

test("a link from another site lands a signed-in approver on the page, not on sign-in", async () => {
  // SameSite=Strict withholds the session cookie on a cross-site navigation (a
  // link in a chat or mail app); the page reloads itself once to send it.
  // localhost and 127.0.0.1 are different sites.
  const elsewhere = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "text/html" });
    res.end(`<!doctype html><a id="go" href="${controlUrl}/ui/history">open the approvals</a>`);
  });
  await new Promise((r) => elsewhere.listen(0, "127.0.0.1", r));
  try {
    const page = await browser.newPage();
    await page.goto(`http://localhost:${elsewhere.address().port}/`);
    await page.locator("#go").click();
    await page.locator(".who .approver").waitFor({ timeout: 5000 });
    assert.equal(await page.locator(".who .approver").innerText(), "alice");
    assert.match(page.url(), /\/ui\/history$/);
    await page.close();
  } finally {
    // The browser keeps its connection to this server alive: close it too, or
    // close() waits for the keep-alive timeout.
    elsewhere.closeAllConnections();
    await new Promise((r) => elsewhere.close(r));
  }
});

test("a second refund appears live, alice approves it, and the agent's request completes", async () => {
  const page = await browser.newPage();
  await page.goto(`${controlUrl}/ui`);
  await page.locator("body[data-feed=open]").waitFor();
  await page.evaluate(() => { window.__noReload = true; });
  const held = refund(99000, "ch_second");
  const [id] = await waitPending(1);
  const card = page.locator(`li.card[data-id="${id}"]`);
  await card.waitFor({ timeout: 5000 });
  assert.match(await card.innerText(), /\$990\.00/);
  assert.equal(await page.evaluate(() => window.__noReload), true, "it appeared without a reload");

  await Promise.all([page.waitForURL(`**/ui/approvals/${id}`), card.locator("a").click()]);
  await Promise.all([page.waitForLoadState("load"), page.locator("#approve").click()]);
  await page.locator("#outcome").waitFor();
  assert.match(await page.locator("#outcome").innerText(), /Approved by alice via web/);

  const answer = await held;
  assert.equal(answer.status, 200);
  assert.equal(answer.body.id, "re_e2e");
  assert.equal(upstream.seen.length, 1, "forwarded exactly once");
  assert.equal(upstream.seen[0].body, "charge=ch_second&amount=99000", "the approved bytes");
  assert.equal(upstream.seen[0].headers.authorization, UPSTREAM_AUTH, "the credential is injected");
  await page.close();
});

test("an admin API decision shows on the open page within one second, without a reload", async () => {
  const page = await browser.newPage();
  await page.goto(`${controlUrl}/ui`);
  await page.locator("body[data-feed=open]").waitFor();
  const held = refund(150000, "ch_third");
  const [id] = await waitPending(1);
  const card = page.locator(`li.card[data-id="${id}"]`);
  await card.waitFor({ timeout: 5000 });
  await page.evaluate(() => { window.__noReload = true; });

  // A watcher inside the page notes when the card goes; the clock is the page's.
  await page.evaluate((id) => {
    window.__goneAt = null;
    const obs = new MutationObserver(() => {
      if (!document.querySelector(`li.card[data-id="${id}"]`) && window.__goneAt === null) {
        window.__goneAt = performance.timeOrigin + performance.now();
      }
    });
    obs.observe(document.body, { childList: true, subtree: true });
  }, id);
  const started = Date.now();
  const r = await fetch(`${controlUrl}/v1/admin/approvals/${id}/decision`, {
    method: "POST",
    headers: { authorization: `Bearer ${BOB_TOKEN}`, "content-type": "application/json" },
    body: JSON.stringify({ decision: "reject", reason: "declined through the admin API" }),
  });
  assert.equal(r.status, 200);
  await page.waitForFunction(() => window.__goneAt !== null, null, { timeout: 1000 });
  const goneAt = await page.evaluate(() => window.__goneAt);
  const latency = Math.round(goneAt - started);
  console.log(`sse latency: admin API decision shown on the open page after ${latency} ms`);
  assert.ok(latency < 1000, `${latency} ms`);
  assert.equal(await page.evaluate(() => window.__noReload), true, "no reload");
  assert.match(await page.locator("main").innerText(), /Nothing is waiting for you/);

  const answer = await held;
  assert.equal(answer.status, 403);
  assert.equal(answer.body.error.reason, "declined through the admin API");

  // The history view, filtered, on a desktop-sized window too.
  await page.goto(`${controlUrl}/ui/history?status=rejected`);
  const rows = await page.locator("#history-list li").count();
  assert.equal(rows, 2);
  await page.setViewportSize({ width: 1280, height: 800 });
  await page.screenshot({ path: path.join(ARTIFACTS, "history-desktop.png"), fullPage: true });
  await page.close();
});
