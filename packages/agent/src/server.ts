/**
 * The key agent: one long-running process that holds a key store's root, so that short-lived
 * processes (application workers, the `keywarden` commands) never hold it. It serves data keys
 * and KEK management over a local unix socket (protocol.ts, docs/agent-protocol.md); envelope
 * encryption itself runs in each client's own process. With a split-knowledge store it starts
 * SEALED, collects shares one at a time (UnsealSession: progress M of N, shares only in memory,
 * wiped after the idle timeout) and unseals the root with the quorum. Like Vault's server process.
 *
 * It takes any KeyStore and any RootOfTrust: an opened root, or a factory that loads the store's
 * root (then the agent loads it again after every seal, so that a rekey or a root rotation done
 * by another process is picked up). Unsealing by shares applies to roots sealed by split
 * knowledge (today the software root with a Shamir share set); any other root is served as it
 * was given (unsealed by its owner before start, or sealed and unsealed on the device).
 *
 * State machine (the root's, for a split-knowledge root):
 *   sealed --unseal (share k < M)--> sealed, k shares held
 *   sealed --unseal (share M; the quorum opens the root)--> unsealed
 *   sealed --unseal (share M; the quorum does not open it: forged / other ceremony)--> sealed, 0 held
 *   sealed --idle timeout--> sealed, 0 held
 *   unsealed --seal--> sealed (root and KEK cache wiped; with a root factory the root is reloaded
 *                      from the store, so after a root rotation the next quorum unseals the NEW root)
 *   any --seal, status or unseal, once the store's root was destroyed--> sealed for good: shares
 *                      are refused ("no root"); stop the agent
 *   any --close()--> stopped (root and KEK cache wiped, socket removed)
 *
 * Invariants:
 *  - key operations (data keys, create, rotate, the lifecycle of versions) are refused with KeystoreSealedError while
 *    sealed; metadata (getKey, listKeys) is served either way;
 *  - the quorum is always checked against the sealed root in the key store as it is NOW: when the
 *    store was rekeyed (or its root rotated) since this process loaded it, a sealed agent reloads
 *    it (dropping any shares held), so old shares never unseal a running agent after a rekey, and
 *    an agent never unseals a root that was rotated away or destroyed;
 *  - nothing secret is logged: the log names share indices and counts, never a share or a key.
 *
 * Hostile local clients (_connection.ts): a maximum request line, a maximum of pipelined requests
 * per connection with backpressure, a maximum of connections (the one waiting longest on its client
 * is evicted), an idle timeout, and a deadline for finishing a line or reading a reply.
 *
 * Access control is the file system's: the socket is mode 0600 (keep it in a 0700 directory), so
 * only the user the agent runs as can connect. Anyone who can connect while the agent is unsealed
 * can use every key; seal when in doubt.
 */
import { chmod, lstat, readFile, unlink } from 'node:fs/promises';
import { url as inspectorUrl } from 'node:inspector';
import { type AddressInfo, createConnection, createServer, type Server, type Socket } from 'node:net';
import { createServer as createTlsServer, type Server as TlsServer, type TLSSocket } from 'node:tls';
import {
  AgentError,
  type AuditOption,
  decodeSealedRoot,
  type EncryptionContext,
  type KeyExpectation,
  type KeyStore,
  KeyStoreError,
  type PolicyOption,
  KeystoreSealedError,
  Keywarden,
  recordAudit,
  redactSecrets,
  ROOT_META_NAME,
  ROOT_MISSING_MESSAGE,
  ROOT_TOMBSTONE_META_NAME,
  RootMissingError,
  type RootOfTrust,
  SoftwareRoot,
  type UnsealMethod,
  UnsupportedCapabilityError,
  wipe,
} from '@keywarden/core';
import {
  type HardwareSecretPurpose,
  UnsealSession,
  unsealSessionFor,
  unsealWithSession,
} from '@keywarden/split-knowledge';
import { AgentAuth, type AuthSession } from './_auth.js';
import { type AgentCheckpointOptions, AgentCheckpoints } from './_checkpoint.js';
import { Connection, type ConnectionLimits } from './_connection.js';
import { describeForLog, type SocketLocation, socketLocation, systemErrorText } from './_socket.js';
import {
  type AgentListenOptions,
  clientCertRefusal,
  peerCertificate,
  pemBuffer,
  principalFromCertificate,
  TLS_VERSION,
  tcpDisplay,
  tlsFailureText,
} from './_tls.js';
import {
  type AgentRequest,
  type AgentStatus,
  booleanArg,
  bytesArg,
  encodeLine,
  errorToWire,
  INTERNAL_ERROR,
  keyInfoToWire,
  MAX_REQUEST_BYTES,
  negotiateVersion,
  PROTOCOL_ERROR,
  ProtocolError,
  parseRequest,
  recordArg,
  stringArg,
  toBase64,
  type UnsealResult,
  versionArg,
} from './protocol.js';

