/**
 * The key agent (`keywarden agent`): one long-running process that holds a split-knowledge
 * store's root, so the CLI — one process per command — has something to unseal. It starts
 * SEALED, collects shares one at a time (UnsealSession: progress M of N, shares only in memory,
 * wiped after the idle timeout), unseals the root with the quorum, and serves key operations to
 * the commands over a local unix socket (_agent-protocol.ts). Like Vault's server process.
 *
 * State machine (the root's):
 *   sealed --unseal (share k < M)--> sealed, k shares held
 *   sealed --unseal (share M; the quorum opens the root)--> unsealed
 *   sealed --unseal (share M; the quorum does not open it: forged / other ceremony)--> sealed, 0 held
 *   sealed --idle timeout--> sealed, 0 held
 *   unsealed --seal--> sealed (root and KEK cache wiped; the root is reloaded from the store, so
 *                      after a root rotation the next quorum unseals the NEW root)
 *   any --seal, status or unseal, once the store's root was destroyed--> sealed for good: shares
 *                      are refused ("no root"); stop the agent
 *   any --SIGINT/SIGTERM--> stopped (root and KEK cache wiped, socket removed)
 *
 * Invariants:
 *  - key operations (data keys, create, rotate) are refused with KeystoreSealedError while
 *    sealed; metadata (getKey, listKeys) is served either way, as `key list` is without an agent;
 *  - the quorum is always checked against the sealed root in the key store as it is NOW: when the
 *    store was rekeyed (or its root rotated) since this process loaded it, a sealed agent reloads
 *    it (dropping any shares held), so old shares never unseal a running agent after a rekey, and
 *    an agent never unseals a root that was rotated away or destroyed;
 *  - `keywarden root rotate|destroy` seal a running agent when they are done: an unsealed agent
 *    still holds the old root and its cached KEKs until then;
 *  - nothing secret is logged: the log names share indices and counts, never a share or a key.
 *
 * Access control is the file system's: the socket is mode 0600 in the store directory (0700), so
 * only the user the agent runs as can connect — and that user can already read the store.
 * Anyone who can connect while the agent is unsealed can use every key; seal when in doubt.
 */
import { chmod, lstat, readFile, unlink } from 'node:fs/promises';
import { url as inspectorUrl } from 'node:inspector';
import { createConnection, createServer, type Server, type Socket } from 'node:net';
import { Connection, type ConnectionLimits } from './_agent-connection.js';
import {
  decodeSealedRoot,
  type EncryptionContext,
  type KeyExpectation,
  type KeyStore,
  KeyStoreError,
  KeystoreSealedError,
  Keywarden,
  ROOT_META_NAME,
  ROOT_MISSING_MESSAGE,
  ROOT_TOMBSTONE_META_NAME,
  RootMissingError,
  SoftwareRoot,
  type UnsealMethod,
  wipe,
} from '@keywarden/core';
import { type UnsealSession, unsealSessionFor, unsealWithSession } from '@keywarden/split-knowledge';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import {
  type AgentRequest,
  type AgentStatus,
  bytesArg,
  encodeLine,
  errorToWire,
  INTERNAL_ERROR,
  keyInfoToWire,
  MAX_REQUEST_BYTES,
  PROTOCOL_ERROR,
  ProtocolError,
  parseRequest,
  recordArg,
  stringArg,
  toBase64,
  type UnsealResult,
} from './_agent-protocol.js';
import { CliError, describeError, systemErrorText } from './errors.js';
import { requireStore, type SocketLocation, type StoreLocation } from './store-dir.js';

export const DEFAULT_UNSEAL_TIMEOUT_SECONDS = 600;
/** Connections served at once (each command opens one); at the limit the longest-waiting one goes. */
export const DEFAULT_MAX_CONNECTIONS = 64;
/** A connection with nothing in progress is closed after this long (clients reconnect). */
export const DEFAULT_IDLE_TIMEOUT_SECONDS = 60;
/** A request line must be complete, and each reply read, within this long. */
export const DEFAULT_LINE_TIMEOUT_SECONDS = 10;
/** Complete requests waiting on one connection before the agent stops reading from it. */
const MAX_PIPELINED = 16;
/** sun_path is 108 bytes on Linux, 104 on macOS, NUL included. */
const MAX_SOCKET_PATH_BYTES = process.platform === 'darwin' ? 103 : 107;

