// The TypeScript SDK (built to dist/) against the real `approvalplane serve`.
// hold_timeout is 1 s, so waits longer than that go through the GET ?wait= loop.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { after, before, describe, test } from "node:test";

import {
  ApprovalPlane,
  ApprovalPlaneError,
  Conflict,
  NotFound,
  TransportError,
  Unauthorized,
  requestApproval,
} from "../dist/index.js";
import { freePort, startApprovalPlane } from "./harness.mjs";

const AGENT_TOKEN = "ts-agent-token-51f0";
const OTHER_TOKEN = "ts-other-agent-token-0c3d";
const ALICE_TOKEN = "ts-alice-token-b2e8";
const TIMEOUT = 15;

const CONFIG = `
[server]
listen = "@LISTEN@"
control_listen = "@CONTROL_LISTEN@"
hold_timeout = "1s"

[[upstream]]
name = "unused"
url = "http://127.0.0.1:9"

[[agent]]
id = "ts-agent"
token_env = "TS_AGENT_TOKEN"

[[agent]]
id = "other-agent"
token_env = "OTHER_AGENT_TOKEN"

[[approver]]
id = "alice"
token_env = "ALICE_TOKEN"

[routes.ops]
approvers = ["alice"]

[policy]
rules = "rules"

[audit]
path = "audit"
`;

const RULES = `package approvalplane

allow contains {"id": "api.read", "reason": "reading a record is safe"} if {
	input.kind == "api"
	input.action == "read_record"
}

deny contains {"id": "api.drop", "reason": "dropping a database is never allowed"} if {
	input.kind == "api"
	input.action == "drop_database"
}

approval contains {"id": "api.refund", "reason": "refunds need a person", "route": "ops", "risk": "high",
                   "action": "issue_refund", "expires_after": "10m"} if {
	input.kind == "api"
	input.action == "issue_refund"
}

approval contains {"id": "api.short_lived", "reason": "expires quickly", "route": "ops", "expires_after": "2s"} if {
	input.kind == "api"
	input.action == "short_lived"
}
`;

const unique = () => randomBytes(6).toString("hex");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

