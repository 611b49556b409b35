/**
 * Errors thrown by the ApprovalPlane client.
 *
 * Every failure to get an answer throws an {@link ApprovalPlaneError}. None of them
 * ever means "approved": code that catches one must treat the action as not approved.
 * Decisions are not errors: a policy denial, a rejection, an expiry and "still
 * pending when the client's own timeout ran out" come back as a `Decision` whose
 * `approved` is `false`.
 */

export interface ErrorDetails {
  /** HTTP status of the answer, if one was received. */
  status?: number;
  /** The stable `error.type` of the API's refusal, e.g. `"agent_unauthorized"`. */
  errorType?: string;
  /** The decoded JSON answer, if there was one. */
  body?: unknown;
  /** The server's `X-Request-Id`. */
  requestId?: string;
  /** Seconds the server asked to wait before retrying (`Retry-After`). */
  retryAfter?: number;
  cause?: unknown;
}

/** Base class: no decision could be obtained. Never means approved. */
export class ApprovalPlaneError extends Error {
  readonly status: number | undefined;
  readonly errorType: string | undefined;
  readonly body: unknown;
  readonly requestId: string | undefined;
  readonly retryAfter: number | undefined;

  constructor(message: string, details: ErrorDetails = {}) {
    super(message, details.cause === undefined ? undefined : { cause: details.cause });
    this.name = new.target.name;
    this.status = details.status;
    this.errorType = details.errorType;
    this.body = details.body;
    this.requestId = details.requestId;
    this.retryAfter = details.retryAfter;
  }
}

/** A bad argument or environment setting (base URL, timeout, payload...). */
export class ConfigurationError extends ApprovalPlaneError {}

/**
 * ApprovalPlane could not be reached, or the connection failed mid-answer.
 * Retrying the same call is safe: an identical request attaches to the approval it created.
 */
export class TransportError extends ApprovalPlaneError {}

/** The server answered something the API does not promise (not JSON, a bad shape). */
export class ProtocolError extends ApprovalPlaneError {}

/** The server refused the call with an HTTP error (`{"error": {...}}`). */
export class APIError extends ApprovalPlaneError {}

/** 400 or 413: `malformed_request`, `malformed_body`, `body_too_large`. */
export class BadRequest extends APIError {}

/** 401 `agent_unauthorized`: no or wrong agent token. */
export class Unauthorized extends APIError {}

/** 403 other than a policy denial (a policy denial is a Decision with status `"denied"`). */
export class Forbidden extends APIError {}

/** 404: unknown approval id, or one that belongs to another agent. */
export class NotFound extends APIError {}

/** 409, e.g. `idempotency_conflict`. */
export class Conflict extends APIError {}

/** 502, 503 or 504 (`store_unavailable`, `shutting_down`...); `retryAfter` when sent. */
export class Unavailable extends APIError {}

/** Any other 5xx, or an unexpected status. */
export class ServerError extends APIError {}

export function errorClassFor(status: number): new (message: string, details?: ErrorDetails) => APIError {
  if (status === 400 || status === 413 || status === 422) return BadRequest;
  if (status === 401) return Unauthorized;
  if (status === 403) return Forbidden;
  if (status === 404) return NotFound;
  if (status === 409) return Conflict;
  if (status === 502 || status === 503 || status === 504) return Unavailable;
  return ServerError;
}
