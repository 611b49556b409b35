/**
 * ApprovalPlane client: ask a person before a risky agent action.
 *
 * ```ts
 * import { requestApproval } from "approvalplane";
 *
 * const decision = await requestApproval({
 *   action: "issue_refund",
 *   payload: { customer: "cus_4193", amount: 2400.0 },
 *   risk: "high",
 *   policyHints: ["refund", "over_threshold"],
 * });
 * if (decision.approved) {
 *   // proceed
 * } else {
 *   console.log(decision.reason); // stand down
 * }
 * ```
 *
 * Flow: `POST /v1/approvals` with `wait`, then `GET /v1/approvals/{id}?wait=` long-polls
 * until the approval is decided or the client's own timeout runs out. Proceed only when
 * `decision.approved` is `true`; errors throw {@link ApprovalPlaneError} and never mean approved.
 */

import {
  ApprovalPlaneError,
  ConfigurationError,
  ProtocolError,
  TransportError,
  errorClassFor,
} from "./errors.js";

export * from "./errors.js";

export const VERSION = "0.1.0";
/** Environment variable holding the agent listener's base URL. */
export const ENV_URL = "APPROVALPLANE_URL";
/** Environment variable holding the agent token. */
export const ENV_TOKEN = "APPROVALPLANE_TOKEN";
/** Used when neither the option nor `APPROVALPLANE_URL` gives a base URL. */
export const DEFAULT_BASE_URL = "http://127.0.0.1:8080";
/** Seconds `requestApproval` waits for a decision by default. */
export const DEFAULT_TIMEOUT_SECONDS = 300;
/** Seconds asked for in one long-poll (the server caps it at its `hold_timeout`). */
export const DEFAULT_POLL_WAIT_SECONDS = 50;

const READ_SLACK_MS = 15_000;
const MIN_POLL_PERIOD_MS = 1_000;

export type Risk = "low" | "medium" | "high" | "critical";
export type ApprovalStatus = "pending" | "approved" | "rejected" | "expired" | "abandoned" | "interrupted";
/** Every `Decision.status`: the approval statuses, plus `"denied"` for a policy denial. */
export type DecisionStatus = ApprovalStatus | "denied";

/** The approval object (INTERFACE.md §4) plus `approved`, as the server sends it. */
export interface Approval {
  id: string;
  status: ApprovalStatus;
  approved: boolean;
  route?: string;
  routes?: string[];
  agent?: string;
  action?: string;
  risk?: Risk;
  summary?: Record<string, unknown>;
  justification?: string | null;
  rule_ids?: string[];
  body_sha256?: string;
  created_at?: string;
  decided_by?: string | null;
  decided_at?: string | null;
  reason?: string | null;
  approvals?: string[];
  quorum?: number;
  [key: string]: unknown;
}

/**
 * The outcome of `requestApproval`.
 *
 * - `approved`: a person (`decidedBy` is their id) or the policy (`decidedBy === "policy"`) approved;
 * - `rejected`: a person rejected; `reason` says why;
 * - `denied`: the policy denied at once; `reason` is the server's explanation, `rule` the rule id;
 *   there is no `approvalId`;
 * - `expired`: nobody decided before the approval expired;
 * - `pending`: nobody decided yet and the client's own timeout ran out. Not a rejection:
 *   wait more with `waitForDecision`, or ask again with the same arguments;
 * - `abandoned` / `interrupted`: the approval ended without a decision.
 */
export interface Decision {
  /** True only for an approval object with status "approved" and `approved: true`. */
  readonly approved: boolean;
  readonly status: DecisionStatus;
  readonly reason: string | null;
  readonly decidedBy: string | null;
  readonly approvalId: string | null;
  /** For `status === "denied"`: the id of the rule that denied. */
  readonly rule: string | null;
  /** The approval object as the server sent it (null for a policy denial). */
  readonly approval: Approval | null;
  /** True when nobody has decided yet (the client stopped waiting). */
  readonly pending: boolean;
  /** True when the outcome cannot change any more. */
  readonly final: boolean;
  /** One sentence describing the outcome, to show a person or a model. */
  readonly message: string;
}

export interface ClientOptions {
  /** Base URL of the agent listener; default `$APPROVALPLANE_URL`, then `http://127.0.0.1:8080`. */
  baseUrl?: string;
  /** The agent token (sent as `Authorization: Bearer`); default `$APPROVALPLANE_TOKEN`. */
  token?: string;
  /** Seconds asked for in one long-poll; default 50. */
  pollWaitSeconds?: number;
  /** The fetch implementation; default `globalThis.fetch`. */
  fetch?: typeof fetch;
  /** Extra headers for every call. */
  headers?: Record<string, string>;
}