/** What the agent answers once the store's root was destroyed (`keywarden root destroy`). */
export const NO_ROOT_MESSAGE = 'root: this key store has no root any more (it was destroyed); stop the agent';
const ROOT_DESTROYED_LOG = "the key store's root was destroyed: nothing can be unsealed any more; stop this agent";

export const SEALED_MESSAGE =
  'keystore: sealed; unseal the root before using keys (the agent is sealed: unseal it with a quorum of shares, `keywarden unseal`)';

export interface AgentOptions {
  loc: StoreLocation;
  socket: SocketLocation;
  /** Idle time after the last accepted share before the shares held are wiped. */
  unsealTimeoutMs: number;
  /** One line, no newline, nothing secret. */
  log: (line: string) => void;
  cwd: string;
  /** Client limits (defaults: DEFAULT_MAX_CONNECTIONS, DEFAULT_IDLE_TIMEOUT_SECONDS, DEFAULT_LINE_TIMEOUT_SECONDS). */
  maxConnections?: number;
  idleTimeoutMs?: number;
  lineTimeoutMs?: number;
  /**
   * Development only: serve even though a Node inspector is active in this process (started with
   * --inspect). Without it the agent refuses to start: anyone who can reach the inspector's port
   * can run code inside the process that holds the root.
   */
  allowInspector?: boolean;
}

