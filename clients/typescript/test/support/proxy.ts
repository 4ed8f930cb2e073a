// A tiny HTTP proxy between the client and the real server, to lose answers on purpose: it can
// forward a request and drop the response (the server did the work, the client never hears),
// refuse a request without forwarding it, or answer for the server (a 503 with Retry-After).
import { type IncomingMessage, type Server, type ServerResponse, createServer } from "node:http";
import type { AddressInfo } from "node:net";

export type ProxyAction =
  | { kind: "pass" }
  /** Forward, wait for the server's whole answer, then cut the connection. */
  | { kind: "drop_response" }
  /** Cut the connection without forwarding. */
  | { kind: "refuse" }
  /** Answer instead of the server, without forwarding. */
  | { kind: "answer"; status: number; headers?: Record<string, string>; body?: string };

export interface ProxyRule {
  method?: string;
  /** Matches the path (without the query). */
  path: RegExp;
  action: ProxyAction;
  /** How many matching requests the rule applies to (default 1; Infinity for all). */
  times?: number;
}

export interface SeenRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body: string;
  action: ProxyAction["kind"];
  /** The server's status when forwarded (also for dropped responses). */
  upstreamStatus?: number;
  at: number;
}

export class Proxy {
  readonly seen: SeenRequest[] = [];
  private rules: (ProxyRule & { left: number })[] = [];
  private server: Server | undefined;
  url = "";

  constructor(private readonly target: string) {}

  async start(): Promise<this> {
    this.server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((r) => this.server?.listen(0, "127.0.0.1", () => r()));
    this.url = `http://127.0.0.1:${(this.server.address() as AddressInfo).port}`;
    return this;
  }

  async stop(): Promise<void> {
    this.server?.closeAllConnections();
    await new Promise<void>((r) => this.server?.close(() => r()));
  }

  /** Apply `action` to the next `times` requests that match. Rules are tried in order. */
  when(rule: ProxyRule): this {
    this.rules.push({ ...rule, left: rule.times ?? 1 });
    return this;
  }

  clearRules(): void {
    this.rules = [];
  }

  requests(method: string, path: RegExp): SeenRequest[] {
    return this.seen.filter((r) => r.method === method && path.test(r.path));
  }

  private pick(method: string, path: string): ProxyAction {
    for (const rule of this.rules) {
      if (rule.left <= 0) continue;
      if (rule.method && rule.method !== method) continue;
      if (!rule.path.test(path)) continue;
      rule.left -= 1;
      return rule.action;
    }
    return { kind: "pass" };
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks);
    const method = req.method ?? "GET";
    const url = req.url ?? "/";
    const path = url.split("?")[0] ?? url;
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(",") : value;
    }
    const action = this.pick(method, path);
    const seen: SeenRequest = { method, path, headers, body: body.toString(), action: action.kind, at: Date.now() };
    this.seen.push(seen);
    if (action.kind === "refuse") {
      req.socket.destroy();
      return;
    }
    if (action.kind === "answer") {
      res.writeHead(action.status, action.headers ?? {});
      res.end(action.body ?? "");
      return;
    }
    const forwarded: Record<string, string> = { ...headers };
    delete forwarded.host;
    delete forwarded.connection;
    delete forwarded["content-length"];
    delete forwarded["transfer-encoding"];
    const upstream = await fetch(this.target + url, {
      method,
      headers: forwarded,
      ...(body.length > 0 && method !== "GET" && method !== "HEAD" ? { body } : {}),
    });
    const answer = Buffer.from(await upstream.arrayBuffer());
    seen.upstreamStatus = upstream.status;
    if (action.kind === "drop_response") {
      req.socket.destroy();
      return;
    }
    const out: Record<string, string> = {};
    upstream.headers.forEach((value, name) => {
      if (!["content-length", "transfer-encoding", "connection", "content-encoding"].includes(name)) out[name] = value;
    });
    res.writeHead(upstream.status, out);
    res.end(answer);
  }
}
