/**
 * The agent's side of authentication and per-principal policy (docs/agent-protocol.md
 * §Authentication). With `authenticate: true`:
 *  - a connection authenticates in its `hello` (args.credential, credentials.ts); until then it may
 *    only say hello, ask for status and present unseal shares (shares authenticate themselves);
 *  - every other request runs through the agent's Keywarden acting as the connection's principal
 *    (kw.as(principal)): its policy (the one stored in the key store) decides, and the audit log
 *    records who did what;
 *  - revoking a principal's credential cuts its open connections: the agent re-reads the
 *    credentials record every second and drops the connections whose credential is gone;
 *  - a mutual-TLS connection (server.ts, _tls.ts) is authenticated by its client certificate from
 *    the first byte: the certificate's principal replaces the token, a credential in its hello is
 *    refused, and revoking the principal (credentials.ts `revoked`) refuses its next request and
 *    cuts its open TLS connections in the same re-check.
 */
import {
  AccessDeniedError,
  AuditLog,
  type AuditOption,
  type KeyStore,
  type Keywarden,
  type PolicyOption,
  policyOf,
  type RootOfTrust,
} from '@keywarden/core';
import { checkAgentCredential, isPrincipalRevoked, readAgentCredentials } from './credentials.js';
import type { AgentRequest, HelloResult } from './protocol.js';

/** Requests a connection may make before it authenticates. */
const OPEN_OPS = new Set(['hello', 'status', 'unseal']);
const RECHECK_MS = 1000;

export interface AuthSession {
  principal?: string;
  /** The credential digest the session authenticated with (a re-issued credential cuts it too). */
  hash?: string;
  /** Authenticated by a client certificate (mutual TLS); `checked` once its revocation was looked up. */
  tls?: { checked: boolean };
  /** The agent Keywarden this session's view was made from, and the view. */
  base?: Keywarden;
  view?: Keywarden;
  drop: () => void;
}

export interface AuthOptions {
  authenticate?: boolean;
  audit?: AuditOption;
  policy?: PolicyOption;
}

export class AgentAuth {
  readonly enabled: boolean;
  readonly #store: KeyStore;
  readonly #sessions = new Set<AuthSession>();
  readonly #policy: PolicyOption | undefined;
  #audit: AuditLog | undefined;
  readonly #auditOption: AuditOption | undefined;
  readonly #ownsAudit: boolean;
  #serial = -1;
  #timer: ReturnType<typeof setInterval> | undefined;

  constructor(store: KeyStore, options: AuthOptions) {
    this.enabled = options.authenticate === true;
    this.#store = store;
    this.#policy = options.policy ?? (this.enabled ? 'store' : undefined);
    this.#auditOption = options.audit ?? (this.enabled ? {} : undefined);
    this.#ownsAudit = options.audit === undefined || !(options.audit instanceof AuditLog);
    if (this.enabled) {
      this.#timer = setInterval(() => void this.#recheck().catch(() => {}), RECHECK_MS);
      this.#timer.unref();
    }
  }