export interface ApprovalRequest {
  action: string;
  payload?: unknown;
  risk?: Risk;
  policyHints?: string[];
  /** The agent's own reason; shown to approvers as model-inferred. */
  justification?: string;
  /**
   * Seconds to wait for a decision (default 300). `0` asks once and answers at once;
   * `null` or `Infinity` waits until the approval is decided or expires.
   */
  timeoutSeconds?: number | null;
  /** Sent as the `Idempotency-Key` header. */
  idempotencyKey?: string;
  /** Aborts the wait; the abort reason is thrown as is. */
  signal?: AbortSignal;
}

export interface RequestApprovalOptions extends ApprovalRequest, ClientOptions {}

export interface WaitOptions {
  timeoutSeconds?: number | null;
  signal?: AbortSignal;
}

const envOf = (name: string): string | undefined => {
  const proc = (globalThis as { process?: { env?: Record<string, string | undefined> } }).process;
  return proc?.env?.[name];
};

function resolveBaseUrl(value: string | undefined): string {
  const raw = (value || envOf(ENV_URL) || DEFAULT_BASE_URL).trim().replace(/\/+$/, "");
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    throw new ConfigurationError(`base URL ${JSON.stringify(raw)} is not a URL (set baseUrl or ${ENV_URL})`);
  }
  if ((url.protocol !== "http:" && url.protocol !== "https:") || url.search || url.hash) {
    throw new ConfigurationError(`base URL ${JSON.stringify(raw)} must be http(s) without query or fragment`);
  }
  return raw;
}

function resolveToken(value: string | undefined): string | undefined {
  const token = value ?? envOf(ENV_TOKEN);
  return token && token.trim() ? token.trim() : undefined;
}

function checkSeconds(name: string, value: unknown): number {
  if (typeof value !== "number" || Number.isNaN(value) || value < 0) {
    throw new ConfigurationError(`${name} must be a non-negative number of seconds, not ${String(value)}`);
  }
  return value;
}

function deadlineOf(timeoutSeconds: number | null | undefined): number | null {
  const t = timeoutSeconds === undefined ? DEFAULT_TIMEOUT_SECONDS : timeoutSeconds;
  if (t === null) return null;
  checkSeconds("timeoutSeconds", t);
  return Number.isFinite(t) ? performance.now() + t * 1000 : null;
}

function formatSeconds(s: number): string {
  return s.toFixed(3).replace(/\.?0+$/, "") || "0";
}

function describe(d: Omit<Decision, "message">): string {
  const who = d.decidedBy ?? "an approver";
  const ref = d.approvalId ? ` (approval ${d.approvalId})` : "";
  switch (d.status) {
    case "approved":
      if (d.decidedBy === "policy") return `Approved by policy${ref}.`;
      return `Approved by ${who}${ref}` + (d.reason ? `: ${d.reason}` : ".");
    case "rejected":
      return `Rejected by ${who}${ref}: ${d.reason ?? "no reason given"}. Do not retry the same action.`;
    case "denied":
      return d.reason ?? `Denied by policy (rule ${d.rule ?? "unknown"}).`;
    case "expired":
      return `Nobody decided before the approval expired${ref}. It was not approved; asking again starts a new approval.`;
    case "pending":
      return `Still waiting for a person to decide${ref}. It is not approved yet; wait longer or ask again later.`;
    default:
      return `The approval ended without a decision (${d.status})${ref}. It was not approved; asking again starts a new approval.`;
  }
}

function makeDecision(fields: Omit<Decision, "message" | "pending" | "final">): Decision {
  const base = { ...fields, pending: fields.status === "pending", final: fields.status !== "pending" };
  const message = describe(base);
  // An agent that was not approved always has a why to say: without a person's
  // reason (pending, expired, ended) it is the outcome in words.
  const reason = !base.approved && base.reason === null ? message : base.reason;
  return Object.freeze({ ...base, reason, message });
}

/** Builds a Decision from the API's approval object. */
export function decisionFromApproval(approval: Approval): Decision {
  const str = (v: unknown): string | null => (typeof v === "string" ? v : null);
  return makeDecision({
    approved: approval.status === "approved" && approval.approved === true,
    status: approval.status,
    reason: str(approval.reason),
    decidedBy: str(approval.decided_by),
    approvalId: str(approval.id),
    rule: null,
    approval,
  });
}

function retryAfterOf(value: string | null): number | undefined {
  if (!value || !/^\s*\d+(\.\d+)?\s*$/.test(value)) return undefined;
  return Number(value);
}

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === "object" && v !== null && !Array.isArray(v);

