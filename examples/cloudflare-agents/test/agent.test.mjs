// Runs examples/cloudflare-agents (a Cloudflare Agent: a Durable Object with SQLite
// state) with `wrangler dev` (Wrangler's bundling, workerd), against the real
// `approvalplane serve` with the examples' config and policy; alice decides through
// the admin API.

import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { spawn } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";

import { freePort, waitUntil } from "../../../sdk/typescript/test/harness.mjs";
import { EXAMPLES, startExamplesServer } from "../../harness.mjs";

const PROJECT = join(EXAMPLES, "cloudflare-agents");
const AGENT_TOKEN = "cloudflare-agent-token-4b7e";
const ALICE_TOKEN = "cloudflare-alice-token-a51c";
const WRANGLER = join(PROJECT, "node_modules", "wrangler", "bin", "wrangler.js");

/**
 * Runs `wrangler dev` on a free port, the way a developer runs the example: the
 * Worker from wrangler.jsonc, bundled by Wrangler and served by workerd, with
 * `vars` over the file's and the agent token in an env file, as a secret is.
 * Resolves once Wrangler says it is ready.
 */
async function startWorker(vars) {
  const dir = mkdtempSync(join(tmpdir(), "refund-agent-"));
  const envFile = join(dir, "dev.vars");
  writeFileSync(envFile, `APPROVALPLANE_TOKEN=${AGENT_TOKEN}\n`);
  const port = await freePort();
  const args = [WRANGLER, "dev", "--ip", "127.0.0.1", "--port", String(port), "--inspector-port", String(await freePort()),
    "--persist-to", join(dir, "state"), "--env-file", envFile, "--log-level", "info"];
  for (const [k, v] of Object.entries(vars)) args.push("--var", `${k}:${v}`);
  const child = spawn(process.execPath, args, {
    cwd: PROJECT,
    env: { ...process.env, WRANGLER_SEND_METRICS: "false", CI: "true", NO_COLOR: "1" },
    stdio: ["ignore", "pipe", "pipe"],
    detached: true, // its own process group: workerd goes with it
  });
  let output = "";
  child.stdout.on("data", (c) => (output += c));
  child.stderr.on("data", (c) => (output += c));
  const base = `http://127.0.0.1:${port}`;
  await waitUntil(() => (child.exitCode !== null ? Promise.reject(new Error(`wrangler dev exited\n${output}`)) : /Ready on/.test(output)), {
    timeoutMs: 60_000,
    message: "wrangler dev did not start",
  });
  return {
    output: () => output,
    fetch: (path, init) => fetch(base + path, { ...init, signal: AbortSignal.timeout(60_000) }),
    stop: async () => {
      if (child.exitCode !== null) return;
      const exited = new Promise((r) => child.once("exit", r));
      try {
        process.kill(-child.pid, "SIGTERM");
      } catch {}
      await Promise.race([exited, new Promise((r) => setTimeout(r, 5000))]);
      try {
        process.kill(-child.pid, "SIGKILL");
      } catch {}
    },
  };
}

const customer = () => `cus_${randomBytes(4).toString("hex")}`;

