/**
 * AgentClient: an application's (or a command's) side of the agent protocol (protocol.ts). It is a
 * DataKeyProvider, like Keywarden, so core's encryptEnvelope/decryptEnvelope and the streams take
 * it as they take a Keywarden: the data keys come from the agent, and envelope encryption itself
 * runs in this process. Plus KEK management (createKey, rotateKey, the lifecycle of versions:
 * disableVersion, enableVersion, compromiseVersion, destroyVersion; getKey, listKeys) and the
 * agent's own operations: status, unseal, seal.
 *
 * Every connection starts with `hello` (the protocol version, docs/agent-protocol.md); the agent
 * closes idle connections and the client reconnects, with a new hello, on the next request.
 * Failures are rebuilt from their wire code as the same KeywardenError subclass the agent hit.
 */
import { lstat } from 'node:fs/promises';
import { createConnection, isIP, type Socket } from 'node:net';
import { connect as tlsConnect } from 'node:tls';
import {
  AgentError,
  AgentProtocolError,
  AgentUnavailableError,
  AgentVersionError,
  type CompromiseOptions,
  type CompromiseReport,
  type CreateKeyOptions,
  type DataKey,
  type DataKeyProvider,
  type DestroyOptions,
  type DisableOptions,
  type EncryptionContext,
  type KeyExpectation,
  type KeyInfo,
  KeywardenError,
} from '@keywarden/core';
import { type SocketLocation, socketLocation, systemErrorText } from './_socket.js';
import { type AgentTcpEndpoint, pemBuffer, TLS_VERSION, tcpDisplay, tlsFailureText } from './_tls.js';
import {
  type AgentOp,
  type AgentRequest,
  type AgentStatus,
  encodeLine,
  errorFromWire,
  fromBase64,
  type HelloResult,
  keyInfoFromWire,
  LineBuffer,
  MAX_RESPONSE_BYTES,
  PROTOCOL_VERSIONS,
  toBase64,
  type UnsealResult,
} from './protocol.js';

/**
 * What key-using code needs: data keys (a DataKeyProvider, which is all envelope encryption asks
 * for) and KEK management. A `Keywarden` in the application's own process is one; so is an
 * `AgentClient` talking to an agent.
 */
export interface KeyService extends DataKeyProvider {
  createKey(name: string, options?: CreateKeyOptions): Promise<KeyInfo>;
  rotateKey(nameOrId: string): Promise<KeyInfo>;
  getKey(nameOrId: string): Promise<KeyInfo>;
  listKeys(): Promise<KeyInfo[]>;
  /** A Keywarden: wipe the KEK cache (and close what it owns). An AgentClient: close the connection. */
  close(): Promise<void>;
}

export interface AgentClientOptions {
  /** How long to wait for the connection and the hello. Default 5 s. */
  connectTimeoutMs?: number;
  /** How long to wait for each answer. Default 60 s. */
  requestTimeoutMs?: number;
  /**
   * The principal's agent credential ("kwagent1.…", issued by an administrator), presented in every
   * hello. Default: the KEYWARDEN_AGENT_TOKEN environment variable, if set.
   */
  credential?: string;
}

/**
 * Where an agent listens: a unix socket (a path, or a path and how to show it), or a TCP address
 * with this client's TLS certificate (mutual TLS, docs/agent-protocol.md §1.1).
 */
export type AgentEndpoint = string | SocketLocation | AgentTcpEndpoint;

/**
 * What became of one request, for a caller that may retry it elsewhere (failover.ts):
 *  - `unsent`: it never left this process (no connection, or the hello failed): safe to send anywhere;
 *  - `lost`: it was written, and the connection died or the answer timed out: the agent may or may
 *    not have done it;
 *  - `answered`: the agent answered with this error.
 */
export type RequestFate = 'unsent' | 'lost' | 'answered';
export type Outcome = { ok: true; result: unknown } | { ok: false; error: Error; fate: RequestFate };

interface Pending {
  settle: (outcome: Outcome) => void;
  timer: ReturnType<typeof setTimeout>;
}

export function isTcp(e: AgentEndpoint): e is AgentTcpEndpoint {
  return typeof e === 'object' && e !== null && 'port' in e;
}

/**
 * The protocol's operations over one `request` (AgentClient: one agent; AgentFleetClient in
 * fleet.ts: several, with failover). Each method checks the shape of the answer.
 */
export abstract class AgentOperations implements KeyService {
  /** Send one request and wait for its answer (rejects with the rebuilt error). */
  abstract request(op: AgentOp, args?: Record<string, unknown>): Promise<unknown>;
  abstract close(): Promise<void>;