/** Turns one HTTP answer into a Decision, or throws. */
async function interpret(resp: Response, expectId?: string): Promise<Decision> {
  const requestId = resp.headers.get("x-request-id") ?? undefined;
  const text = await resp.text();
  let body: unknown = undefined;
  try {
    body = text ? JSON.parse(text) : undefined;
  } catch {
    body = undefined;
  }
  const status = resp.status;
  if (status >= 200 && status < 300) {
    if (!isObject(body)) {
      throw new ProtocolError(`expected an approval object, got ${JSON.stringify(text.slice(0, 200))}`, {
        status,
        requestId,
      });
    }
    const { id, status: aStatus, approved } = body;
    if (typeof id !== "string" || !id || typeof aStatus !== "string") {
      throw new ProtocolError("the approval object has no id or status", { status, body, requestId });
    }
    // `approved` must be present and agree with the status, or nothing is trusted.
    if (typeof approved !== "boolean" || approved !== (aStatus === "approved")) {
      throw new ProtocolError(`inconsistent answer: approved=${String(approved)} with status ${aStatus}`, {
        status,
        body,
        requestId,
      });
    }
    if (expectId !== undefined && id !== expectId) {
      throw new ProtocolError(`asked for approval ${expectId}, got ${id}`, { status, body, requestId });
    }
    return decisionFromApproval(body as Approval);
  }

  const err = isObject(body) && isObject(body.error) ? body.error : {};
  const errorType = typeof err.type === "string" ? err.type : undefined;
  const snippet = text.trim().slice(0, 200);
  const message =
    typeof err.message === "string"
      ? err.message
      : `HTTP ${status} from ApprovalPlane` + (snippet ? `: ${snippet}` : "");
  if (status === 403 && errorType === "policy_denied") {
    return makeDecision({
      approved: false,
      status: "denied",
      reason: typeof err.reason === "string" ? err.reason : message,
      decidedBy: "policy",
      approvalId: null,
      rule: typeof err.rule === "string" ? err.rule : null,
      approval: null,
    });
  }
  const Cls = errorClassFor(status);
  throw new Cls(message, {
    status,
    errorType,
    body,
    requestId,
    retryAfter: retryAfterOf(resp.headers.get("retry-after")),
  });
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (ms <= 0) return resolve();
    if (signal?.aborted) return reject(signal.reason);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** A reusable client for one ApprovalPlane agent listener. */
export class ApprovalPlane {
  readonly baseUrl: string;
  readonly #token: string | undefined;
  readonly #pollWait: number;
  readonly #fetch: typeof fetch;
  readonly #headers: Record<string, string>;

  constructor(options: ClientOptions = {}) {
    this.baseUrl = resolveBaseUrl(options.baseUrl);
    this.#token = resolveToken(options.token);
    this.#pollWait = checkSeconds("pollWaitSeconds", options.pollWaitSeconds ?? DEFAULT_POLL_WAIT_SECONDS);
    const f = options.fetch ?? globalThis.fetch;
    if (typeof f !== "function") throw new ConfigurationError("no fetch implementation available");
    // Called as a plain function, never as a method of this client: the Workers
    // runtime's fetch throws "Illegal invocation" when its `this` is anything else.
    this.#fetch = (input, init) => f(input, init);
    this.#headers = { Accept: "application/json", ...(options.headers ?? {}) };
    if (this.#token) this.#headers.Authorization = `Bearer ${this.#token}`;
  }

  /** Seconds for the next long-poll (0 when the deadline has passed). */
  #waitFor(deadline: number | null): number {
    if (deadline === null) return this.#pollWait;
    const left = (deadline - performance.now()) / 1000;
    if (left < 0.01) return 0;
    return Math.round(Math.min(this.#pollWait, left) * 1000) / 1000;
  }

  async #call(
    method: "GET" | "POST",
    path: string,
    waitSeconds: number,
    init: { body?: string; headers?: Record<string, string>; expectId?: string; signal?: AbortSignal } = {},
  ): Promise<Decision> {
    const url = this.baseUrl + path;
    const headers: Record<string, string> = { ...this.#headers, ...(init.headers ?? {}) };
    if (init.body !== undefined) headers["Content-Type"] = "application/json";
    // The read deadline: the asked wait plus some slack; the caller's signal also aborts.
    const controller = new AbortController();
    const timer = setTimeout(
      () => controller.abort(new Error(`no answer within ${waitSeconds * 1000 + READ_SLACK_MS} ms`)),
      waitSeconds * 1000 + READ_SLACK_MS,
    );
    const onAbort = () => controller.abort(init.signal?.reason);
    if (init.signal?.aborted) onAbort();
    init.signal?.addEventListener("abort", onAbort, { once: true });
    try {
      let resp: Response;
      try {
        resp = await this.#fetch(url, { method, headers, body: init.body, signal: controller.signal, redirect: "manual" });
      } catch (e) {
        throw this.#transportError(method, url, e, init.signal);
      }
      try {
        return await interpret(resp, init.expectId);
      } catch (e) {
        if (e instanceof ApprovalPlaneError) throw e;
        throw this.#transportError(method, url, e, init.signal);
      }
    } finally {
      clearTimeout(timer);
      init.signal?.removeEventListener("abort", onAbort);
    }
  }

  #transportError(method: string, url: string, e: unknown, signal?: AbortSignal): unknown {
    if (signal?.aborted) return signal.reason; // the caller gave up: rethrow their reason
    const cause = (e as { cause?: unknown })?.cause;
    const detail = [e instanceof Error ? e.message : String(e), cause instanceof Error ? cause.message : ""]
      .filter(Boolean)
      .join(": ");
    return new TransportError(`${method} ${url} failed: ${detail}; nothing was approved`, { cause: e });
  }

  /**
   * Asks for approval and waits until there is a decision or `timeoutSeconds` pass.
   * Proceed only when the result's `approved` is true.
   */
  async requestApproval(request: ApprovalRequest): Promise<Decision> {
    if (typeof request?.action !== "string" || !request.action.trim()) {
      throw new ConfigurationError("action must be a non-empty string");
    }
    if (request.policyHints !== undefined && (!Array.isArray(request.policyHints) || request.policyHints.some((h) => typeof h !== "string"))) {
      throw new ConfigurationError("policyHints must be an array of strings");
    }
    const deadline = deadlineOf(request.timeoutSeconds);
    const wait = this.#waitFor(deadline);
    const body: Record<string, unknown> = { action: request.action };
    if (request.payload !== undefined) body.payload = request.payload;
    if (request.risk !== undefined) body.risk = request.risk;
    if (request.policyHints !== undefined) body.policy_hints = request.policyHints;
    if (request.justification !== undefined) body.justification = request.justification;
    body.wait = wait;
    let json: string;
    try {
      json = JSON.stringify(body);
    } catch (e) {
      throw new ConfigurationError(`payload cannot be sent as JSON: ${(e as Error).message}`, { cause: e });
    }
    const headers = request.idempotencyKey ? { "Idempotency-Key": request.idempotencyKey } : undefined;
    const first = await this.#call("POST", "/v1/approvals", wait, { body: json, headers, signal: request.signal });
    return this.#poll(first, deadline, request.signal);
  }

  /** The current state of one of this agent's approvals, waiting up to `waitSeconds` for a change. */
  async getApproval(approvalId: string, options: { waitSeconds?: number; signal?: AbortSignal } = {}): Promise<Decision> {
    if (typeof approvalId !== "string" || !approvalId) throw new ConfigurationError("approvalId must be a non-empty string");
    const wait = checkSeconds("waitSeconds", options.waitSeconds ?? 0);
    const path = `/v1/approvals/${encodeURIComponent(approvalId)}?wait=${formatSeconds(wait)}`;
    return this.#call("GET", path, wait, { expectId: approvalId, signal: options.signal });
  }

  /** Keeps waiting on an approval that `requestApproval` returned as pending. */
  async waitForDecision(approvalId: string, options: WaitOptions = {}): Promise<Decision> {
    const deadline = deadlineOf(options.timeoutSeconds);
    const first = await this.getApproval(approvalId, { waitSeconds: this.#waitFor(deadline), signal: options.signal });
    return this.#poll(first, deadline, options.signal);
  }

  async #poll(decision: Decision, deadline: number | null, signal?: AbortSignal): Promise<Decision> {
    while (decision.pending) {
      const wait = this.#waitFor(deadline);
      if (wait <= 0) return decision;
      const started = performance.now();
      decision = await this.getApproval(decision.approvalId as string, { waitSeconds: wait, signal });
      if (decision.pending) {
        // A server that answers "pending" early must not be hammered.
        let pause = Math.min(MIN_POLL_PERIOD_MS, wait * 1000) - (performance.now() - started);
        if (deadline !== null) pause = Math.min(pause, deadline - performance.now());
        await sleep(pause, signal);
      }
    }
    return decision;
  }
}

/**
 * Asks ApprovalPlane before a risky action and waits until decided or `timeoutSeconds` pass.
 *
 * Resolves to a {@link Decision}; proceed only when `approved` is true. A policy denial is
 * `{approved: false, status: "denied"}`; a timeout while nobody decided is `status: "pending"`.
 * Not reaching the server, a bad token and other refusals reject with an {@link ApprovalPlaneError}.
 */
export async function requestApproval(options: RequestApprovalOptions): Promise<Decision> {
  const { baseUrl, token, pollWaitSeconds, fetch: fetchImpl, headers, ...request } = options;
  return new ApprovalPlane({ baseUrl, token, pollWaitSeconds, fetch: fetchImpl, headers }).requestApproval(request);
}
