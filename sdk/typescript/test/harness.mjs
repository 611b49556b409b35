// Starts the real `approvalplane serve` for node tests, like tests/e2e/conftest.py
// does for pytest: a config with free loopback ports in a temporary directory,
// rules, secrets in the environment, /healthz polling, and the admin API.
//
// The binary is $APPROVALPLANE_BIN, or target/debug/approvalplane in the repository.

import { spawn } from "node:child_process";
import { cpSync, existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

const STARTUP_TIMEOUT_MS = 15_000;
const STOP_GRACE_MS = 10_000;

export function binaryPath() {
  return process.env.APPROVALPLANE_BIN || join(REPO_ROOT, "target", "debug", "approvalplane");
}

/** A loopback TCP port that is free right now. */
export function freePort() {
  return new Promise((resolvePort, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolvePort(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `probe` until it returns a truthy value; returns it, or throws after `timeoutMs`. */
export async function waitUntil(probe, { timeoutMs = 10_000, intervalMs = 100, message = "condition not met" } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    try {
      const value = await probe();
      if (value) return value;
    } catch (e) {
      lastError = e;
    }
    if (Date.now() >= deadline) {
      throw new Error(`timed out after ${timeoutMs} ms: ${message}` + (lastError ? ` (last error: ${lastError})` : ""));
    }
    await sleep(intervalMs);
  }
}

/** The admin API (INTERFACE.md §4), as one approver. */
export class AdminClient {
  constructor(controlUrl, token) {
    this.base = controlUrl;
    this.token = token;
  }

  async raw(method, path, body) {
    const resp = await fetch(this.base + path, {
      method,
      headers: { Authorization: `Bearer ${this.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
      body: body ? JSON.stringify(body) : undefined,
      signal: AbortSignal.timeout(10_000),
    });
    const text = await resp.text();
    let json;
    try {
      json = JSON.parse(text);
    } catch {
      json = undefined;
    }
    return { status: resp.status, json, text };
  }

  async #expect(method, path, body, status = 200) {
    const r = await this.raw(method, path, body);
    if (r.status !== status) throw new Error(`${method} ${path} answered ${r.status}, expected ${status}: ${r.text}`);
    return r.json;
  }

  async list(status = "pending") {
    const q = status ? `?status=${encodeURIComponent(status)}` : "";
    return (await this.#expect("GET", `/v1/admin/approvals${q}`)).approvals;
  }

  get(id) {
    return this.#expect("GET", `/v1/admin/approvals/${id}`);
  }

  decide(id, decision, reason) {
    return this.#expect("POST", `/v1/admin/approvals/${id}/decision`, reason === undefined ? { decision } : { decision, reason });
  }

  approve(id, reason) {
    return this.decide(id, "approve", reason);
  }

  reject(id, reason) {
    return this.decide(id, "reject", reason);
  }

  /** Waits until an approval with `status` matching `predicate` is listed; returns it. */
  waitForApproval(predicate = () => true, { status = "pending", timeoutMs = 10_000 } = {}) {
    return waitUntil(async () => (await this.list(status)).find(predicate), {
      timeoutMs,
      message: `no ${status} approval matched`,
    });
  }
}

/**
 * Writes a config and rules into a fresh temporary directory and starts `serve`.
 *
 * config:   TOML text; `@LISTEN@` and `@CONTROL_LISTEN@` become free loopback addresses.
 * rules:    {"name.rego": text} written into <dir>/rules.
 * rulesSrc: a directory copied into <dir>/rules.
 * secrets:  environment variables for the config's `*_env` keys.
 */
export async function startApprovalPlane({ config, rules = {}, rulesSrc, secrets = {} }) {
  const bin = binaryPath();
  if (!existsSync(bin)) {
    throw new Error(`approvalplane binary not found at ${bin}; build it (cargo build) or set APPROVALPLANE_BIN`);
  }
  const dir = mkdtempSync(join(tmpdir(), "approvalplane-node-"));
  const listen = `127.0.0.1:${await freePort()}`;
  const controlListen = `127.0.0.1:${await freePort()}`;
  const text = config.replaceAll("@LISTEN@", listen).replaceAll("@CONTROL_LISTEN@", controlListen);
  const configPath = join(dir, "approvalplane.toml");
  writeFileSync(configPath, text);
  const rulesDir = join(dir, "rules");
  mkdirSync(rulesDir, { recursive: true });
  if (rulesSrc) cpSync(rulesSrc, rulesDir, { recursive: true });
  for (const [name, body] of Object.entries(rules)) writeFileSync(join(rulesDir, name), body);
  mkdirSync(join(dir, "home"));

  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    HOME: join(dir, "home"),
    LANG: "C.UTF-8",
    TZ: "UTC",
    NO_COLOR: "1",
    ...(process.env.RUST_LOG ? { RUST_LOG: process.env.RUST_LOG } : {}),
    ...secrets,
  };
  const child = spawn(bin, ["serve", "--config", configPath], { cwd: dir, env, stdio: ["ignore", "pipe", "pipe"] });
  let output = "";
  const keep = (chunk) => {
    output = (output + chunk.toString()).slice(-64 * 1024);
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  const exited = new Promise((r) => child.once("exit", (code, signal) => r({ code, signal })));
  let exitInfo = null;
  exited.then((info) => {
    exitInfo = info;
  });

  const instance = {
    dir,
    configPath,
    proxyUrl: `http://${listen}`,
    controlUrl: `http://${controlListen}`,
    output: () => output,
    admin: (token) => new AdminClient(`http://${controlListen}`, token),
    async stop() {
      if (exitInfo === null) {
        child.kill("SIGTERM");
        const timer = setTimeout(() => child.kill("SIGKILL"), STOP_GRACE_MS);
        await exited;
        clearTimeout(timer);
      }
      if (!process.env.APPROVALPLANE_KEEP_TMP) rmSync(dir, { recursive: true, force: true });
      return exitInfo;
    },
  };

  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    if (exitInfo !== null) {
      await instance.stop();
      throw new Error(`approvalplane serve exited (${JSON.stringify(exitInfo)}) before /healthz answered:\n${output}`);
    }
    try {
      const r = await fetch(`${instance.controlUrl}/healthz`, { signal: AbortSignal.timeout(1000) });
      if (r.status === 200) break;
    } catch {
      // not up yet
    }
    if (Date.now() >= deadline) {
      await instance.stop();
      throw new Error(`GET /healthz did not answer 200 within ${STARTUP_TIMEOUT_MS} ms:\n${output}`);
    }
    await sleep(50);
  }
  return instance;
}
