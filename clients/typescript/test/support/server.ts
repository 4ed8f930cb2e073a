// A real Chronote Billing for the tests: `chronote-billing serve` on a fresh SQLite database on a
// free random port, API keys and grants made with the operator CLI, and, where checkout is
// exercised, the local Stripe stand-in (`chronote-billing stripe-local`) on another free port.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
/** The package directory (build/test/support -> ../../..). */
export const packageDir = resolve(here, "..", "..", "..");
export const repoDir = resolve(packageDir, "..", "..");

export const ALL_SCOPES = [
  "accounts:read",
  "holds:write",
  "usage:write",
  "billing:write",
  "orgs:read",
  "orgs:write",
] as const;

export function cliPath(): string {
  const fromEnv = process.env.CHRONOTE_BILLING_CLI;
  if (fromEnv) return fromEnv;
  const inRepo = join(repoDir, ".venv", "bin", "chronote-billing");
  if (existsSync(inRepo)) return inRepo;
  throw new Error("chronote-billing not found: run `make install` at the repository root, or set CHRONOTE_BILLING_CLI");
}

export function pythonPath(): string {
  return join(dirname(cliPath()), "python");
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const address = server.address();
      const port = typeof address === "object" && address ? address.port : 0;
      server.close(() => resolvePort(port));
    });
  });
}

async function waitFor(url: string, child: ChildProcess, output: () => string, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`${url}: the process exited (${child.exitCode}):\n${output()}`);
    try {
      const response = await fetch(url);
      if (response.status < 500) return;
    } catch {
      // not listening yet
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`${url} did not answer within ${timeoutMs} ms:\n${output()}`);
}

function startProcess(args: string[], env: NodeJS.ProcessEnv): { child: ChildProcess; output: () => string } {
  const child = spawn(cliPath(), args, { env, stdio: ["ignore", "pipe", "pipe"], detached: false });
  let text = "";
  const keep = (chunk: Buffer) => {
    text = (text + chunk.toString()).slice(-20_000);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  return { child, output: () => text };
}

async function stopProcess(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once("exit", () => r()));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 5_000);
  await exited;
  clearTimeout(timer);
}

export interface ServerOptions {
  /** Start the local Stripe stand-in and sync the catalog to it. */
  stripe?: boolean;
  /** Where the server delivers its signed notifications, and the secret it signs them with. */
  webhookUrl?: string;
  webhookSecret?: string;
  scopes?: readonly string[];
}

export interface BillingServer {
  baseUrl: string;
  apiKey: string;
  stripeUrl: string | undefined;
  /** The environment the server runs with (the same database for CLI commands). */
  env: NodeJS.ProcessEnv;
  /** Run an operator command against the server's database; returns stdout. */
  cli(...args: string[]): Promise<string>;
  /** Grant whole credits to `personal:<id>`, `server:<id>`, `org:<id>` or an `acct_` id. */
  grant(account: string, credits: number): Promise<void>;
  /** A new API key with these scopes. */
  createKey(scopes: readonly string[]): Promise<string>;
  stop(): Promise<void>;
}

export async function startServer(options: ServerOptions = {}): Promise<BillingServer> {
  const dir = mkdtempSync(join(tmpdir(), "chronote-billing-client-"));
  const port = await freePort();
  const baseUrl = `http://127.0.0.1:${port}`;
  const env: NodeJS.ProcessEnv = {
    PATH: process.env.PATH,
    HOME: process.env.HOME,
    LANG: "C.UTF-8",
    NO_COLOR: "1",
    COLUMNS: "200",
    CHRONOTE_DATABASE_URL: `sqlite:///${join(dir, "billing.db")}`,
    // Nothing listens on port 9: without the stand-in a Stripe call fails at once.
    CHRONOTE_STRIPE_API_BASE: "http://127.0.0.1:9",
    CHRONOTE_STRIPE_WEBHOOK_SECRET: "whsec_client_tests",
    CHRONOTE_PUBLIC_BASE_URL: baseUrl,
    ...(options.webhookUrl ? { CHRONOTE_WEBHOOK_URL: options.webhookUrl } : {}),
    ...(options.webhookSecret ? { CHRONOTE_WEBHOOK_SECRET: options.webhookSecret } : {}),
  };
  const processes: ChildProcess[] = [];
  const outputs: (() => string)[] = [];
  let grants = 0;
  const cli = async (...args: string[]): Promise<string> => {
    try {
      const { stdout } = await run(cliPath(), args, { env, maxBuffer: 16 * 1024 * 1024 });
      return stdout;
    } catch (error) {
      const e = error as { stderr?: string; stdout?: string; message: string };
      throw new Error(`chronote-billing ${args.join(" ")} failed: ${e.stderr || e.stdout || e.message}`);
    }
  };
  const createKey = async (scopes: readonly string[]): Promise<string> => {
    const out = await cli("api-key", "create", "--name", "client-tests", "--scopes", scopes.join(","));
    const secret = out.trim().split("\n").pop()?.trim() ?? "";
    if (!secret.startsWith("cbk_")) throw new Error(`no API key in: ${out}`);
    return secret;
  };
  const stop = async (): Promise<void> => {
    await Promise.all(processes.map(stopProcess));
    // A 500 in a test is a defect of the server: show its traceback with the failure.
    for (const output of outputs) {
      const text = output();
      if (/Traceback|unhandled_error/.test(text)) process.stderr.write(`\n--- server output ---\n${text}\n`);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  try {
    let stripeUrl: string | undefined;
    const migrated = cli("migrate");
    if (options.stripe) {
      const stripePort = await freePort();
      stripeUrl = `http://127.0.0.1:${stripePort}`;
      env.CHRONOTE_STRIPE_API_BASE = stripeUrl;
      const stand = startProcess(
        [
          "stripe-local",
          "--port",
          String(stripePort),
          "--webhook-url",
          `${baseUrl}/webhooks/stripe`,
          "--webhook-secret",
          String(env.CHRONOTE_STRIPE_WEBHOOK_SECRET),
        ],
        env,
      );
      processes.push(stand.child);
      outputs.push(stand.output);
      await waitFor(`${stripeUrl}/`, stand.child, stand.output);
    }
    await migrated;
    const server = startProcess(["serve", "--workers", "1", "--host", "127.0.0.1", "--port", String(port)], env);
    processes.push(server.child);
    outputs.push(server.output);
    const [apiKey] = await Promise.all([
      createKey(options.scopes ?? ALL_SCOPES),
      options.stripe ? cli("catalog", "sync") : Promise.resolve(""),
      waitFor(`${baseUrl}/healthz`, server.child, server.output),
    ]);
    return {
      baseUrl,
      apiKey,
      stripeUrl,
      env,
      cli,
      createKey,
      grant: async (account, credits) => {
        grants += 1;
        await cli("grant", account, String(credits), "-k", `client-tests-grant-${grants}`);
      },
      stop,
    };
  } catch (error) {
    await stop();
    throw error;
  }
}

let counter = 0;
/** A fresh Discord-like id (18 digits), different in every call of one test process. */
export function snowflake(): string {
  counter += 1;
  const base = BigInt(Date.now()) * 1000n + BigInt(process.pid % 1000);
  return (base * 100n + BigInt(counter)).toString().padStart(18, "1").slice(-18);
}