export const DEFAULT_UNSEAL_TIMEOUT_SECONDS = 600;
/** Connections served at once; at the limit the one waiting longest on its client goes. */
export const DEFAULT_MAX_CONNECTIONS = 64;
/** A connection with nothing in progress is closed after this long (clients reconnect). */
export const DEFAULT_IDLE_TIMEOUT_SECONDS = 60;
/** A request line must be complete, and each reply read, within this long. */
export const DEFAULT_LINE_TIMEOUT_SECONDS = 10;
/** Complete requests waiting on one connection before the agent stops reading from it. */
export const MAX_PIPELINED = 16;
/** sun_path is 108 bytes on Linux, 104 on macOS, NUL included. */
const MAX_SOCKET_PATH_BYTES = process.platform === 'darwin' ? 103 : 107;

/** What the agent answers once the store's root was destroyed. */
export const NO_ROOT_MESSAGE = 'root: this key store has no root any more (it was destroyed); stop the agent';
const ROOT_DESTROYED_LOG = "the key store's root was destroyed: nothing can be unsealed any more; stop this agent";

export const DEFAULT_SEALED_MESSAGE =
  'keystore: sealed; unseal the root before using keys (the agent is sealed: unseal it with a quorum of shares)';

/** Loads the store's root (sealed or not). Called at start and, for a split-knowledge root, after every seal. */
export type RootFactory = (store: KeyStore) => Promise<RootOfTrust>;

export interface AgentServerOptions {
  /** The unix socket to listen on: a path, or a path and how to show it in messages. */
  socket: string | SocketLocation;
  /** An opened key store. Closed by close() only with `ownsStore`. */
  store: KeyStore;
  /**
   * The root: an opened root (served as it is; closed by close() only with `ownsRoot`), or a
   * factory that loads the store's root (the agent owns and closes every root it loads, and loads
   * it again after each seal so that a rekey or root rotation is picked up).
   */
  root: RootOfTrust | RootFactory;
  /** close() also closes the store. Default false: whoever opened it closes it. */
  ownsStore?: boolean;
  /** close() also closes a root passed in as an object. Default false. */
  ownsRoot?: boolean;
  /** Idle time after the last accepted share before the shares held are wiped. Default 600 s. */
  unsealTimeoutMs?: number;
  /**
   * A device root (PKCS#11, TPM) whose user PIN / auth value was split M-of-N: the share set the
   * agent collects on `unseal`. The quorum is combined in memory (the verifier refuses forged or
   * foreign shares before the device sees anything), the root unsealed with it, the secret wiped.
   */
  secretShares?: SecretShareSet;
  /**
   * Where the device's share set is read again before each unseal and status (the store's record
   * of it): a rekey of the device secret while the agent runs is followed without a restart (the
   * shares held of the previous set are discarded). Without it, `secretShares` stays as given.
   */
  readSecretShares?: () => Promise<SecretShareSet | undefined>;
  /** The agent's log: one line, no newline, nothing secret. Default: no log. */
  log?: (line: string) => void;
  /** Client limits (defaults: DEFAULT_MAX_CONNECTIONS, DEFAULT_IDLE_TIMEOUT_SECONDS, DEFAULT_LINE_TIMEOUT_SECONDS). */
  maxConnections?: number;
  idleTimeoutMs?: number;
  lineTimeoutMs?: number;
  /** The message of the KeystoreSealedError clients get while the agent is sealed (say how to unseal it). */
  sealedMessage?: string;
  /**
   * Development only: serve even though a Node inspector is active in this process (started with
   * --inspect). Without it the agent refuses to start: anyone who can reach the inspector's port
   * can run code inside the process that holds the root.
   */
  allowInspector?: boolean;
  /**
   * Serve authenticated principals only (docs/agent-protocol.md §Authentication): each connection
   * presents a principal's credential in its hello, and that principal's policy (the key store's)
   * decides every request. Default false: anyone who can open the socket may use every key.
   */
  authenticate?: boolean;
  /** Record every operation (docs/audit.md). Default with `authenticate`: into the key store. */
  audit?: AuditOption;
  /** The policy to enforce. Default with `authenticate`: the key store's ("store"). */
  policy?: PolicyOption;
  /**
   * Also listen on TCP for remote clients, mutual TLS 1.3 only (docs/agent-protocol.md §1.1): each
   * client presents a certificate from `tls.clientCa`, which names its principal. Turns
   * `authenticate` on (refused with `authenticate: false`): a network listener never serves
   * anonymous clients, and unix-socket clients then present tokens too.
   */
  listen?: AgentListenOptions;
  /**
   * Sign the audit chain's head periodically, before a seal and on close (docs/agent-protocol.md
   * §6, _checkpoint.ts). Turns the audit log on (into the key store) when `audit` is not given.
   */
  checkpoint?: AgentCheckpointOptions;
}

/** The share set of a device root's PIN / auth value (not secret). */
export interface SecretShareSet {
  shareSetId: string;
  threshold: number;
  shares: number;
  purpose: HardwareSecretPurpose;
  commitments?: readonly string[];
}

interface Settings {
  secretShares: SecretShareSet | undefined;
  readSecretShares: (() => Promise<SecretShareSet | undefined>) | undefined;
  unsealTimeoutMs: number;
  log: (line: string) => void;
  sealedMessage: string;
  allowInspector: boolean;
  ownsStore: boolean;
  ownsRoot: boolean;
  factory: RootFactory | undefined;
}

