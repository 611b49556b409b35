// How the SDK reads answers, with a scripted fetch: answers the real binary is
// hard to provoke on demand. None of them may ever become an approval.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  ApprovalPlane,
  ConfigurationError,
  ProtocolError,
  ServerError,
  Unavailable,
} from "../dist/index.js";

const ID = "apr_0123456789abcdef0123";
const approval = (status, extra = {}) => ({
  id: ID,
  status,
  approved: status === "approved",
  decided_by: null,
  reason: null,
  ...extra,
});

/** A fetch that answers from a list of [status, body, headers]; the last one repeats. */
function scripted(...answers) {
  const calls = [];
  const fetchImpl = async (url, init) => {
    calls.push({ url: new URL(url), init });
    const [status, body, headers = {}] = answers.length > 1 ? answers.shift() : answers[0];
    const text = typeof body === "string" ? body : JSON.stringify(body);
    return new Response(text, { status, headers: { "content-type": "application/json", ...headers } });
  };
  return { fetchImpl, calls };
}

const clientFor = (fetchImpl, extra = {}) =>
  new ApprovalPlane({ baseUrl: "http://approvalplane.test", token: "agent-token", fetch: fetchImpl, ...extra });

test("request shape, headers and the poll loop", async () => {
  const { fetchImpl, calls } = scripted(
    [200, approval("pending")],
    [200, approval("pending")],
    [200, approval("approved", { decided_by: "alice", reason: "fine" })],
  );
  const d = await clientFor(fetchImpl, { pollWaitSeconds: 0.5 }).requestApproval({
    action: "issue_refund",
    payload: { amount: 2400 },
    risk: "high",
    policyHints: ["refund"],
    justification: "duplicate charge",
    idempotencyKey: "k-1",
    timeoutSeconds: 10,
  });
  assert.equal(d.approved, true);
  assert.equal(d.decidedBy, "alice");
  const [post, get1, get2] = calls;
  assert.equal(post.init.method, "POST");
  assert.equal(post.url.pathname, "/v1/approvals");
  assert.equal(post.init.headers.Authorization, "Bearer agent-token");
  assert.equal(post.init.headers["Idempotency-Key"], "k-1");
  assert.deepEqual(JSON.parse(post.init.body), {
    action: "issue_refund",
    payload: { amount: 2400 },
    risk: "high",
    policy_hints: ["refund"],
    justification: "duplicate charge",
    wait: 0.5,
  });
  for (const g of [get1, get2]) {
    assert.equal(g.init.method, "GET");
    assert.equal(g.url.pathname, `/v1/approvals/${ID}`);
    assert.equal(g.url.searchParams.get("wait"), "0.5");
  }
});

test("503 with Retry-After throws Unavailable", async () => {
  const { fetchImpl } = scripted([503, { error: { type: "store_unavailable", message: "down" } }, { "retry-after": "5", "x-request-id": "req_1" }]);
  await assert.rejects(clientFor(fetchImpl).requestApproval({ action: "x" }), (e) => {
    assert.ok(e instanceof Unavailable);
    assert.equal(e.retryAfter, 5);
    assert.equal(e.errorType, "store_unavailable");
    assert.equal(e.requestId, "req_1");
    return true;
  });
});

test("an error while polling throws, never approves", async () => {
  const { fetchImpl } = scripted([200, approval("pending")], [503, { error: { type: "shutting_down", message: "bye" } }]);
  await assert.rejects(clientFor(fetchImpl, { pollWaitSeconds: 0.2 }).requestApproval({ action: "x", timeoutSeconds: 5 }), Unavailable);
});

for (const [name, status, body, cls] of [
  ["not JSON", 200, "<html>ok</html>", ProtocolError],
  ["not an object", 200, [1, 2], ProtocolError],
  ["no id", 200, { status: "approved", approved: true }, ProtocolError],
  ["approved flag without the status", 200, approval("pending", { approved: true }), ProtocolError],
  ["the status without the flag", 200, approval("approved", { approved: false }), ProtocolError],
  ["no flag at all", 200, { id: ID, status: "approved" }, ProtocolError],
  ["a 500 page", 500, "<html>oops</html>", ServerError],
]) {
  test(`malformed answer (${name}) throws`, async () => {
    const { fetchImpl } = scripted([status, body]);
    await assert.rejects(clientFor(fetchImpl).requestApproval({ action: "x" }), cls);
  });
}

test("a server that never holds is not hammered", async () => {
  const { fetchImpl, calls } = scripted([200, approval("pending")]);
  const started = Date.now();
  const d = await clientFor(fetchImpl, { pollWaitSeconds: 5 }).requestApproval({ action: "x", timeoutSeconds: 2.5 });
  const elapsed = Date.now() - started;
  assert.equal(d.pending, true);
  assert.equal(d.approved, false);
  assert.ok(elapsed >= 2300 && elapsed < 4000, `elapsed ${elapsed}`);
  assert.ok(calls.length <= 5, `${calls.length} calls`);
});

test("configuration errors", async () => {
  assert.throws(() => new ApprovalPlane({ baseUrl: "ftp://x" }), ConfigurationError);
  const { fetchImpl } = scripted([200, approval("approved")]);
  const c = clientFor(fetchImpl);
  await assert.rejects(c.requestApproval({ action: "" }), ConfigurationError);
  await assert.rejects(c.requestApproval({ action: "x", timeoutSeconds: -1 }), ConfigurationError);
  await assert.rejects(c.requestApproval({ action: "x", payload: { n: 1n } }), ConfigurationError);
  await assert.rejects(c.requestApproval({ action: "x", policyHints: "refund" }), ConfigurationError);
});

test("fetch is called as a plain function, as the Workers runtime requires", async () => {
  // workerd's fetch throws "Illegal invocation" unless `this` is the global object
  // or undefined; a client that called it as its own method failed on Cloudflare.
  const { fetchImpl, calls } = scripted([200, approval("approved", { decided_by: "policy" })]);
  const strict = function (url, init) {
    if (this !== undefined && this !== globalThis) throw new TypeError("Illegal invocation");
    return fetchImpl(url, init);
  };
  const d = await clientFor(strict).requestApproval({ action: "issue_refund", payload: { amount: 1 } });
  assert.equal(d.approved, true);
  assert.equal(calls.length, 1);
});
