// The node examples' tests share this: the real `approvalplane serve` with the
// examples' own config (approvalplane.toml, on free ports, a short hold_timeout
// and a local audit directory) and policy (rules/).

import { readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { startApprovalPlane } from "../sdk/typescript/test/harness.mjs";

export const EXAMPLES = dirname(fileURLToPath(import.meta.url));

/** examples/approvalplane.toml with free ports, a short hold_timeout and a local audit dir. */
export function examplesConfig() {
  return readFileSync(join(EXAMPLES, "approvalplane.toml"), "utf8")
    .replace(/^listen = .*$/m, 'listen = "@LISTEN@"')
    .replace(/^control_listen = .*$/m, 'control_listen = "@CONTROL_LISTEN@"')
    .replace(/^hold_timeout = .*$/m, 'hold_timeout = "2s"')
    .replace(/^path = "var\/audit"$/m, 'path = "audit"');
}

/** Starts the server with the examples' config and policy; `alice` decides through `admin`. */
export async function startExamplesServer({ agentToken, aliceToken }) {
  const ap = await startApprovalPlane({
    config: examplesConfig(),
    rulesSrc: join(EXAMPLES, "rules"),
    secrets: { SUPPORT_AGENT_TOKEN: agentToken, ALICE_TOKEN: aliceToken },
  });
  return { ap, admin: ap.admin(aliceToken) };
}