export class AgentServer {
  readonly socket: SocketLocation;
  readonly #store: KeyStore;
  readonly #settings: Settings;
  readonly #clients = new Set<Connection>();
  /** Every open socket, including those closed from the agent's side and lingering: close() ends them all. */
  readonly #sockets = new Set<Socket>();
  readonly #limits: ConnectionLimits & { maxConnections: number };
  #evictions = 0;
  #evictionLoggedAt = 0;
  #server: Server | undefined;
  #tlsServer: TlsServer | undefined;
  #tcpAddress: { host: string; port: number; display: string } | undefined;
  #root: RootOfTrust;
  #kw: Keywarden;
  readonly #auth: AgentAuth;
  readonly #checkpoints: AgentCheckpoints | undefined;
  #session: UnsealSession | undefined;
  /** The store's unseal description when it differs from the loaded root's (rekeyed while unsealed). */
  #storedUnseal: UnsealMethod | undefined;
  #expiryTimer: ReturnType<typeof setTimeout> | undefined;
  /** Serializes state changes (unseal, seal, reload) so a quorum is never combined twice. */
  #lock: Promise<unknown> = Promise.resolve();
  #closed = false;

  private constructor(socket: SocketLocation, store: KeyStore, root: RootOfTrust, options: AgentServerOptions) {
    this.socket = socket;
    this.#store = store;
    this.#root = root;
    this.#auth = new AgentAuth(store, {
      ...options,
      authenticate: options.authenticate ?? (options.listen !== undefined ? true : undefined),
      // Checkpoints sign the log's head: there must be a log.
      audit: options.audit ?? (options.checkpoint ? {} : undefined),
    });
    this.#kw = new Keywarden({ store, root, ...this.#auth.keywardenOptions(store, root) });
    const auditLog = this.#auth.auditLog;
    this.#checkpoints =
      options.checkpoint && auditLog
        ? new AgentCheckpoints(options.checkpoint, auditLog, scrubbedLog(options.log))
        : undefined;
    const factory = typeof options.root === 'function' ? options.root : undefined;
    this.#settings = {
      secretShares: options.secretShares,
      readSecretShares: options.readSecretShares,
      unsealTimeoutMs: options.unsealTimeoutMs ?? DEFAULT_UNSEAL_TIMEOUT_SECONDS * 1000,
      log: scrubbedLog(options.log),
      sealedMessage: options.sealedMessage ?? DEFAULT_SEALED_MESSAGE,
      allowInspector: options.allowInspector === true,
      ownsStore: options.ownsStore === true,
      ownsRoot: factory !== undefined || options.ownsRoot === true,
      factory,
    };
    this.#limits = {
      maxConnections: options.maxConnections ?? DEFAULT_MAX_CONNECTIONS,
      idleTimeoutMs: options.idleTimeoutMs ?? DEFAULT_IDLE_TIMEOUT_SECONDS * 1000,
      lineTimeoutMs: options.lineTimeoutMs ?? DEFAULT_LINE_TIMEOUT_SECONDS * 1000,
      maxLineBytes: MAX_REQUEST_BYTES,
      maxPipelined: MAX_PIPELINED,
    };
  }

  /**
   * Load the root and listen on the socket. Refuses (AgentError) an active inspector, a socket on
   * which a live agent answers, and a path that is something else than a socket; removes a stale
   * socket file (left by an agent that was killed). On failure the store and a root it loaded are
   * closed as they would be by close().
   */
  static async start(options: AgentServerOptions): Promise<AgentServer> {
    checkOptions(options);
    const socket = socketLocation(options.socket);
    const log = scrubbedLog(options.log);
    const ownsStore = options.ownsStore === true;
    let agent: AgentServer | undefined;
    let root: RootOfTrust | undefined;
    try {
      refuseInspector(options.allowInspector === true, log);
      checkSocketPathLength(socket);
      if (await clearStaleSocket(socket)) {
        log(`removed a stale socket file ${socket.display} (no agent answered on it)`);
      }
      root = typeof options.root === 'function' ? await options.root(options.store) : options.root;
      agent = new AgentServer(socket, options.store, root, options);
      const core = await coreDumpLimit();
      if (core !== undefined && core !== '0') {
        log(
          `warning: core dumps are enabled (RLIMIT_CORE ${core}): a crash would write the unsealed root to disk; run the agent with \`ulimit -c 0\` or systemd LimitCORE=0 (docs/threat-model.md)`,
        );
      }
      await agent.#listen();
      if (options.listen) await agent.#listenTls(options.listen);
      const started = agent;
      started.#checkpoints?.start(() => void started.#checkpoint('periodic'));
      // Again, now that an embedding process has long had the chance to make SIGUSR1 harmless: a
      // SIGUSR1 that came before may have started the inspector a moment after the first check.
      refuseInspector(options.allowInspector === true, log);
      return agent;
    } catch (err) {
      if (agent) await agent.close().catch(() => {});
      else {
        if (root && typeof options.root === 'function') await root.close().catch(() => {});
        if (ownsStore) await options.store.close().catch(() => {});
      }
      throw err;
    }
  }

  /** Where the TLS listener is bound (the port chosen when 0 was asked for), or undefined. */
  get tcpAddress(): { host: string; port: number; display: string } | undefined {
    return this.#tcpAddress ? { ...this.#tcpAddress } : undefined;
  }

  /**
   * Drop the KEK cache: KEK versions are read from the store again on next use. For a store other
   * processes change (a fleet on PostgreSQL), call it on the store's change notifications —
   * `invalidateCachesOnChange(store, agent)` from @keywarden/store-postgres — so that a version
   * disabled or compromised elsewhere stops working here at once, not when its cache entry expires.
   */
  clearCache(): void {
    this.#kw.clearCache();
  }

  /** The root being served (it changes after a seal when the agent loads roots itself). */
  get root(): RootOfTrust {
    return this.#root;
  }

  /** A device root: take the share set the store names now (rekeyed while this agent ran). */
  async #followDeviceShares(): Promise<void> {
    const read = this.#settings.readSecretShares;
    const held = this.#settings.secretShares;
    if (!read || !held) return;
    const now = await read();
    if (!now || now.shareSetId === held.shareSetId) return;
    this.#settings.secretShares = now;
    const discarded = this.#session?.progress().accepted ?? 0;
    this.#session?.reset();
    this.#session = undefined;
    this.#settings.log(
      `the ${now.purpose === 'tpm-auth' ? 'TPM auth value' : 'user PIN'} was rekeyed: share set ${now.shareSetId}, ${now.threshold} of ${now.shares}${discarded ? ` (${discarded} share${discarded === 1 ? '' : 's'} of share set ${held.shareSetId} discarded)` : ''}`,
    );
  }

  /** Whether key operations are refused until an unseal. */
  isSealed(): boolean {
    return this.#root.sealable?.isSealed() ?? false;
  }

  /** The non-secret description of what the next unseal needs. */
  describeSealed(): string {
    const u = this.#shamirRoot()?.document.unseal;
    if (u?.method === 'shamir') return `${u.threshold} of ${u.shares} shares of share set ${u.shareSetId}`;
    const d = this.#settings.secretShares;
    if (d) return `${d.threshold} of ${d.shares} shares of share set ${d.shareSetId} (${d.purpose})`;
    const s = this.#root.sealable?.unsealSecret();
    return s ? s.label : `a ${this.#root.describe().kind} root that is not unsealed through the agent`;
  }

  /** Stop: close the socket and every connection, wipe the shares held and the KEK cache, close what it owns. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const server = this.#server;
    const closed = server ? new Promise<void>((resolve) => server.close(() => resolve())) : Promise.resolve();
    const tlsServer = this.#tlsServer;
    const tlsClosed = tlsServer ? new Promise<void>((resolve) => tlsServer.close(() => resolve())) : Promise.resolve();
    for (const c of [...this.#clients]) c.drop(undefined);
    for (const s of this.#sockets) s.destroy();
    await closed;
    await tlsClosed;
    // Clean shutdown: what was recorded since the last checkpoint is signed before the root goes.
    if (this.#checkpoints) {
      await this.#exclusive(() => this.#checkpointNow('shutdown')).catch(() => {});
      await this.#checkpoints.close();
    }
    if (this.#expiryTimer !== undefined) clearTimeout(this.#expiryTimer);
    this.#session?.reset();
    this.#session = undefined;
    await this.#kw.close().catch(() => {});
    await this.#auth.close().catch(() => {});
    try {
      if (this.#settings.ownsRoot) await this.#root.close().catch(() => {});
    } finally {
      if (this.#settings.ownsStore) await this.#store.close().catch(() => {});
    }
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
            ? new AgentError(`agent: another agent started on ${this.socket.display} at the same time`)
            : new AgentError(`agent: cannot listen on ${this.socket.display}: ${systemErrorText(err)}`, { cause: err }),
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
    server.on('error', (err) => this.#settings.log(`socket error: ${systemErrorText(err)}`));
    await chmod(this.socket.path, 0o600);
  }

  /**
   * The TCP listener: TLS 1.3 only, a client certificate from the client CA required. OpenSSL
   * verifies the certificate against the client CA in the handshake (requestCert); the agent then
   * admits only a connection whose verification succeeded (`authorized`) and whose certificate
   * names a principal, before reading a byte of the protocol. It does this itself instead of Node's
   * `rejectUnauthorized`, which destroys the socket without a word: the client could not tell an
   * expired certificate from a dead agent, and a failover client (failover.ts) would then try every
   * agent in turn. A refused client gets one KW_DENIED line saying why, then the connection is
   * closed. The key is copied into the TLS context and the copy made here is wiped.
   */
  async #listenTls(listen: AgentListenOptions): Promise<void> {
    const from = listen.tls.principalFrom ?? 'uri';
    const key = pemBuffer(listen.tls.key, 'key');
    let server: TlsServer;
    try {
      server = createTlsServer(
        {
          cert: pemBuffer(listen.tls.cert, 'cert'),
          key,
          ca: pemBuffer(listen.tls.clientCa, 'clientCa'),
          requestCert: true,
          // Enforced in the connection handler below (the same OpenSSL verdict, with a reason).
          rejectUnauthorized: false,
          minVersion: TLS_VERSION,
          maxVersion: TLS_VERSION,
          // A connection that never finishes its handshake is not yet counted against
          // maxConnections: bound how long it may hold a socket.
          handshakeTimeout: this.#limits.lineTimeoutMs,
        },
        (conn) =>
          this.#serve(
            conn,
            conn.authorized
              ? principalFromCertificate(peerCertificate(conn), from)
              : { refused: clientCertRefusal(conn) },
          ),
      );
    } catch (err) {
      throw new AgentError(
        `agent: the TLS certificate, key or client CA is not usable (${describeForLog(err).replace(/^error:\S+:/, '')})`,
      );
    } finally {
      key.fill(0);
    }
    server.on('tlsClientError', (err, conn: TLSSocket) => {
      const why = tlsFailureText(err) ?? systemErrorText(err);
      this.#settings.log(`refused a TLS client from ${peerAddress(conn)}: ${why}`);
    });
    const display = tcpDisplay(listen.host, listen.port);
    await new Promise<void>((resolve, reject) => {
      const onError = (err: NodeJS.ErrnoException) => {
        reject(new AgentError(`agent: cannot listen on ${display}: ${systemErrorText(err)}`, { cause: err }));
      };
      server.once('error', onError);
      server.listen({ host: listen.host, port: listen.port }, () => {
        server.off('error', onError);
        resolve();
      });
    });
    this.#tlsServer = server;
    server.on('error', (err) => this.#settings.log(`TLS listener error: ${systemErrorText(err)}`));
    const port = (server.address() as AddressInfo).port;
    this.#tcpAddress = { host: listen.host, port, display: tcpDisplay(listen.host, port) };
    this.#settings.log(
      `listening on ${this.#tcpAddress.display} (mutual TLS 1.3; principals from client certificates ${from === 'uri' ? 'URI SAN keywarden:principal:NAME' : 'subject CN'})`,
    );
  }

  /**
   * Admit a connection. At the connection limit, the connection that has waited longest on its
   * client (an unfinished line, unread replies, or nothing at all) is closed to make room, so
   * clients that hold connections open cannot lock `status` and `seal` out; only when every
   * connection is in the middle of an answer is the newcomer refused.
   */
  #serve(conn: Socket, tls?: { principal: string } | { refused: string }): void {
    conn.on('error', () => {}); // a client that went away: nothing to do
    this.#sockets.add(conn);
    conn.on('close', () => this.#sockets.delete(conn));
    if (this.#closed) {
      conn.destroy();
      return;
    }
    if (tls && 'refused' in tls) {
      // A certificate from the client CA that names no principal: say so, then close.
      this.#settings.log(`refused a TLS client from ${peerAddress(conn)}: ${tls.refused.replace(/^agent: /, '')}`);
      conn.end(encodeLine({ id: null, ok: false, error: { code: 'KW_DENIED', message: tls.refused } }));
      setTimeout(() => conn.destroy(), 2000).unref();
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
    const session: AuthSession = this.#auth.session(() => client.drop(undefined), tls?.principal);
    const client: Connection = new Connection(
      conn,
      this.#limits,
      (line) => this.#answer(line, session),
      () => {
        this.#clients.delete(client);
        this.#auth.end(session);
      },
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
    this.#settings.log(
      `connection limit (${this.#limits.maxConnections}) reached: closed ${this.#evictions} connection(s) that waited longest on their client`,
    );
    this.#evictions = 0;
    this.#evictionLoggedAt = now;
  }

  /** One request line in, one response line out. Never throws. */
  async #answer(line: Buffer, session: AuthSession): Promise<string> {
    let req: AgentRequest | undefined;
    try {
      req = parseRequest(line);
      const result = await this.#dispatch(req, session);
      return encodeLine({ id: req.id, ok: true, result });
    } catch (err) {
      const wire = errorToWire(err);
      if (wire.code === INTERNAL_ERROR) this.#settings.log(`internal error: ${describeForLog(err)}`);
      const id = req?.id ?? (err instanceof ProtocolError ? err.requestId : null);
      return encodeLine({ id, ok: false, error: wire });
    } finally {
      line.fill(0);
    }
  }

  // ── Operations ────────────────────────────────────────────────────────────────────────────────

  async #dispatch(req: AgentRequest, session: AuthSession): Promise<unknown> {
    // The agent's Keywarden, or (authenticate) a view of it acting as the connection's principal.
    const acting = await this.#auth.acting(req, session, this.#kw);
    switch (req.op) {
      case 'hello':
        return this.#auth.hello(req, session, negotiateVersion(req));
      case 'status':
        return this.#exclusive(() => this.#status());
      case 'unseal':
        return this.#exclusive(() => this.#unseal(stringArg(req, 'share')));
      case 'seal':
        return this.#exclusive(() => this.#seal(acting));
      case 'generateDataKey': {
        const key = stringArg(req, 'key');
        const context = recordArg(req, 'context') as EncryptionContext | undefined;
        const kw = this.#unsealed(acting);
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
        const plaintext = await this.#unsealed(acting).decryptDataKey(wrapped, context, expected);
        try {
          return { plaintext: toBase64(plaintext) };
        } finally {
          wipe(plaintext);
        }
      }
      case 'createKey': {
        const name = stringArg(req, 'name');
        const scope = recordArg(req, 'scope') ?? {};
        return keyInfoToWire(await this.#unsealed(acting).createKey(name, { scope }));
      }
      case 'rotateKey':
        return keyInfoToWire(await this.#unsealed(acting).rotateKey(stringArg(req, 'key')));
      // Lifecycle of KEK versions: the library's rules (docs/lifecycle.md), the caller's policy
      // (disable, compromise, destroy) and audit through `acting`, like every other key operation.
      case 'disableVersion': {
        const confirmLastVersion = booleanArg(req, 'confirmLastVersion');
        return keyInfoToWire(
          await this.#unsealed(acting).disableVersion(stringArg(req, 'key'), versionArg(req, 'version'), {
            ...(confirmLastVersion !== undefined ? { confirmLastVersion } : {}),
          }),
        );
      }
      case 'enableVersion':
        return keyInfoToWire(
          await this.#unsealed(acting).enableVersion(stringArg(req, 'key'), versionArg(req, 'version')),
        );
      case 'compromiseVersion': {
        const rotate = booleanArg(req, 'rotate');
        const r = await this.#unsealed(acting).compromiseVersion(stringArg(req, 'key'), versionArg(req, 'version'), {
          ...(rotate !== undefined ? { rotate } : {}),
        });
        return {
          key: keyInfoToWire(r.key),
          compromisedVersion: r.compromisedVersion,
          rotatedTo: r.rotatedTo ?? null,
          unreadableVersions: r.unreadableVersions,
          rewrapVersions: r.rewrapVersions,
        };
      }
      case 'destroyVersion': {
        const force = booleanArg(req, 'force');
        const confirmLastVersion = booleanArg(req, 'confirmLastVersion');
        return keyInfoToWire(
          await this.#unsealed(acting).destroyVersion(stringArg(req, 'key'), versionArg(req, 'version'), {
            ...(force !== undefined ? { force } : {}),
            ...(confirmLastVersion !== undefined ? { confirmLastVersion } : {}),
          }),
        );
      }
      case 'getKey':
        return keyInfoToWire(await acting.getKey(stringArg(req, 'key')));
      case 'listKeys':
        return (await acting.listKeys()).map(keyInfoToWire);
    }
  }

  /** The root when it is unsealed by a quorum of shares (split knowledge), else undefined. */
  #shamirRoot(): SoftwareRoot | undefined {
    const r = this.#root;
    return r instanceof SoftwareRoot && r.document.unseal.method === 'shamir' ? r : undefined;
  }

  #unsealed(kw: Keywarden = this.#kw): Keywarden {
    if (this.isSealed()) throw new KeystoreSealedError(this.#settings.sealedMessage);
    return kw;
  }

  async #status(): Promise<AgentStatus> {
    await this.#followStore();
    const sk = this.#shamirRoot();
    const u = this.#storedUnseal ?? sk?.document.unseal;
    const p = this.#session?.progress();
    const d = sk ? undefined : this.#settings.secretShares;
    return {
      sealed: this.isSealed(),
      rootId: sk ? sk.document.rootId : this.#root.describe().id,
      shareSetId: u?.method === 'shamir' ? u.shareSetId : (d?.shareSetId ?? ''),
      threshold: u?.method === 'shamir' ? u.threshold : (d?.threshold ?? 0),
      shares: u?.method === 'shamir' ? u.shares : (d?.shares ?? 0),
      accepted: p?.accepted ?? 0,
      indices: p?.indices ?? [],
      reset: p?.reset ?? false,
      unsealTimeoutSeconds: this.#settings.unsealTimeoutMs / 1000,
      pid: process.pid,
    };
  }

  async #unseal(share: string): Promise<UnsealResult> {
    await this.#followStore();
    const sk = this.#shamirRoot();
    const u = sk?.document.unseal;
    const device = sk || !this.#root.sealable ? undefined : this.#settings.secretShares;
    const threshold = u?.method === 'shamir' ? u.threshold : (device?.threshold ?? 0);
    const shares = u?.method === 'shamir' ? u.shares : (device?.shares ?? 0);
    if (!this.isSealed()) {
      return { sealed: false, accepted: 0, threshold, shares, indices: [], reset: false, alreadyUnsealed: true };
    }
    if (!sk && !device) {
      throw new UnsupportedCapabilityError(
        `agent: the ${this.#root.describe().kind} root this agent serves is not unsealed by a quorum of shares`,
      );
    }
    // The last moment before a share, then the root, is in this process's memory.
    try {
      refuseInspector(this.#settings.allowInspector, this.#settings.log);
    } catch (err) {
      this.#settings.log(`share refused: ${describeForLog(err)}`);
      throw err;
    }
    this.#session ??= sk
      ? unsealSessionFor(sk, { timeoutMs: this.#settings.unsealTimeoutMs })
      : new UnsealSession({ expected: device as SecretShareSet, timeoutMs: this.#settings.unsealTimeoutMs });
    const before = new Set(this.#session.progress().indices);
    let p: ReturnType<UnsealSession['submit']>;
    try {
      p = this.#session.submit(share);
    } catch (err) {
      this.#settings.log(
        `share refused (${this.#session.progress().accepted} of ${threshold} held): ${describeForLog(err)}`,
      );
      throw err;
    }
    const added = p.indices.find((i) => !before.has(i));
    this.#settings.log(
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
      if (sk) await unsealWithSession(sk, this.#session);
      else {
        // A device root: the PIN / auth value exists only here, between the combine and the wipe.
        const secret = await this.#session.takeSecret();
        try {
          await this.#root.sealable?.unseal(secret);
        } finally {
          wipe(secret);
        }
      }
    } catch (err) {
      this.#settings.log(`unseal failed, shares discarded: ${describeForLog(err)}`);
      throw err;
    }
    this.#settings.log('unsealed');
    await recordAudit(this.#kw, { op: 'unseal', principal: 'custodians', outcome: 'ok' }).catch(() => {});
    return { sealed: false, ...result };
  }

  async #seal(acting: Keywarden = this.#kw): Promise<{ sealed: true }> {
    if (!this.#root.sealable) {
      this.#kw.clearCache();
      throw new UnsupportedCapabilityError(
        `agent: the ${this.#root.describe().kind} root this agent serves cannot be sealed (the KEK cache was wiped)`,
      );
    }
    // Recorded as the principal that asked (the same Keywarden, acting as it). The audit key is
    // loaded first: an agent whose first audited request is a seal could not record it after.
    if (!this.isSealed()) {
      await this.#auth.prepareSeal();
      // What was recorded while unsealed is signed before the root goes (the seal record itself is
      // covered by the first checkpoint after the next unseal).
      await this.#checkpointNow('seal');
      await this.#checkpoints?.drop();
    }
    await acting.seal();
    this.#session?.reset();
    this.#session = undefined;
    const sk = this.#shamirRoot();
    if (sk && !(await this.#store.getMeta(ROOT_META_NAME))) {
      this.#settings.log(`sealed: the root and the KEK cache were wiped; ${ROOT_DESTROYED_LOG}`);
      return { sealed: true };
    }
    if (!this.#settings.factory) {
      this.#settings.log('sealed: the root and the KEK cache were wiped');
      return { sealed: true };
    }
    // Load the root again: if the store was rekeyed while unsealed, the next unseal needs the new
    // set; if its root was rotated, the next quorum unseals the new root.
    const before = this.#root.describe().id;
    await this.#reload();
    const after = this.#root.describe().id;
    this.#settings.log(
      `sealed: the root and the KEK cache were wiped${after !== before ? `; the key store's root was rotated (now ${after}): unseal it again with a quorum` : ''}`,
    );
    return { sealed: true };
  }

  /**
   * Split knowledge: compare the loaded root with the sealed root in the store. A sealed agent
   * whose store was rekeyed (or replaced) reloads it and drops the shares it held; an unsealed one
   * keeps its root (a rekey does not change the root key) and picks the new document up when it
   * next seals.
   */
  async #followStore(): Promise<void> {
    const sk = this.#shamirRoot();
    if (!sk) return this.#followDeviceShares();
    const bytes = await this.#store.getMeta(ROOT_META_NAME);
    if (!bytes) {
      // The root was destroyed: wipe what this agent still holds and never collect shares again.
      const held = this.#session?.progress().accepted ?? 0;
      this.#session?.reset();
      this.#session = undefined;
      if (!sk.isSealed() || held > 0) {
        await this.#kw.seal();
        this.#settings.log(`sealed: ${ROOT_DESTROYED_LOG}`);
      }
      // Destroyed only if the store says so (its tombstone); otherwise it is damaged, not destroyed.
      if (!(await this.#store.getMeta(ROOT_TOMBSTONE_META_NAME))) {
        throw new RootMissingError(`${ROOT_MISSING_MESSAGE}; stop the agent`);
      }
      throw new KeyStoreError(NO_ROOT_MESSAGE);
    }
    const stored = decodeSealedRoot(bytes);
    const loaded = sk.document;
    if (
      stored.rootId === loaded.rootId &&
      stored.nonce === loaded.nonce &&
      stored.wrappedRoot === loaded.wrappedRoot &&
      JSON.stringify(stored.unseal) === JSON.stringify(loaded.unseal)
    ) {
      this.#storedUnseal = undefined;
      return;
    }
    if (!sk.isSealed() || !this.#settings.factory) {
      // Unsealed: picked up at the next seal. A root given as an object is never replaced.
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
    this.#settings.log(
      `${what}; now expecting ${this.describeSealed()}${held > 0 ? ` (${held} shares held were discarded)` : ''}`,
    );
  }

  /** Load the store's root again through the factory; the old one (sealed) is closed. */
  async #reload(): Promise<void> {
    const factory = this.#settings.factory;
    if (!factory) return;
    const root = await factory(this.#store);
    // The old Keywarden is sealed and its cache wiped; it is dropped without closing the shared store.
    this.#kw.clearCache();
    await this.#root.close();
    this.#root = root;
    this.#kw = new Keywarden({ store: this.#store, root, ...this.#auth.keywardenOptions(this.#store, root) });
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
        this.#settings.log(
          `unseal progress discarded: no new share within ${this.#settings.unsealTimeoutMs / 1000} s (0 of ${p.threshold} held)`,
        );
      }
    }, this.#settings.unsealTimeoutMs + 50);
    this.#expiryTimer.unref?.();
  }

  /** A periodic checkpoint, serialized with unseal and seal (it must not sign across a seal). */
  #checkpoint(why: string): Promise<void> {
    if (this.#closed) return Promise.resolve();
    return this.#exclusive(() => this.#checkpointNow(why)).catch(() => {});
  }

  /** Inside #exclusive: sign the head now when records are pending and the root is unsealed. */
  async #checkpointNow(why: string): Promise<void> {
    await this.#checkpoints?.checkpoint(this.#kw, this.isSealed(), why);
  }

  #exclusive<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#lock.then(fn, fn);
    this.#lock = run.catch(() => {});
    return run;
  }
}