  // ── The agent's own operations ─────────────────────────────────────────────────────────────────

  async status(): Promise<AgentStatus> {
    return (await this.request('status')) as AgentStatus;
  }

  /** Submit one plaintext share (split knowledge). */
  async unseal(share: string): Promise<UnsealResult> {
    return (await this.request('unseal', { share })) as UnsealResult;
  }

  /** Wipe the agent's root and KEK cache; key operations are refused until it is unsealed again. */
  async seal(): Promise<void> {
    await this.request('seal');
  }

  // ── KeyService ────────────────────────────────────────────────────────────────────────────────

  async generateDataKey(key: string, context?: EncryptionContext): Promise<DataKey> {
    const r = asObject(await this.request('generateDataKey', { key, ...(context ? { context } : {}) }));
    const keyId = r.keyId;
    const version = r.version;
    if (typeof keyId !== 'string' || typeof version !== 'number') throw malformed();
    const wrapped = bytes(r.wrapped);
    return { plaintext: bytes(r.plaintext), wrapped, keyId, version };
  }

  async decryptDataKey(
    wrapped: Uint8Array,
    context: EncryptionContext | undefined,
    expected: KeyExpectation,
  ): Promise<Uint8Array> {
    const r = asObject(
      await this.request('decryptDataKey', { wrapped: toBase64(wrapped), ...(context ? { context } : {}), expected }),
    );
    return bytes(r.plaintext);
  }

  async createKey(name: string, options: CreateKeyOptions = {}): Promise<KeyInfo> {
    return keyInfoFromWire(await this.request('createKey', { name, scope: { ...(options.scope ?? {}) } }));
  }

  async rotateKey(nameOrId: string): Promise<KeyInfo> {
    return keyInfoFromWire(await this.request('rotateKey', { key: nameOrId }));
  }

  // ── Lifecycle of KEK versions (the library's rules, docs/lifecycle.md; the caller's policy) ──

  /** Disable a version (reversible): it neither wraps nor unwraps until enabled again. */
  async disableVersion(nameOrId: string, version: number, options: DisableOptions = {}): Promise<KeyInfo> {
    return keyInfoFromWire(
      await this.request('disableVersion', {
        key: nameOrId,
        version,
        ...(options.confirmLastVersion !== undefined ? { confirmLastVersion: options.confirmLastVersion } : {}),
      }),
    );
  }

  /** Enable a disabled version again (a compromised or destroyed one never). */
  async enableVersion(nameOrId: string, version: number): Promise<KeyInfo> {
    return keyInfoFromWire(await this.request('enableVersion', { key: nameOrId, version }));
  }

  /** Mark a version compromised (irreversible); rotates in the same write unless `rotate: false`. */
  async compromiseVersion(
    nameOrId: string,
    version: number,
    options: CompromiseOptions = {},
  ): Promise<CompromiseReport> {
    const r = asObject(
      await this.request('compromiseVersion', {
        key: nameOrId,
        version,
        ...(options.rotate !== undefined ? { rotate: options.rotate } : {}),
      }),
    );
    const rotatedTo = r.rotatedTo;
    if (
      typeof r.compromisedVersion !== 'number' ||
      !(rotatedTo === null || typeof rotatedTo === 'number') ||
      !isNumberArray(r.unreadableVersions) ||
      !isNumberArray(r.rewrapVersions)
    ) {
      throw malformed();
    }
    return {
      key: keyInfoFromWire(r.key),
      compromisedVersion: r.compromisedVersion,
      rotatedTo: rotatedTo ?? undefined,
      unreadableVersions: r.unreadableVersions,
      rewrapVersions: r.rewrapVersions,
    };
  }

  /**
   * Destroy a disabled or compromised version (crypto-shredding), after the grace period or with
   * `force`; the primary or last version needs `confirmLastVersion`.
   */
  async destroyVersion(nameOrId: string, version: number, options: DestroyOptions = {}): Promise<KeyInfo> {
    return keyInfoFromWire(
      await this.request('destroyVersion', {
        key: nameOrId,
        version,
        ...(options.force !== undefined ? { force: options.force } : {}),
        ...(options.confirmLastVersion !== undefined ? { confirmLastVersion: options.confirmLastVersion } : {}),
      }),
    );
  }

  async getKey(nameOrId: string): Promise<KeyInfo> {
    return keyInfoFromWire(await this.request('getKey', { key: nameOrId }));
  }

