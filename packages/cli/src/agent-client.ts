/**
 * AgentClient: the CLI's side of the agent protocol (_agent-protocol.ts). It is a KeyService — a
 * DataKeyProvider plus KEK management — so `encrypt`, `decrypt`, `datakey` and `key create|rotate`
 * work unchanged on a split-knowledge store: the data keys come from the agent, and envelope
 * encryption itself runs in this process. Plus the agent's own operations: status, unseal, seal.
 *
 * Failures are rebuilt from their wire code as the same KeywardenError subclass the agent hit,
 * so the one-line messages are the same as in development mode.
 */
import { lstat } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import type { CreateKeyOptions, DataKey, EncryptionContext, KeyExpectation, KeyInfo } from '@keywarden/core';
import {
  type AgentOp,
  type AgentRequest,
  type AgentStatus,
  encodeLine,
  errorFromWire,
  fromBase64,
  keyInfoFromWire,
  LineBuffer,
  MAX_RESPONSE_BYTES,
  toBase64,
  type UnsealResult,
} from './_agent-protocol.js';
import { CliError, systemErrorText } from './errors.js';
import type { KeyService, SocketLocation } from './store-dir.js';

/** No agent answers on the socket (no socket file, or a stale one). */
export class AgentUnavailableError extends CliError {
  override name = 'AgentUnavailableError';
}

export interface AgentClientOptions {
  /** How long to wait for the connection. Default 5 s. */
  connectTimeoutMs?: number;
  /** How long to wait for each answer. Default 60 s. */
  requestTimeoutMs?: number;
}

interface Pending {
  resolve: (result: unknown) => void;
  reject: (err: Error) => void;
  timer: ReturnType<typeof setTimeout>;
}

export class AgentClient implements KeyService {
  readonly socket: SocketLocation;
  readonly #options: AgentClientOptions;
  /** undefined after the agent closed an idle connection: the next request reconnects. */
  #conn: Socket | undefined;
  #connecting: Promise<Socket> | undefined;
  readonly #lines = new LineBuffer(MAX_RESPONSE_BYTES);
  readonly #pending = new Map<number, Pending>();
  readonly #requestTimeoutMs: number;
  #nextId = 1;
  #failure: Error | undefined;

  private constructor(socket: SocketLocation, conn: Socket, options: AgentClientOptions) {
    this.socket = socket;
    this.#options = options;
    this.#requestTimeoutMs = options.requestTimeoutMs ?? 60_000;
    this.#attach(conn);
  }

  /**
   * Connect to the agent on `socket`. AgentUnavailableError when none answers. Refuses a socket
   * owned by another user: shares and data keys go over it, and a --socket in a shared directory
   * could be someone else's listener.
   */
  static async connect(socket: SocketLocation, options: AgentClientOptions = {}): Promise<AgentClient> {
    return new AgentClient(socket, await AgentClient.#open(socket, options), options);
  }

  static async #open(socket: SocketLocation, options: AgentClientOptions): Promise<Socket> {
    await checkSocketOwner(socket);
    return new Promise((resolve, reject) => {
      const conn = createConnection({ path: socket.path });
      const timer = setTimeout(() => {
        conn.destroy();
        reject(
          new CliError(`agent: no answer from ${socket.display} within ${(options.connectTimeoutMs ?? 5000) / 1000} s`),
        );
      }, options.connectTimeoutMs ?? 5000);
      const onError = (err: NodeJS.ErrnoException) => {
        clearTimeout(timer);
        conn.destroy();
        if (err.code === 'ENOENT' || err.code === 'ECONNREFUSED') {
          reject(
            new AgentUnavailableError(`no agent running on ${socket.display} (start one with \`keywarden agent\`)`),
          );
        } else {
          reject(
            new CliError(`cannot connect to the agent on ${socket.display}: ${systemErrorText(err)}`, { cause: err }),
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
   * The agent closes a connection that stayed idle (its --idle-timeout) or waited too long on
   * this client: with nothing pending that is not a failure, and the next request reconnects.
   */
  #attach(conn: Socket): void {
    this.#conn = conn;
    conn.on('data', (chunk: Buffer) => this.#onData(chunk));
    conn.on('error', (err) => {
      if (this.#pending.size > 0) this.#fail(new CliError(`agent: connection failed: ${systemErrorText(err)}`));
    });
    conn.on('close', () => {
      if (this.#conn === conn) this.#conn = undefined;
      this.#lines.wipe();
      if (this.#pending.size > 0) {
        this.#fail(new CliError(`agent: the agent on ${this.socket.display} closed the connection before answering`));
      }
    });
  }

  async #connection(): Promise<Socket> {
    if (this.#conn) return this.#conn;
    this.#connecting ??= AgentClient.#open(this.socket, this.#options).then(
      (conn) => {
        this.#connecting = undefined;
        if (this.#failure) {
          conn.destroy();
          throw this.#failure;
        }
        this.#attach(conn);
        return conn;
      },
      (err: unknown) => {
        this.#connecting = undefined;
        throw err;
      },
    );
    return this.#connecting;
  }

  // ── The agent's own operations ─────────────────────────────────────────────────────────────────

  async status(): Promise<AgentStatus> {
    return (await this.request('status')) as AgentStatus;
  }

  /** Submit one plaintext share. */
  async unseal(share: string): Promise<UnsealResult> {
    return (await this.request('unseal', { share })) as UnsealResult;
  }

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

  async getKey(nameOrId: string): Promise<KeyInfo> {
    return keyInfoFromWire(await this.request('getKey', { key: nameOrId }));
  }

  async listKeys(): Promise<KeyInfo[]> {
    const r = await this.request('listKeys');
    if (!Array.isArray(r)) throw malformed();
    return r.map(keyInfoFromWire);
  }

  async close(): Promise<void> {
    this.#fail(new CliError('agent: connection closed'));
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
    if (this.#failure) throw this.#failure;
    const conn = await this.#connection();
    const id = this.#nextId++;
    const req: AgentRequest = { id, op, args };
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new CliError(`agent: no answer from ${this.socket.display} within ${this.#requestTimeoutMs / 1000} s`));
      }, this.#requestTimeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      conn.write(encodeLine(req));
    });
  }

  #onData(chunk: Buffer): void {
    let lines: Buffer[];
    try {
      lines = this.#lines.push(chunk);
    } catch {
      this.#fail(new CliError('agent: response too long'));
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
        this.#fail(new CliError('agent: malformed response'));
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
      if (m.ok) pending.resolve(m.result);
      else pending.reject(errorFromWire(m.error));
    }
  }

  /** Reject everything pending, and every later request, with `err`. */
  #fail(err: Error): void {
    this.#failure ??= err;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(err);
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
      throw new AgentUnavailableError(`no agent running on ${socket.display} (start one with \`keywarden agent\`)`);
    }
    return; // let connect() report it
  }
  if (owner !== uid && owner !== 0) {
    throw new CliError(`${socket.display} belongs to another user (uid ${owner}); refusing to talk to it`);
  }
}

function malformed(): CliError {
  return new CliError('agent: malformed response');
}

function asObject(v: unknown): Record<string, unknown> {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw malformed();
  return v as Record<string, unknown>;
}

function bytes(v: unknown): Uint8Array {
  if (typeof v !== 'string') throw malformed();
  return fromBase64(v, malformed);
}