/** `address:port` of a TCP peer, for the log. */
function peerAddress(conn: Socket): string {
  const a = conn.remoteAddress;
  if (a === undefined) return 'an unknown address';
  return `${a.includes(':') ? `[${a}]` : a}:${conn.remotePort ?? '?'}`;
}

/** The agent's log passes through core's redactor: a secret in an error message never reaches it. */
function scrubbedLog(log: ((line: string) => void) | undefined): (line: string) => void {
  return log ? (line) => log(redactSecrets(line)) : () => {};
}

function checkOptions(options: AgentServerOptions): void {
  if (typeof options !== 'object' || options === null) throw new AgentError('agent: options are required');
  if (!options.store || typeof options.store.getMeta !== 'function') {
    throw new AgentError('agent: option "store" must be an opened KeyStore');
  }
  if (!options.root || (typeof options.root !== 'function' && typeof options.root !== 'object')) {
    throw new AgentError('agent: option "root" must be a RootOfTrust or a function that loads one');
  }
  for (const [name, v] of [
    ['unsealTimeoutMs', options.unsealTimeoutMs],
    ['idleTimeoutMs', options.idleTimeoutMs],
    ['lineTimeoutMs', options.lineTimeoutMs],
    ['maxConnections', options.maxConnections],
  ] as const) {
    if (v !== undefined && !(Number.isSafeInteger(v) && v > 0 && v <= 2 ** 31 - 1)) {
      throw new AgentError(`agent: option "${name}" must be a positive integer`);
    }
  }
  const cp = options.checkpoint;
  if (cp !== undefined) {
    if (typeof cp !== 'object' || cp === null || typeof cp.open !== 'function') {
      throw new AgentError('agent: option "checkpoint" needs open (a function making the checkpoint writer)');
    }
    if (!(Number.isSafeInteger(cp.intervalMs) && cp.intervalMs >= 100 && cp.intervalMs <= 2 ** 31 - 1)) {
      throw new AgentError('agent: option "checkpoint.intervalMs" must be an integer from 100 to 2147483647');
    }
  }
  const l = options.listen;
  if (l !== undefined) {
    if (typeof l !== 'object' || l === null || typeof l.host !== 'string' || l.host === '') {
      throw new AgentError('agent: option "listen" needs a host');
    }
    if (!(Number.isSafeInteger(l.port) && l.port >= 0 && l.port <= 65535)) {
      throw new AgentError('agent: option "listen.port" must be an integer from 0 to 65535');
    }
    if (typeof l.tls !== 'object' || l.tls === null || !l.tls.cert || !l.tls.key || !l.tls.clientCa) {
      throw new AgentError('agent: option "listen.tls" needs cert, key and clientCa (mutual TLS is required on TCP)');
    }
    if (l.tls.principalFrom !== undefined && l.tls.principalFrom !== 'uri' && l.tls.principalFrom !== 'cn') {
      throw new AgentError('agent: option "listen.tls.principalFrom" must be "uri" or "cn"');
    }
    if (options.authenticate === false) {
      throw new AgentError(
        'agent: a TCP listener serves authenticated principals only; leave "authenticate" unset or true',
      );
    }
  }
}