export class KeyAgent {
  readonly socket: SocketLocation;
  readonly #store: KeyStore;
  readonly #options: AgentOptions;
  readonly #clients = new Set<Connection>();
  /** Every open socket, including those closed from the agent's side and lingering: close() ends them all. */
  readonly #sockets = new Set<Socket>();
  readonly #limits: ConnectionLimits & { maxConnections: number };
  #evictions = 0;
  #evictionLoggedAt = 0;
  #server: Server | undefined;
  #root: SoftwareRoot;
  #kw: Keywarden;
  #session: UnsealSession | undefined;
  /** The store's unseal description when it differs from the loaded root's (rekeyed while unsealed). */
  #storedUnseal: UnsealMethod | undefined;
  #expiryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Serializes state changes (unseal, seal, reload) so a quorum is never combined twice. */
  #lock: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(store: KeyStore, root: SoftwareRoot, options: AgentOptions) {
    this.#store = store;
    this.#root = root;
    this.#kw = new Keywarden({ store, root, ownsStore: true, ownsRoot: true });
    this.#options = options;
    this.socket = options.socket;
    this.#limits = {
      maxConnections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      idleTimeoutMs: options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_SECONDS * 1000,
      lineTimeoutMs: options.lineTimeoutMs ?? DEFAULT_LINE_TIMEOUT_SECONDS * 1000,
      maxLineBytes: MAX_REQUEST_BYTES,
      maxPipelined: MAX_PIPELINED,
    };
  }

  /**
   * Open D's split-knowledge store sealed and listen on the socket. Refuses a development-mode
   * store, a socket on which a live agent answers, and a path that is something else than a
   * socket; removes a stale socket file.
   */
  static async start(options: AgentOptions): Promise<KeyAgent> {
    refuseInspector(options);
    checkSocketPathLength(options.socket);
    await requireStore(options.loc);
    if (await clearStaleSocket(options.socket)) {
      options.log(`removed a stale socket file ${options.socket.display} (no agent answered on it)`);
    }
    // Never create or initialize a store (only `init` does): an empty file is refused as it is.
    const store = await SqliteKeyStore.open(options.loc.dbPath, { create: false });
    let agent: KeyAgent | undefined;
    try {
      const root = await SoftwareRoot.load(store);
      if (root.document.unseal.method !== 'shamir') {
        await root.close();
        throw new CliError(
          'this key store is in development mode (unseal key file or environment variable): commands use it directly, no agent is needed',
        );
      }
      agent = new KeyAgent(store, root, options);
      const core = await coreDumpLimit();
      if (core !== undefined && core !== '0') {
        options.log(
          `warning: core dumps are enabled (RLIMIT_CORE ${core}): a crash would write the unsealed root to disk; run the agent with \`ulimit -c 0\` or systemd LimitCORE=0 (docs/threat-model.md)`,
        );
      }
      await agent.#listen();
      // Again, now that the signal handler (bin.ts) has long been in place: a SIGUSR1 that came
      // before it may have started the inspector a moment after the first check.
      refuseInspector(options);
      return agent;
    } catch (err) {
      if (agent) await agent.close().catch(() => {});
      else await store.close().catch(() => {});
      throw err;
    }
  }

  /** The non-secret description of the share set the next unseal needs. */
  describeSealed(): string {
    const u = this.#root.document.unseal;
    return u.method === 'shamir'
      ? `${u.threshold} of ${u.shares} shares of share set ${u.shareSetId}`
      : 'a development-mode key';
  }

  /** Stop: close the socket and every connection, wipe the shares held, the KEK cache and the root. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const server = this.#server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    for (const c of [...this.#clients]) c.drop(undefined);
    for (const s of this.#sockets) s.destroy();
    await closed;
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    this.#session?.reset();
    this.#session = undefined;
    await this.#kw.close().catch(() => {});
    // net.Server removes its socket file when it closes; this covers the cases where it did not.
    if (server) await unlink(this.socket.path).catch(() => {});
  }

  // ── Socket ────────────────────────────────────────────────────────────────────────────────────

  async #listen(): Promise<void> {
    // No server.maxConnections: the kernel would then close new connections unread, `seal`
    // included; #serve enforces the limit itself by evicting.
    const server = createServer((conn) => this.#serve(conn));
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        reject(
          err.code === 'EADDRINUSE'
            ? new CliError(`another agent started on ${this.socket.display} at the same time`)
            : new CliError(`cannot listen on ${this.socket.display}: ${systemErrorText(err)}`, { cause: err }),
        );
      };
      server.once('error', onError);
      // The socket file is created by bind(2), inside listen(), with the process umask: make it
      // owner-only from the first instant (the chmod below is for file systems that ignore it).
      const previous = setUmask(0o177);
      try {
        server.listen(this.socket.path, () => {
          server.off('error', onError);
          resolve();
        });
      } finally {
        if (previous !== undefined) setUmask(previous);
      }
    });
    this.#server = server;
    server.on('error', (err) => this.#options.log(`socket error: ${systemErrorText(err)}`));
    await chmod(this.socket.path, 0o600);
  }

  /**
   * Admit a connection. At the connection limit, the connection that has waited longest on its
   * client (an unfinished line, unread replies, or nothing at all) is closed to make room, so
   * clients that hold connections open cannot lock `status` and `seal` out; only when every
   * connection is in the middle of an answer is the newcomer refused.
   */
  #serve(conn: Socket): void {
    conn.on('error', () => {}); // a client that went away: nothing to do
    this.#sockets.add(conn);
    conn.on('close', () => this.#sockets.delete(conn));
    if (this.#closed) {
      conn.destroy();
      return;
    }
    if (this.#clients.size >= this.#limits.maxConnections) {
      const victim = this.#evictable();
      if (!victim) {
        conn.end(
          encodeLine({
            id: null,
            ok: false,
            error: { code: PROTOCOL_ERROR, message: `agent: busy (${this.#clients.size} connections); try again` },
          }),
        );
        conn.destroySoon();
        return;
      }
      this.#noteEviction();
      victim.drop(undefined);
    }
    const client: Connection = new Connection(
      conn,
      this.#limits,
      (line) => this.#answer(line),
      () => this.#clients.delete(client),
    );
    this.#clients.add(client);
  }

  /** The connection waiting longest on its client, not counting those the agent is answering. */
  #evictable(): Connection | undefined {
    let victim: Connection | undefined;
    for (const c of this.#clients) {
      if (c.answering) continue;
      if (!victim || c.waitingSince < victim.waitingSince) victim = c;
    }
    return victim;
  }

  /** Log evictions at most once every 10 s, with a count, so a flood does not flood the log. */
  #noteEviction(): void {
    this.#evictions++;
    const now = Date.now();
    if (now - this.#evictionLoggedAt < 10_000) return;
    this.#options.log(
      `connection limit (${this.#limits.maxConnections}) reached: closed ${this.#evictions} connection(s) that waited longest on their client`,
    );
    this.#evictions = 0;
    this.#evictionLoggedAt = now;
  }

  /** One request line in, one response line out. Never throws. */
  async #answer(line: Buffer): Promise<string> {
    let req: AgentRequest | undefined;
    try {
      req = parseRequest(line);
      const result = await this.#dispatch(req);
      return encodeLine({ id: req.id, ok: true, result });
    } catch (err) {
      const wire = errorToWire(err);
      if (wire.code === INTERNAL_ERROR)
        this.#options.log(`internal error: ${describeError(err, this.#options.cwd).message}`);
      const id = req?.id ?? (err instanceof ProtocolError ? err.requestId : null);
      return encodeLine({ id, ok: false, error: wire });
    } finally {
      line.fill(0);
    }
  }

  // ── Operations ────────────────────────────────────────────────────────────────────────────────

  async #dispatch(req: AgentRequest): Promise<unknown> {
    switch (req.op) {
      case 'status':
        return this.#exclusive(() => this.#status());
      case 'unseal':
        return this.#exclusive(() => this.#unseal(stringArg(req, 'share')));
      case 'seal':
        return this.#exclusive(() => this.#seal());
      case 'generateDataKey': {
        const key = stringArg(req, 'key');
        const context = recordArg(req, 'context') as EncryptionContext | undefined;
        const kw = this.#unsealed();
        const dk = await kw.generateDataKey(key, context);
        try {
          return {
            keyId: dk.keyId,
            version: dk.version,
            plaintext: toBase64(dk.plaintext),
            wrapped: toBase64(dk.wrapped),
          };
        } finally {
          wipe(dk.plaintext);
        }
      }
      case 'decryptDataKey': {
        const wrapped = bytesArg(req, 'wrapped');
        const context = recordArg(req, 'context') as EncryptionContext | undefined;
        // The client's expected key (core checks its shape): the agent never widens it to any key.
        const expected = req.args.expected as KeyExpectation;
        const plaintext = await this.#unsealed().decryptDataKey(wrapped, context, expected);
        try {
          return { plaintext: toBase64(plaintext) };
        } finally {
          wipe(plaintext);
        }
      }
      case 'createKey': {
        const name = stringArg(req, 'name');
        const scope = recordArg(req, 'scope') ?? {};
        return keyInfoToWire(await this.#unsealed().createKey(name, { scope }));
      }
      case 'rotateKey':
        return keyInfoToWire(await this.#unsealed().rotateKey(stringArg(req, 'key')));
      case 'getKey':
        return keyInfoToWire(await this.#kw.getKey(stringArg(req, 'key')));
      case 'listKeys':
        return (await this.#kw.listKeys()).map(keyInfoToWire);
    }
  }

  #unsealed(): Keywarden {
    if (this.#root.isSealed()) throw new KeystoreSealedError(SEALED_MESSAGE);
    return this.#kw;
  }

  async #status(): Promise<AgentStatus> {
    await this.#followStore();
    const u = this.#storedUnseal ?? this.#root.document.unseal;
    const p = this.#session?.progress();
    return {
      sealed: this.#root.isSealed(),
      rootId: this.#root.document.rootId,
      shareSetId: u.method === 'shamir' ? u.shareSetId : '',
      threshold: u.method === 'shamir' ? u.threshold : 0,
      shares: u.method === 'shamir' ? u.shares : 0,
      accepted: p?.accepted ?? 0,
      indices: p?.indices ?? [],
      reset: p?.reset ?? false,
      unsealTimeoutSeconds: this.#options.unsealTimeoutMs / 1000,
      pid: process.pid,
    };
  }

  async #unseal(share: string): Promise<UnsealResult> {
    await this.#followStore();
    const u = this.#root.document.unseal;
    const threshold = u.method === 'shamir' ? u.threshold : 0;
    const shares = u.method === 'shamir' ? u.shares : 0;
    if (!this.#root.isSealed()) {
      return { sealed: false, accepted: 0, threshold, shares, indices: [], reset: false, alreadyUnsealed: true };
    }
    // The last moment before a share, then the root, is in this process's memory.
    try {
      refuseInspector(this.#options);
    } catch (err) {
      this.#options.log(`share refused: ${messageOf(err)}`);
      throw err;
    }
    this.#session ??= unsealSessionFor(this.#root, { timeoutMs: this.#options.unsealTimeoutMs });
    const before = new Set(this.#session.progress().indices);
    let p: ReturnType<UnsealSession['submit']>;
    try {
      p = this.#session.submit(share);
    } catch (err) {
      this.#options.log(`share refused (${this.#session.progress().accepted} of ${threshold} held): ${messageOf(err)}`);
      throw err;
    }
    const added = p.indices.find((i) => !before.has(i));
    this.#options.log(
      `${p.reset ? 'earlier shares had timed out; ' : ''}share ${added ?? '?'} accepted (${p.accepted} of ${p.threshold})`,
    );
    const result = {
      accepted: p.accepted,
      threshold,
      shares,
      indices: p.indices,
      reset: p.reset,
      alreadyUnsealed: false,
    };
    if (!p.complete) {
      this.#watchExpiry(this.#session);
      return { sealed: true, ...result };
    }
    try {
      await unsealWithSession(this.#root, this.#session);
    } catch (err) {
      this.#options.log(`unseal failed, shares discarded: ${messageOf(err)}`);
      throw err;
    }
    this.#options.log('unsealed');
    return { sealed: false, ...result };
  }

  async #seal(): Promise<{ sealed: true }> {
    await this.#kw.seal();
    this.#session?.reset();
    this.#session = undefined;
    if (!(await this.#store.getMeta(ROOT_META_NAME))) {
      this.#options.log(`sealed: the root and the KEK cache were wiped; ${ROOT_DESTROYED_LOG}`);
      return { sealed: true };
    }
    // Load the root again: if the store was rekeyed while unsealed, the next unseal needs the new
    // set; if its root was rotated, the next quorum unseals the new root.
    const before = this.#root.document.rootId;
    await this.#reload();
    const after = this.#root.document.rootId;
    this.#options.log(
      `sealed: the root and the KEK cache were wiped${after !== before ? `; the key store's root was rotated (now ${after}): unseal it again with a quorum` : ''}`,
    );
    return { sealed: true };
  }

  /**
   * Compare the loaded root with the sealed root in the store. A sealed agent whose store was
   * rekeyed (or replaced) reloads it and drops the shares it held; an unsealed one keeps its root
   * (a rekey does not change the root key) and picks the new document up when it next seals.
   */
  async #followStore(): Promise<void> {
    const bytes = await this.#store.getMeta(ROOT_META_NAME);
    if (!bytes) {
      // The root was destroyed: wipe what this agent still holds and never collect shares again.
      const held = this.#session?.progress().accepted ?? 0;
      this.#session?.reset();
      this.#session = undefined;
      if (!this.#root.isSealed() || held > 0) {
        await this.#kw.seal();
        this.#options.log(`sealed: ${ROOT_DESTROYED_LOG}`);
      }
      // Destroyed only if the store says so (its tombstone); otherwise it is damaged, not destroyed.
      if (!(await this.#store.getMeta(ROOT_TOMBSTONE_META_NAME))) {
        throw new RootMissingError(`${ROOT_MISSING_MESSAGE}; stop the agent`);
      }
      throw new KeyStoreError(NO_ROOT_MESSAGE);
    }
    const stored = decodeSealedRoot(bytes);
    const loaded = this.#root.document;
    if (
      stored.rootId === loaded.rootId &&
      stored.nonce === loaded.nonce &&
      stored.wrappedRoot === loaded.wrappedRoot &&
      JSON.stringify(stored.unseal) === JSON.stringify(loaded.unseal)
    ) {
      this.#storedUnseal = undefined;
      return;
    }
    if (!this.#root.isSealed()) {
      this.#storedUnseal = stored.unseal;
      return;
    }
    const held = this.#session?.progress().accepted ?? 0;
    this.#session?.reset();
    this.#session = undefined;
    await this.#reload();
    const what =
      stored.rootId === loaded.rootId
        ? 'the key store was rekeyed'
        : `the key store's root was rotated (now ${stored.rootId})`;
    this.#options.log(
      `${what}; now expecting ${this.describeSealed()}${held > 0 ? ` (${held} shares held were discarded)` : ''}`,
    );
  }

  async #reload(): Promise<void> {
    const root = await SoftwareRoot.load(this.#store);
    if (root.document.unseal.method !== 'shamir') {
      await root.close();
      throw new CliError('agent: the key store is no longer split-knowledge; stop this agent');
    }
    // The old Keywarden is sealed and its cache wiped; it is dropped without closing the shared store.
    await this.#root.close();
    this.#root = root;
    this.#kw = new Keywarden({ store: this.#store, root, ownsStore: true, ownsRoot: true });
    this.#storedUnseal = undefined;
  }

  /** Log when the session discards its shares after the idle timeout (the session wipes them itself). */
  #watchExpiry(session: UnsealSession): void {
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    this.#expiryTimer = setTimeout(() => {
      this.#expiryTimer = undefined;
      if (this.#closed || this.#session !== session) return;
      const p = session.progress();
      if (p.reset) {
        this.#options.log(
          `unseal progress discarded: no new share within ${this.#options.unsealTimeoutMs / 1000} s (0 of ${p.threshold} held)`,
        );
      }
    }, this.#options.unsealTimeoutMs + 50);
    this.#expiryTimer.unref?.();
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => {});
    return run;
  }
}