  /**
   * Options for the agent's Keywarden. One AuditLog for the agent's whole life (a reload makes a new
   * Keywarden, never a second chain).
   */
  keywardenOptions(
    store: KeyStore,
    root: RootOfTrust,
  ): { audit?: AuditLog; policy?: PolicyOption; principal?: string } {
    if (this.#auditOption !== undefined && this.#audit === undefined) {
      this.#audit =
        this.#auditOption instanceof AuditLog ? this.#auditOption : new AuditLog({ ...this.#auditOption, store, root });
    }
    return {
      ...(this.#audit ? { audit: this.#audit } : {}),
      ...(this.#policy !== undefined ? { policy: this.#policy } : {}),
      ...(this.#audit || this.#policy !== undefined ? { principal: 'agent' } : {}),
    };
  }

  /** The agent's audit log (made by the first keywardenOptions), if it has one. */
  get auditLog(): AuditLog | undefined {
    return this.#audit;
  }

  session(drop: () => void, tlsPrincipal?: string): AuthSession {
    const s: AuthSession =
      tlsPrincipal === undefined ? { drop } : { drop, principal: tlsPrincipal, tls: { checked: false } };
    this.#sessions.add(s);
    return s;
  }

  end(session: AuthSession): void {
    this.#sessions.delete(session);
  }

  /** `hello` with args.credential: authenticate the connection (AccessDeniedError when refused). */
  async hello(
    req: AgentRequest,
    session: AuthSession,
    result: HelloResult,
  ): Promise<HelloResult & { principal?: string }> {
    const credential = req.args.credential;
    if (session.tls) {
      if (credential !== undefined) {
        throw new AccessDeniedError(
          'agent: over mutual TLS the client certificate names the principal; send no credential',
        );
      }
      await this.#checkTls(session);
      return { ...result, principal: session.principal as string };
    }
    if (credential === undefined) return result;
    const doc = await readAgentCredentials(this.#store);
    session.principal = checkAgentCredential(doc, credential);
    session.hash = doc.principals[session.principal]?.hash;
    session.view = undefined;
    return { ...result, principal: session.principal };
  }

  /** The Keywarden a request runs through: the agent's, or a view acting as the session's principal. */
  async acting(req: AgentRequest, session: AuthSession, kw: Keywarden): Promise<Keywarden> {
    if (session.tls) await this.#checkTls(session);
    if (!this.enabled || OPEN_OPS.has(req.op)) return kw;
    if (session.principal === undefined) {
      throw new AccessDeniedError(
        "agent: this agent serves authenticated principals only; connect with a principal's credential (hello args.credential, KEYWARDEN_AGENT_TOKEN)",
      );
    }
    if (session.base !== kw || !session.view) {
      session.base = kw;
      session.view = kw.as(session.principal);
    }
    if (req.op === 'seal') {
      // Sealing the agent cuts every client off: an administrator's operation.
      const d = (await policyOf(session.view))?.decide(session.principal, 'administer', undefined);
      if (d && !d.allowed) throw new AccessDeniedError(`agent: seal: ${d.reason}`);
    }
    return session.view;
  }

  /** A TLS session's principal, looked up once: refused when revoked (later revocations: #recheck). */
  async #checkTls(session: AuthSession): Promise<void> {
    if (!session.tls || session.tls.checked) return;
    const doc = await readAgentCredentials(this.#store);
    if (isPrincipalRevoked(doc, session.principal as string)) {
      // Every request of this connection is refused the same way (the client closes it).
      throw new AccessDeniedError(`agent: the principal ${session.principal} was revoked`);
    }
    session.tls.checked = true;
  }

  /** Drop the connections whose credential was revoked or replaced since they authenticated. */
  async #recheck(): Promise<void> {
    const doc = await readAgentCredentials(this.#store);
    if (doc.serial === this.#serial) return;
    this.#serial = doc.serial;
    for (const s of this.#sessions) {
      if (s.tls) {
        if (isPrincipalRevoked(doc, s.principal as string)) {
          this.#sessions.delete(s);
          s.drop();
        }
        continue;
      }
      if (s.principal !== undefined && doc.principals[s.principal]?.hash !== s.hash) {
        this.#sessions.delete(s);
        s.drop();
      }
    }
  }

  /**
   * Load the audit key while the root is still unsealed, so that the record of a seal (written
   * just after the root is sealed) can be sealed into the chain. Failures surface on the record.
   */
  async prepareSeal(): Promise<void> {
    await this.#audit?.key().catch(() => {});
  }

  /** Check now (tests, and after the agent itself changed credentials). */
  recheck(): Promise<void> {
    return this.#recheck();
  }

  async close(): Promise<void> {
    if (this.#timer !== undefined) clearInterval(this.#timer);
    if (this.#ownsAudit) await this.#audit?.close();
    else await this.#audit?.flush();
  }
}