describe("the Cloudflare Agents example", () => {
  let ap;
  let admin;
  const workers = [];

  before(async () => {
    ({ ap, admin } = await startExamplesServer({ agentToken: AGENT_TOKEN, aliceToken: ALICE_TOKEN }));
  });

  after(async () => {
    for (const w of workers) await w.stop();
    await ap?.stop();
  });

  const worker = async (vars) => {
    const w = await startWorker({ APPROVALPLANE_URL: ap.proxyUrl, ...vars });
    workers.push(w);
    return w;
  };
  const ask = async (w, agent, request) => {
    const resp = await w.fetch(`/agents/refund-agent/${agent}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ request }),
    });
    assert.equal(resp.status, 200, await resp.clone().text());
    return resp.json();
  };
  const stateOf = async (w, agent) => (await w.fetch(`/agents/refund-agent/${agent}`)).json();
  const pendingFor = (c) => admin.waitForApproval((a) => a.summary?.customer === c, { timeoutMs: 15_000 });

  describe("waiting inline", () => {
    let w;
    before(async () => {
      w = await worker({ APPROVAL_WAIT_SECONDS: 20, FOLLOW_UP_SECONDS: 60 });
    });

    test("the tool waits for a person's approval, then refunds, and the agent remembers it", async () => {
      const c = customer();
      const reply = ask(w, "inline", `Refund $2,400 to ${c}, charged twice for order 6735`);
      const pending = await pendingFor(c);
      assert.equal(pending.action, "issue_refund");
      assert.equal(pending.route, "finance-oncall");
      assert.equal(pending.justification, "charged twice for order 6735");
      await new Promise((r) => setTimeout(r, 2500)); // past hold_timeout: long-polling now
      await admin.approve(pending.id, "duplicate confirmed");
      const { reply: text, state } = await reply;
      assert.ok(text.startsWith(`The refund went through. Refunded $2,400.00 to ${c} (re_`), text);
      assert.ok(text.includes("Approved by alice") && text.includes(pending.id), text);
      const paid = state.refunds.filter((r) => r.customer === c);
      assert.equal(paid.length, 1);
      assert.equal(paid[0].amount, 2400);
      // The state is the Durable Object's: a later request to the same agent sees it.
      assert.deepEqual((await stateOf(w, "inline")).refunds.filter((r) => r.customer === c), paid);
    });

    test("a rejection reaches the model and nothing is paid", async () => {
      const c = customer();
      const reply = ask(w, "inline", `Refund $1,200 to ${c}, customer is unhappy`);
      const pending = await pendingFor(c);
      await admin.reject(pending.id, "outside the refund window");
      const { reply: text, state } = await reply;
      assert.ok(text.startsWith("I did not issue the refund. Rejected by alice"), text);
      assert.ok(text.includes("outside the refund window"), text);
      assert.equal(state.refunds.filter((r) => r.customer === c).length, 0);
      assert.equal(state.outcomes.find((o) => o.customer === c)?.status, "rejected");
    });

    test("a small refund is allowed by policy at once; a huge one is denied", async () => {
      const c = customer();
      const small = await ask(w, "inline", `Refund $25 to ${c}, late delivery`);
      assert.ok(small.reply.startsWith(`The refund went through. Refunded $25.00 to ${c}`), small.reply);
      assert.ok(small.reply.includes("Approved by policy"), small.reply);
      const huge = await ask(w, "inline", `Refund $50,000 to ${c}, goodwill`);
      assert.ok(huge.reply.startsWith("I did not issue the refund."), huge.reply);
      assert.equal(huge.state.outcomes.at(-1).status, "denied");
      assert.deepEqual(huge.state.refunds.filter((r) => r.customer === c).map((r) => r.amount), [25]);
    });
  });

  test("past the inline wait, the agent's schedule follows up and pays once approved", async () => {
    const w = await worker({ APPROVAL_WAIT_SECONDS: 0, FOLLOW_UP_SECONDS: 1 });
    const c = customer();
    const { reply, state } = await ask(w, "scheduled", `Refund $900 to ${c}, damaged on arrival`);
    assert.ok(reply.startsWith("The refund is waiting for approval. Nobody has decided yet"), reply);
    assert.equal(state.refunds.length, 0);
    const waiting = state.awaiting.find((x) => x.customer === c);
    assert.ok(waiting, JSON.stringify(state));
    const pending = await pendingFor(c);
    assert.equal(pending.id, waiting.approvalId);
    // Nothing is paid while nobody has decided, however often the agent looks.
    await new Promise((r) => setTimeout(r, 2500));
    assert.equal((await stateOf(w, "scheduled")).refunds.length, 0);
    await admin.approve(pending.id, "photos checked");
    const after = await waitUntil(
      async () => {
        const s = await stateOf(w, "scheduled");
        return s.refunds.length > 0 ? s : undefined;
      },
      { timeoutMs: 15_000, message: "the scheduled follow-up did not pay" },
    );
    assert.deepEqual(after.refunds.map((r) => [r.customer, r.amount]), [[c, 900]]);
    assert.deepEqual(after.awaiting, []);
    assert.ok(after.outcomes.at(-1).message.includes("Approved by alice"), JSON.stringify(after.outcomes));
  });

  test("an unreachable ApprovalPlane refunds nothing", async () => {
    const w = await worker({ APPROVALPLANE_URL: `http://127.0.0.1:${await freePort()}`, APPROVAL_WAIT_SECONDS: 5 });
    const c = customer();
    const { reply, state } = await ask(w, "unreachable", `Refund $25 to ${c}, late delivery`);
    assert.ok(reply.startsWith("I did not issue the refund. Could not ask for approval"), reply);
    assert.equal(state.refunds.length, 0);
  });
});
