// A Cloudflare Agent whose refund tool asks ApprovalPlane first.
//
// `RefundAgent` is an Agent (a Durable Object with its own SQLite state) from the
// `agents` package. Its tool `issueRefund` calls `requestApproval` from the
// TypeScript SDK, which is plain `fetch`, so it runs in the Workers runtime as is.
// The tool pays out only when `decision.approved` is true; whatever the outcome,
// the model gets a tool result it can act on.
//
// A person may take longer than one request should wait. The tool waits up to
// APPROVAL_WAIT_SECONDS; if nobody has decided by then, the agent records the
// approval id in its state and follows up with `this.schedule()`, which is kept in
// the Durable Object's storage: the follow-up survives the agent hibernating or
// restarting, and pays out (or records the refusal) once the decision is in.
//
// The model is scripted so the example runs offline: it reads the customer and
// amount from the request, calls the tool, then relays the tool's result. Swap
// `scriptedModel` for a real tool-calling model (Workers AI, or the AI SDK) to
// use one.
//
//   POST /agents/refund-agent/<name>   {"request": "Refund $2,400 to cus_4193, charged twice"}
//     -> {"reply": "...", "state": {...}}
//   GET  /agents/refund-agent/<name>   -> the agent's state: refunds paid, approvals awaited, outcomes
//
// Configuration (wrangler.jsonc): APPROVALPLANE_URL (the proxy's agent listener),
// the secret APPROVALPLANE_TOKEN (`wrangler secret put APPROVALPLANE_TOKEN`),
// APPROVAL_WAIT_SECONDS and FOLLOW_UP_SECONDS.

import { Agent, routeAgentRequest } from "agents";
import { ApprovalPlane, ApprovalPlaneError } from "approvalplane";

const dollars = (amount) => `$${amount.toLocaleString("en-US", { minimumFractionDigits: 2, maximumFractionDigits: 2 })}`;

/** An offline stand-in for a tool-calling model: one issueRefund call, then a reply relaying its result. */
export function scriptedModel(messages) {
  const last = messages[messages.length - 1];
  if (last.role === "tool") {
    const result = last.content;
    const lead = result.done ? "The refund went through. " : result.status === "pending" ? "The refund is waiting for approval. " : "I did not issue the refund. ";
    return { text: lead + result.message };
  }
  const request = [...messages].reverse().find((m) => m.role === "user").content;
  const customer = /\b(cus_\w+)/.exec(request)?.[1] ?? "unknown";
  const amount = Number((/\$\s*([\d,]+(?:\.\d+)?)/.exec(request)?.[1] ?? "0").replaceAll(",", ""));
  const reason = /\bcus_\w+\s*,\s*(.+)$/.exec(request)?.[1]?.trim() ?? request;
  return { toolCall: { name: "issueRefund", input: { customer, amount, reason } } };
}

export class RefundAgent extends Agent {
  initialState = { refunds: [], awaiting: [], outcomes: [] };

  async onRequest(request) {
    if (request.method === "GET") return Response.json(this.state);
    if (request.method !== "POST") return new Response("method not allowed", { status: 405, headers: { Allow: "GET, POST" } });
    let text;
    try {
      text = (await request.json()).request;
    } catch {
      text = undefined;
    }
    if (typeof text !== "string" || !text.trim()) {
      return Response.json({ error: 'send {"request": "..."}' }, { status: 400 });
    }
    const reply = await this.run(text);
    return Response.json({ reply, state: this.state });
  }

  /** The agent loop: model, tool, model, at most four turns. */
  async run(text, model = scriptedModel) {
    const messages = [{ role: "user", content: text }];
    for (let turn = 0; turn < 4; turn++) {
      const step = await model(messages);
      if (!step.toolCall) return step.text;
      const tool = step.toolCall.name === "issueRefund" ? (input) => this.issueRefund(input) : null;
      const result = tool ? await tool(step.toolCall.input) : { done: false, status: "error", message: `no tool ${step.toolCall.name}` };
      messages.push({ role: "assistant", toolCall: step.toolCall }, { role: "tool", content: result });
    }
    return "I stopped after four turns without an answer.";
  }