  async listKeys(): Promise<KeyInfo[]> {
    const r = await this.request('listKeys');
    if (!Array.isArray(r)) throw malformed();
    return r.map(keyInfoFromWire);
  }
}

export class AgentClient extends AgentOperations {
  /** The unix socket, or for a TCP endpoint `{ path: "", display: "tls://host:port" }`. */
  readonly socket: SocketLocation;
  readonly #tcp: AgentTcpEndpoint | undefined;
  readonly #options: AgentClientOptions;
  /** undefined after the agent closed an idle connection: the next request reconnects. */
  #conn: Socket | undefined;
  #connecting: Promise<Socket> | undefined;
  readonly #lines = new LineBuffer(MAX_RESPONSE_BYTES);
  readonly #pending = new Map<number, Pending>();
  readonly #requestTimeoutMs: number;
  #nextId = 1;
  #failure: Error | undefined;
  #protocol = 0;

  private constructor(endpoint: AgentEndpoint, options: AgentClientOptions) {
    super();
    if (isTcp(endpoint)) {
      this.#tcp = endpoint;
      this.socket = { path: '', display: endpoint.display ?? tcpDisplay(endpoint.host, endpoint.port) };
    } else {
      this.socket = socketLocation(endpoint);
    }
    this.#options = options;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
  }

  /**
   * Connect to the agent listening on `socket` (a path, or a path and how to name it in messages)
   * and agree on a protocol version. AgentUnavailableError when no agent answers, AgentVersionError
   * when it speaks no version this client speaks. Refuses a socket owned by another user: shares
   * and data keys go over it, and a socket in a shared directory could be someone else's listener.
   */
  static async connect(endpoint: AgentEndpoint, options: AgentClientOptions = {}): Promise<AgentClient> {
    const client = AgentClient.create(endpoint, options);
    try {
      await client.#connection();
    } catch (err) {
      await client.close();
      throw err;
    }
    return client;
  }

  /** A client that connects on its first request (connect() = create() and connect now). */
  static create(endpoint: AgentEndpoint, options: AgentClientOptions = {}): AgentClient {
    if (isTcp(endpoint)) {
      if (typeof endpoint.host !== 'string' || !Number.isSafeInteger(endpoint.port) || !endpoint.tls) {
        throw new AgentError('agent: a TCP endpoint needs host, port and tls (cert, key, ca)');
      }
    }
    return new AgentClient(endpoint, options);
  }

  /** The protocol version agreed with the agent on the current connection. */
  get protocolVersion(): number {
    return this.#protocol;
  }