// ── Debuggers ───────────────────────────────────────────────────────────────────────────────────

/**
 * Refuse to run with an active Node inspector (--inspect, or a SIGUSR1 that came before bin.ts
 * made the signal harmless): it is an unauthenticated debugger on a local port, and whoever
 * reaches it runs code inside the process that holds the root.
 */
function refuseInspector(options: AgentOptions): void {
  const url = inspectorUrl();
  if (url === undefined) return;
  if (options.allowInspector) {
    options.log(`WARNING: a Node inspector is active (${url}); anyone who can reach it controls this agent`);
    return;
  }
  throw new CliError(
    `agent: a Node inspector (debugger) is active in this process (${url}); refusing to hold the root. Start the agent without --inspect, or pass --allow-inspector (development only)`,
  );
}

/**
 * The soft RLIMIT_CORE from /proc/self/limits ("0", "unlimited", a byte count), or undefined
 * where it cannot be read (not Linux). Node cannot set the limit itself: the operator does.
 */
async function coreDumpLimit(): Promise<string | undefined> {
  try {
    const text = await readFile('/proc/self/limits', 'utf8');
    return /^Max core file size\s+(\S+)/m.exec(text)?.[1];
  } catch {
    return undefined;
  }
}

// ── Socket path ─────────────────────────────────────────────────────────────────────────────────