  client() {
    return new ApprovalPlane({ baseUrl: this.env.APPROVALPLANE_URL, token: this.env.APPROVALPLANE_TOKEN });
  }

  /** The tool: ask first, pay only on an approval. */
  async issueRefund({ customer, amount, reason }) {
    const large = amount > 500;
    let decision;
    try {
      decision = await this.client().requestApproval({
        action: "issue_refund",
        payload: { customer, amount },
        risk: large ? "high" : "low",
        policyHints: large ? ["refund", "over_threshold"] : ["refund"],
        justification: reason,
        timeoutSeconds: Number(this.env.APPROVAL_WAIT_SECONDS ?? 30),
      });
    } catch (e) {
      if (!(e instanceof ApprovalPlaneError)) throw e;
      // No answer is never an approval.
      return { done: false, status: "error", message: `Could not ask for approval (${e.message}). Nothing was refunded.` };
    }
    if (decision.pending) {
      const wait = { approvalId: decision.approvalId, customer, amount };
      this.setState({ ...this.state, awaiting: [...this.state.awaiting, wait] });
      await this.schedule(Number(this.env.FOLLOW_UP_SECONDS ?? 60), "followUp", wait);
      return {
        done: false,
        status: "pending",
        approvalId: decision.approvalId,
        message: `Nobody has decided yet (approval ${decision.approvalId}); the refund will be issued once it is approved.`,
      };
    }
    return this.settle(decision, customer, amount);
  }

  /** A scheduled follow-up on an approval nobody had decided when the tool asked. */
  async followUp(wait) {
    // Settled already (a retried or duplicate schedule): never pay twice.
    if (!this.state.awaiting.some((w) => w.approvalId === wait.approvalId)) return;
    let decision;
    try {
      decision = await this.client().getApproval(wait.approvalId);
    } catch (e) {
      if (!(e instanceof ApprovalPlaneError)) throw e;
      console.log(`[agent] approval ${wait.approvalId}: cannot reach ApprovalPlane (${e.message}); trying again`);
      decision = null;
    }
    if (!decision || decision.pending) {
      await this.schedule(Number(this.env.FOLLOW_UP_SECONDS ?? 60), "followUp", wait);
      return;
    }
    this.setState({ ...this.state, awaiting: this.state.awaiting.filter((w) => w.approvalId !== wait.approvalId) });
    this.settle(decision, wait.customer, wait.amount);
  }

  /** Pays on an approval; records every final outcome. */
  settle(decision, customer, amount) {
    if (!decision.approved) {
      this.record({ customer, amount, approvalId: decision.approvalId, status: decision.status, message: decision.message });
      return { done: false, status: decision.status, approvalId: decision.approvalId, message: decision.message };
    }
    const refundId = this.paymentsRefund(customer, amount);
    const message = `Refunded ${dollars(amount)} to ${customer} (${refundId}). ${decision.message}`;
    this.record({ customer, amount, approvalId: decision.approvalId, status: "approved", refundId, message });
    return { done: true, refundId, approvalId: decision.approvalId, approvedBy: decision.decidedBy, message };
  }

  record(outcome) {
    this.setState({ ...this.state, outcomes: [...this.state.outcomes, outcome] });
  }

  /** Stands in for the payment provider's refund call (the risky action). */
  paymentsRefund(customer, amount) {
    const refundId = `re_${crypto.randomUUID().replaceAll("-", "").slice(0, 12)}`;
    console.log(`[payments] refund ${refundId}: ${dollars(amount)} to ${customer}`);
    this.setState({ ...this.state, refunds: [...this.state.refunds, { refundId, customer, amount }] });
    return refundId;
  }
}

export default {
  async fetch(request, env) {
    return (await routeAgentRequest(request, env)) ?? new Response("not found", { status: 404 });
  },
};
