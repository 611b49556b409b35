// Runs examples/vercel-ai/agent.mjs (AI SDK + MockLanguageModelV3) against the real
// `approvalplane serve`, with the examples' config and policy; alice decides
// through the admin API while the agent waits.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { randomBytes } from "node:crypto";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { freePort } from "../../../sdk/typescript/test/harness.mjs";
import { EXAMPLES, startExamplesServer } from "../../harness.mjs";

const AGENT = join(EXAMPLES, "vercel-ai", "agent.mjs");
const AGENT_TOKEN = "vercel-agent-token-6d1f";
const ALICE_TOKEN = "vercel-alice-token-c93e";
const RUN_TIMEOUT_MS = 30_000;

/** Starts `node agent.mjs REQUEST`; resolves to {code, stdout, stderr} when it exits. */
function runAgent(request, env) {
  const child = spawn(process.execPath, [AGENT, request], {
    env: { ...process.env, APPROVAL_TIMEOUT: "20", ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c) => (stdout += c));
  child.stderr.on("data", (c) => (stderr += c));
  let exited = false;
  const done = new Promise((resolveRun, reject) => {
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`agent did not finish within ${RUN_TIMEOUT_MS} ms\nstdout:\n${stdout}\nstderr:\n${stderr}`));
    }, RUN_TIMEOUT_MS);
    child.on("exit", (code) => {
      exited = true;
      clearTimeout(timer);
      resolveRun({ code, stdout, stderr });
    });
  });
  return { done, running: () => !exited, kill: () => child.kill("SIGKILL") };
}

const lastLine = (text) => text.trim().split("\n").at(-1);

describe("the Vercel AI SDK example", () => {
  let ap;
  let admin;
  let env;
  const runs = [];

  before(async () => {
    ({ ap, admin } = await startExamplesServer({ agentToken: AGENT_TOKEN, aliceToken: ALICE_TOKEN }));
    env = { APPROVALPLANE_URL: ap.proxyUrl, APPROVALPLANE_TOKEN: AGENT_TOKEN };
  });

  after(async () => {
    for (const r of runs) if (r.running()) r.kill();
    await ap?.stop();
  });

  const start = (request, extraEnv = {}) => {
    const run = runAgent(request, { ...env, ...extraEnv });
    runs.push(run);
    return run;
  };
  const customer = () => `cus_${randomBytes(4).toString("hex")}`;
  const pendingFor = (c) => admin.waitForApproval((a) => a.summary?.customer === c, { timeoutMs: 15_000 });

  test("the tool waits for a person's approval, then refunds", async () => {
    const c = customer();
    const run = start(`Refund $2,400 to ${c}, charged twice for order 6735`);
    const pending = await pendingFor(c);
    assert.equal(pending.action, "issue_refund");
    assert.equal(pending.justification, "charged twice for order 6735");
    await new Promise((r) => setTimeout(r, 2500)); // past hold_timeout: long-polling now
    assert.equal(run.running(), true, "the agent went on before anyone decided");
    await admin.approve(pending.id, "duplicate confirmed");
    const { code, stdout, stderr } = await run.done;
    assert.equal(code, 0, stderr);
    assert.match(stdout, new RegExp(`^\\[payments\\] refund re_\\w+: \\$2,400\\.00 to ${c}$`, "m"));
    const final = lastLine(stdout);
    assert.ok(final.startsWith("The refund went through. Approved by alice"), final);
    assert.ok(final.includes(pending.id), final);
  });

  test("a rejection reaches the model and nothing is paid", async () => {
    const c = customer();
    const run = start(`Refund $1,200 to ${c}, customer is unhappy`);
    const pending = await pendingFor(c);
    await admin.reject(pending.id, "outside the refund window");
    const { code, stdout, stderr } = await run.done;
    assert.equal(code, 0, stderr);
    assert.ok(!stdout.includes("[payments]"), stdout);
    const final = lastLine(stdout);
    assert.ok(final.startsWith("I did not issue the refund. Rejected by alice"), final);
    assert.ok(final.includes("outside the refund window"), final);
  });

  test("a small refund is allowed by policy at once", async () => {
    const c = customer();
    const { code, stdout, stderr } = await start(`Refund $25 to ${c}, late delivery`).done;
    assert.equal(code, 0, stderr);
    assert.match(stdout, new RegExp(`^\\[payments\\] refund re_\\w+: \\$25\\.00 to ${c}$`, "m"));
    assert.ok(lastLine(stdout).includes("Approved by policy"), stdout);
  });

  test("an unreachable ApprovalPlane refunds nothing", async () => {
    const c = customer();
    const url = `http://127.0.0.1:${await freePort()}`;
    const { code, stdout, stderr } = await start(`Refund $25 to ${c}, late delivery`, { APPROVALPLANE_URL: url }).done;
    assert.equal(code, 0, stderr);
    assert.ok(!stdout.includes("[payments]"), stdout);
    assert.ok(lastLine(stdout).startsWith("I did not issue the refund. Could not ask for approval"), stdout);
  });
});