describe("requestApproval against approvalplane serve", () => {
  let ap;
  let admin;
  let client;

  before(async () => {
    ap = await startApprovalPlane({
      config: CONFIG,
      rules: { "main.rego": RULES },
      secrets: { TS_AGENT_TOKEN: AGENT_TOKEN, OTHER_AGENT_TOKEN: OTHER_TOKEN, ALICE_TOKEN },
    });
    admin = ap.admin(ALICE_TOKEN);
    client = new ApprovalPlane({ baseUrl: ap.proxyUrl, token: AGENT_TOKEN });
  });

  after(async () => {
    await ap?.stop();
  });

  const seen = (justification) => admin.waitForApproval((a) => a.justification === justification);

  test("allowed by policy answers at once", async () => {
    const started = Date.now();
    const d = await requestApproval({ action: "read_record", payload: { r: unique() }, baseUrl: ap.proxyUrl, token: AGENT_TOKEN });
    assert.ok(Date.now() - started < 3000);
    assert.equal(d.approved, true);
    assert.equal(d.status, "approved");
    assert.equal(d.decidedBy, "policy");
    assert.equal(d.reason, "reading a record is safe");
    assert.match(d.approvalId, /^apr_/);
    assert.equal(d.final, true);
  });

  test("approved by a person while waiting", async () => {
    const j = unique();
    const asked = client.requestApproval({
      action: "issue_refund",
      payload: { customer: "cus_4193", amount: 2400.0 },
      risk: "high",
      policyHints: ["refund", "over_threshold"],
      justification: j,
      timeoutSeconds: TIMEOUT,
    });
    let settled = false;
    asked.finally(() => (settled = true));
    const pending = await seen(j);
    await sleep(1500); // past hold_timeout: the SDK is long-polling with GET now
    assert.equal(settled, false, "requestApproval settled before anyone decided");
    await admin.approve(pending.id, "verified");
    const d = await asked;
    assert.equal(d.approved, true);
    assert.equal(d.decidedBy, "alice");
    assert.equal(d.reason, "verified");
    assert.equal(d.approvalId, pending.id);
    assert.equal(d.approval.justification, j);
  });

  test("rejected with a reason", async () => {
    const j = unique();
    const asked = client.requestApproval({ action: "issue_refund", payload: { order: j }, justification: j, timeoutSeconds: TIMEOUT });
    const pending = await seen(j);
    await admin.reject(pending.id, "already refunded");
    const d = await asked;
    assert.equal(d.approved, false);
    assert.equal(d.status, "rejected");
    assert.equal(d.reason, "already refunded");
    assert.equal(d.decidedBy, "alice");
    assert.match(d.message, /already refunded/);
  });

  test("expired is reported as expired", async () => {
    const started = Date.now();
    const d = await client.requestApproval({ action: "short_lived", payload: { n: unique() }, timeoutSeconds: TIMEOUT });
    assert.equal(d.status, "expired");
    assert.equal(d.approved, false);
    assert.equal(d.decidedBy, null);
    assert.ok(Date.now() - started >= 1500);
  });

  test("the client's timeout gives pending, and waiting can resume", async () => {
    const j = unique();
    const started = Date.now();
    const d = await client.requestApproval({ action: "issue_refund", payload: { order: j }, justification: j, timeoutSeconds: 1.5 });
    const elapsed = Date.now() - started;
    assert.equal(d.status, "pending");
    assert.equal(d.pending, true);
    assert.equal(d.reason, d.message, "an agent always has a why to say");
    assert.equal(d.approved, false);
    assert.ok(elapsed >= 1200 && elapsed < 5000, `elapsed ${elapsed}`);
    await admin.approve(d.approvalId);
    const resumed = await client.waitForDecision(d.approvalId, { timeoutSeconds: TIMEOUT });
    assert.equal(resumed.approved, true);
  });

  test("an identical retry attaches to the same approval; a reused key with another payload conflicts", async () => {
    const order = unique();
    const a = await client.requestApproval({ action: "issue_refund", payload: { amount: 1, order }, timeoutSeconds: 0 });
    const b = await client.requestApproval({ action: "issue_refund", payload: { order, amount: 1 }, timeoutSeconds: 0 });
    assert.equal(a.status, "pending");
    assert.equal(b.approvalId, a.approvalId);
    await admin.approve(a.approvalId, "ok");
    const c = await client.requestApproval({ action: "issue_refund", payload: { amount: 1, order }, timeoutSeconds: TIMEOUT });
    assert.equal(c.approved, true);
    assert.equal(c.approvalId, a.approvalId);

    const key = `idem-${unique()}`;
    const k1 = await client.requestApproval({ action: "issue_refund", payload: { amount: 5, order }, idempotencyKey: key, timeoutSeconds: 0 });
    const k2 = await client.requestApproval({ action: "issue_refund", payload: { amount: 5, order }, idempotencyKey: key, timeoutSeconds: 0 });
    assert.equal(k2.approvalId, k1.approvalId);
    await assert.rejects(
      client.requestApproval({ action: "issue_refund", payload: { amount: 6, order }, idempotencyKey: key, timeoutSeconds: 0 }),
      (e) => e instanceof Conflict && e.status === 409 && e.errorType === "idempotency_conflict",
    );
  });

  test("a policy denial is a decision, not an error", async () => {
    const d = await client.requestApproval({ action: "drop_database", payload: { db: unique() } });
    assert.equal(d.approved, false);
    assert.equal(d.status, "denied");
    assert.equal(d.rule, "api.drop");
    assert.equal(d.decidedBy, "policy");
    assert.equal(d.approvalId, null);
    assert.match(d.reason, /never allowed/);
  });

  test("a bad token throws Unauthorized", async () => {
    await assert.rejects(
      requestApproval({ action: "read_record", baseUrl: ap.proxyUrl, token: "wrong" }),
      (e) => e instanceof Unauthorized && e instanceof ApprovalPlaneError && e.status === 401 && e.errorType === "agent_unauthorized",
    );
  });

  test("another agent's approval is not found", async () => {
    const mine = await client.requestApproval({ action: "issue_refund", payload: { o: unique() }, timeoutSeconds: 0 });
    const other = new ApprovalPlane({ baseUrl: ap.proxyUrl, token: OTHER_TOKEN });
    await assert.rejects(other.getApproval(mine.approvalId), NotFound);
  });

  test("base URL and token come from the environment", async () => {
    const saved = { url: process.env.APPROVALPLANE_URL, token: process.env.APPROVALPLANE_TOKEN };
    process.env.APPROVALPLANE_URL = ap.proxyUrl + "/";
    process.env.APPROVALPLANE_TOKEN = AGENT_TOKEN;
    try {
      const d = await requestApproval({ action: "read_record", payload: { r: unique() } });
      assert.equal(d.approved, true);
    } finally {
      for (const [k, v] of [["APPROVALPLANE_URL", saved.url], ["APPROVALPLANE_TOKEN", saved.token]]) {
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
      }
    }
  });

  test("an abort signal stops the wait with its reason", async () => {
    const controller = new AbortController();
    const asked = client.requestApproval({ action: "issue_refund", payload: { o: unique() }, signal: controller.signal });
    setTimeout(() => controller.abort(new Error("user gave up")), 300);
    await assert.rejects(asked, /user gave up/);
  });
});

test("nothing listening throws TransportError", async () => {
  const url = `http://127.0.0.1:${await freePort()}`;
  await assert.rejects(requestApproval({ action: "issue_refund", baseUrl: url, token: "t" }), (e) => {
    assert.ok(e instanceof TransportError, String(e));
    assert.ok(e.message.includes(url));
    return true;
  });
});