  /**
   * Mutual TLS 1.3 to a remote agent. The handshake checks the agent's certificate against
   * `tls.ca` and the host name; the agent's verdict on this client's certificate arrives after it
   * (TLS 1.3 sends it with the client's last flight), as an alert on the hello.
   */
  static #openTcp(e: AgentTcpEndpoint, display: string, options: AgentClientOptions): Promise<Socket> {
    const timeoutMs = options.connectTimeoutMs ?? 5000;
    return new Promise((resolve, reject) => {
      const key = pemBuffer(e.tls.key, 'key');
      const servername = e.tls.servername ?? (isIP(e.host) === 0 ? e.host : undefined);
      let conn: Socket;
      try {
        conn = tlsConnect({
          host: e.host,
          port: e.port,
          cert: pemBuffer(e.tls.cert, 'cert'),
          key,
          ca: pemBuffer(e.tls.ca, 'ca'),
          ...(servername !== undefined ? { servername } : {}),
          minVersion: TLS_VERSION,
          maxVersion: TLS_VERSION,
        });
      } catch {
        reject(new AgentError(`agent: this client's TLS certificate, key or CA is not usable for ${display}`));
        return;
      } finally {
        key.fill(0);
      }
      const timer = setTimeout(() => {
        conn.destroy();
        reject(new AgentError(`agent: no answer from ${display} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      const onError = (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        conn.destroy();
        const tls = tlsFailureText(err);
        if (tls) reject(new AgentError(`agent: ${display}: ${tls}`));
        else if (err.code === 'ECONNREFUSED' || err.code === 'ECONNRESET' || err.code === 'EHOSTUNREACH') {
          reject(new AgentUnavailableError(`agent: no agent answers on ${display} (${systemErrorText(err)})`));
        } else {
          reject(new AgentError(`agent: cannot connect to the agent on ${display}: ${systemErrorText(err)}`));
        }
      };
      conn.once('error', onError);
      conn.once('secureConnect', () => {
        clearTimeout(timer);
        conn.off('error', onError);
        resolve(conn);
      });
    });
  }

  static async #open(socket: SocketLocation, options: AgentClientOptions, tcp?: AgentTcpEndpoint): Promise<Socket> {
    if (tcp) return AgentClient.#openTcp(tcp, socket.display, options);
    await checkSocketOwner(socket);
    const timeoutMs = options.connectTimeoutMs ?? 5000;
    return new Promise((resolve, reject) => {
      const conn = createConnection({ path: socket.path });
      const timer = setTimeout(() => {
        conn.destroy();
        reject(new AgentError(`agent: no answer from ${socket.display} within ${timeoutMs / 1000} s`));
      }, timeoutMs);
      const onError = (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        conn.destroy();
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(new AgentUnavailableError(`agent: no agent running on ${socket.display}`));
        } else {
          reject(
            new AgentError(`agent: cannot connect to the agent on ${socket.display}: ${systemErrorText(err)}`, {
              cause: err,
            }),
          );
        }
      };
      conn.once('error', onError);
      conn.once('connect', () => {
        clearTimeout(timer);
        conn.off('error', onError);
        resolve(conn);
      });
    });
  }

  /**
   * The agent closes a connection that stayed idle or waited too long on this client: with
   * nothing pending that is not a failure, and the next request reconnects.
   */
  #attach(conn: Socket): void {
    this.#conn = conn;
    conn.on('data', (chunk: Buffer) => this.#onData(chunk));
    conn.on('error', (err) => {
      if (this.#pending.size === 0) return;
      const tls = tlsFailureText(err);
      this.#fail(
        tls
          ? new AgentError(`agent: ${this.socket.display}: ${tls}`)
          : new AgentError(`agent: connection to ${this.socket.display} failed: ${systemErrorText(err)}`),
      );
    });
    conn.on('close', () => {
      if (this.#conn === conn) this.#conn = undefined;
      this.#lines.wipe();
      if (this.#pending.size > 0) {
        this.#fail(new AgentError(`agent: the agent on ${this.socket.display} closed the connection before answering`));
      }
    });
  }

  /** The open connection, or a new one with its hello done. */
  async #connection(): Promise<Socket> {
    if (this.#conn) return this.#conn;
    this.#connecting ??= (async () => {
      try {
        const conn = await AgentClient.#open(this.socket, this.#options, this.#tcp);
        if (this.#failure) {
          conn.destroy();
          throw this.#failure;
        }
        this.#attach(conn);
        try {
          await this.#hello(conn);
        } catch (err) {
          conn.destroy();
          if (this.#conn === conn) this.#conn = undefined;
          throw err;
        }
        return conn;
      } finally {
        this.#connecting = undefined;
      }
    })();
    return this.#connecting;
  }

  /** Agree on a protocol version: the first request on every connection. */
  async #hello(conn: Socket): Promise<void> {
    let r: unknown;
    try {
      // Over mutual TLS the certificate names the principal: a token is never sent there.
      const credential = this.#tcp ? undefined : (this.#options.credential ?? process.env.KEYWARDEN_AGENT_TOKEN);
      const args = { versions: [...PROTOCOL_VERSIONS], ...(credential ? { credential } : {}) };
      const o = await this.#send(conn, 'hello', args, this.#options.connectTimeoutMs ?? 5000);
      if (!o.ok) throw o.error;
      r = o.result;
    } catch (err) {
      // An agent older than versioning answers hello as an unknown op.
      if (AgentProtocolError.isInstance(err) && /unknown op/.test(err.message)) {
        throw new AgentVersionError(
          `agent: the agent on ${this.socket.display} does not negotiate a protocol version (it predates versioning); use matching releases of @keywarden/agent`,
        );
      }
      throw err;
    }
    const protocol = (r as Partial<HelloResult> | undefined)?.protocol;
    if (typeof protocol !== 'number' || !(PROTOCOL_VERSIONS as readonly number[]).includes(protocol)) {
      throw new AgentVersionError(
        `agent: the agent on ${this.socket.display} chose protocol version ${String(protocol)}, which this client does not speak (it speaks ${PROTOCOL_VERSIONS.join(', ')})`,
      );
    }
    this.#protocol = protocol;
  }

  /** Close the connection. Requests after this fail with ClosedError-like AgentError. */
  async close(): Promise<void> {
    this.#fail(new AgentError('agent: connection closed'));
    const conn = this.#conn;
    if (!conn) return;
    await new Promise<void>((resolve) => {
      if (conn.destroyed) resolve();
      else conn.end(() => resolve());
      conn.once('close', () => resolve());
    });
    conn.destroy();
  }

  // ── Plumbing ──────────────────────────────────────────────────────────────────────────────────

  /** Send one request and wait for its answer (rejects with the rebuilt error). */
  async request(op: AgentOp, args: Record<string, unknown> = {}): Promise<unknown> {
    const o = await this.exchange(op, args);
    if (!o.ok) throw o.error;
    return o.result;
  }

  /**
   * Send one request and say what became of it: its result, or its error and whether it was sent
   * at all (RequestFate). Never rejects. For failover (failover.ts): only an `unsent` request may be
   * sent again to another agent whatever its op.
   */
  async exchange(op: AgentOp, args: Record<string, unknown> = {}): Promise<Outcome> {
    if (this.#failure) return { ok: false, error: this.#failure, fate: 'unsent' };
    let conn: Socket;
    try {
      conn = await this.#connection();
    } catch (err) {
      return {
        ok: false,
        error: err instanceof Error ? err : new AgentError('agent: connection failed'),
        fate: 'unsent',
      };
    }
    return this.#send(conn, op, args, this.#requestTimeoutMs);
  }

  /** Whether this client failed for good (a lost connection with requests in flight, or close()). */
  get failed(): boolean {
    return this.#failure !== undefined;
  }

  #send(conn: Socket, op: AgentOp, args: Record<string, unknown>, timeoutMs: number): Promise<Outcome> {
    const id = this.#nextId++;
    const req: AgentRequest = { id, op, args };
    return new Promise((settle) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        settle({
          ok: false,
          error: new AgentError(`agent: no answer from ${this.socket.display} within ${timeoutMs / 1000} s`),
          fate: 'lost',
        });
      }, timeoutMs);
      this.#pending.set(id, { settle, timer });
      conn.write(encodeLine(req));
    });
  }

  #onData(chunk: Buffer): void {
    let lines: Buffer[];
    try {
      lines = this.#lines.push(chunk);
    } catch {
      this.#fail(new AgentProtocolError('agent: response too long'));
      this.#conn?.destroy();
      return;
    } finally {
      chunk.fill(0);
    }
    for (const line of lines) {
      let msg: unknown;
      try {
        msg = JSON.parse(line.toString('utf8'));
      } catch {
        msg = undefined;
      } finally {
        line.fill(0);
      }
      const m = msg as { id?: unknown; ok?: unknown; result?: unknown; error?: unknown } | undefined;
      if (!m || typeof m !== 'object' || typeof m.ok !== 'boolean') {
        this.#fail(malformed());
        this.#conn?.destroy();
        return;
      }
      const pending = typeof m.id === 'number' ? this.#pending.get(m.id) : undefined;
      if (!pending) {
        // An answer to nothing we asked: the agent could not read a request of ours.
        if (m.ok === false) this.#fail(errorFromWire(m.error));
        continue;
      }
      this.#pending.delete(m.id as number);
      clearTimeout(pending.timer);
      if (m.ok) pending.settle({ ok: true, result: m.result });
      else pending.settle({ ok: false, error: errorFromWire(m.error), fate: 'answered' });
    }
  }

  /** Reject everything pending, and every later request, with `err`. */
  #fail(err: Error): void {
    this.#failure ??= err;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.settle({ ok: false, error: err, fate: 'lost' });
    }
    this.#pending.clear();
    this.#lines.wipe();
  }
}

async function checkSocketOwner(socket: SocketLocation): Promise<void> {
  const uid = process.getuid?.();
  if (uid === undefined) return;
  let owner: number;
  try {
    owner = (await lstat(socket.path)).uid;
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') {
      throw new AgentUnavailableError(`agent: no agent running on ${socket.display}`);
    }
    return; // let connect() report it
  }
  if (owner !== uid && owner !== 0) {
    throw new AgentError(`agent: ${socket.display} belongs to another user (uid ${owner}); refusing to talk to it`);
  }
}

function malformed(): AgentProtocolError {
  return new AgentProtocolError('agent: malformed response');
}

function isNumberArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((x) => typeof x === 'number' && Number.isSafeInteger(x));
}

function asObject(v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw malformed();
  return v as Record<string, unknown>;
}

function bytes(v: unknown): Uint8Array {
  if (typeof v !== 'string') throw malformed();
  return fromBase64(v, malformed);
}

/** True for an error meaning "no agent answers on that socket". */
export function isAgentUnavailable(err: unknown): boolean {
  return KeywardenError.isInstance(err, 'KW_AGENT_UNAVAILABLE');
}