// ── Debuggers ───────────────────────────────────────────────────────────────────────────────────

/**
 * Refuse to run with an active Node inspector (--inspect, or a SIGUSR1 that came before the
 * embedding process made the signal harmless): it is an unauthenticated debugger on a local port,
 * and whoever reaches it runs code inside the process that holds the root.
 */
function refuseInspector(allow: boolean, log: (line: string) => void): void {
  const url = inspectorUrl();
  if (url === undefined) return;
  if (allow) {
    log(`WARNING: a Node inspector is active (${url}); anyone who can reach it controls this agent`);
    return;
  }
  throw new AgentError(
    `agent: a Node inspector (debugger) is active in this process (${url}); refusing to hold the root. Start the agent without --inspect, or allow it explicitly (development only: --allow-inspector, allowInspector)`,
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
    throw new AgentError(
      `agent: socket path ${socket.display} is too long for a unix socket (${n} bytes, at most ${MAX_SOCKET_PATH_BYTES}); use a shorter path`,
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
    throw new AgentError(`agent: cannot use ${socket.display}: ${systemErrorText(err)}`, { cause: err });
  }
  if (!isSocket) throw new AgentError(`agent: ${socket.display} exists and is not a socket; refusing to replace it`);
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
  if (live) throw new AgentError(`agent: another agent is already running on ${socket.display}`);
  await unlink(socket.path).catch((err: NodeJS.ErrnoException) => {
    if (err.code !== 'ENOENT')
      throw new AgentError(`agent: cannot remove the stale socket ${socket.display}: ${systemErrorText(err)}`);
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