function checkSocketPathLength(socket: SocketLocation): void {
  const n = Buffer.byteLength(socket.path);
  if (n > MAX_SOCKET_PATH_BYTES) {
    throw new CliError(
      `socket path ${socket.display} is too long for a unix socket (${n} bytes, at most ${MAX_SOCKET_PATH_BYTES}); pass a shorter --socket`,
    );
  }
}

/**
 * Before listening: refuse when a live agent answers on the path or the path is not a socket;
 * remove a socket file nobody listens on (left by an agent that was killed): true when it did.
 */
async function clearStaleSocket(socket: SocketLocation): Promise<boolean> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(socket.path)).isSocket();
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw err;
  }
  if (!isSocket) throw new CliError(`${socket.display} exists and is not a socket; refusing to replace it`);
  const live = await new Promise<boolean>((resolve) => {
    const c = createConnection({ path: socket.path });
    const timer = setTimeout(() => {
      c.destroy();
      resolve(true); // something holds it and does not answer: do not take it over
    }, 2000);
    c.once('connect', () => {
      clearTimeout(timer);
      c.destroy();
      resolve(true);
    });
    c.once('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      c.destroy();
      resolve(err.code !== 'ECONNREFUSED' && err.code !== 'ENOENT');
    });
  });
  if (live) throw new CliError(`an agent is already running on ${socket.display}`);
  await unlink(socket.path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT') throw err;
  });
  return true;
}

/** process.umask(mask), or undefined where it is not allowed (worker threads). */
function setUmask(mask: number): number | undefined {
  try {
    return process.umask(mask);
  } catch {
    return undefined;
  }
}

function messageOf(err: unknown): string {
  return describeError(err, '/').message;
}
