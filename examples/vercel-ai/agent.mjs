// A Vercel AI SDK agent whose refund tool asks ApprovalPlane first.
//
// `issueRefund` is an AI SDK tool whose `execute` calls `requestApproval` from the
// TypeScript SDK: it waits until a person decides (or the policy decides at once)
// and pays out only when `decision.approved` is true. Whatever the outcome, the
// model gets a tool result it can act on.
//
// The model is the AI SDK's MockLanguageModelV3 with a script, so the example runs
// offline: it reads the customer and amount from the prompt, calls the tool, then
// relays the tool's result. Pass any AI SDK model to `runAgent` to use a real one.
//
//   export APPROVALPLANE_URL=http://127.0.0.1:8080 APPROVALPLANE_TOKEN=agent-secret
//   node examples/vercel-ai/agent.mjs 'Refund $2,400 to cus_4193, charged twice'
//
// APPROVAL_TIMEOUT (seconds, default 300) bounds the wait for a person.

import { randomBytes } from "node:crypto";
import { pathToFileURL } from "node:url";

import { generateText, stepCountIs, tool } from "ai";
import { MockLanguageModelV3 } from "ai/test";
import { ApprovalPlaneError, requestApproval } from "approvalplane";
import { z } from "zod";

/** Stands in for the payment provider's refund call (the risky action). */
function paymentsRefund(customer, amount) {
  const refundId = `re_${randomBytes(6).toString("hex")}`;
  console.log(`[payments] refund ${refundId}: $${amount.toLocaleString("en-US", { minimumFractionDigits: 2 })} to ${customer}`);
  return refundId;
}

export const issueRefund = tool({
  description: "Refund an amount in dollars to a customer. Large refunds wait for a person's approval.",
  inputSchema: z.object({
    customer: z.string().describe("the customer id, e.g. cus_4193"),
    amount: z.number().positive().describe("dollars"),
    reason: z.string().describe("why the customer should get the refund"),
  }),
  execute: async ({ customer, amount, reason }, { abortSignal }) => {
    const large = amount > 500;
    let decision;
    try {
      decision = await requestApproval({
        action: "issue_refund",
        payload: { customer, amount },
        risk: large ? "high" : "low",
        policyHints: large ? ["refund", "over_threshold"] : ["refund"],
        justification: reason,
        timeoutSeconds: Number(process.env.APPROVAL_TIMEOUT ?? 300),
        signal: abortSignal,
      });
    } catch (e) {
      if (!(e instanceof ApprovalPlaneError)) throw e;
      // No answer is never an approval.
      return { done: false, status: "error", message: `Could not ask for approval (${e.message}). Nothing was refunded.` };
    }
    if (!decision.approved) {
      return { done: false, status: decision.status, approvalId: decision.approvalId, message: decision.message };
    }
    const refundId = paymentsRefund(customer, amount);
    return { done: true, refundId, approvalId: decision.approvalId, approvedBy: decision.decidedBy, message: decision.message };
  },
});

const usage = {
  inputTokens: { total: 0, noCache: 0, cacheRead: undefined, cacheWrite: undefined },
  outputTokens: { total: 0, text: 0, reasoning: undefined },
};

const textOf = (message) =>
  typeof message.content === "string"
    ? message.content
    : message.content.filter((p) => p.type === "text").map((p) => p.text).join("");

/** An offline, scripted model: one issueRefund call from the prompt, then a reply relaying its result. */
export function scriptedModel() {
  return new MockLanguageModelV3({
    doGenerate: async ({ prompt }) => {
      const last = prompt[prompt.length - 1];
      if (last.role === "tool") {
        const result = last.content.find((p) => p.type === "tool-result");
        const value = result?.output?.value ?? {};
        const text = (value.done ? "The refund went through. " : "I did not issue the refund. ") + (value.message ?? "");
        return { content: [{ type: "text", text }], finishReason: { unified: "stop", raw: undefined }, usage, warnings: [] };
      }
      const request = textOf([...prompt].reverse().find((m) => m.role === "user"));
      const customer = /\b(cus_\w+)/.exec(request)?.[1] ?? "unknown";
      const amount = Number((/\$\s*([\d,]+(?:\.\d+)?)/.exec(request)?.[1] ?? "0").replaceAll(",", ""));
      const reason = /\bcus_\w+\s*,\s*(.+)$/.exec(request)?.[1]?.trim() ?? request;
      return {
        content: [
          {
            type: "tool-call",
            toolCallId: `call_${randomBytes(4).toString("hex")}`,
            toolName: "issueRefund",
            input: JSON.stringify({ customer, amount, reason }),
          },
        ],
        finishReason: { unified: "tool-calls", raw: undefined },
        usage,
        warnings: [],
      };
    },
  });
}

/** Runs the agent on one request; resolves to the AI SDK's generateText result. */
export function runAgent(request, { model = scriptedModel() } = {}) {
  return generateText({
    model,
    system: "You are a support agent. Use issueRefund for refunds and report the outcome truthfully.",
    prompt: request,
    tools: { issueRefund },
    stopWhen: stepCountIs(4),
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  const request = process.argv[2] ?? "Refund $2,400 to cus_4193, charged twice for order 6735";
  const result = await runAgent(request);
  console.log(result.text);
}
