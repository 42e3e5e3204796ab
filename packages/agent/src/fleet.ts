/**
 * Several agents on one key store (docs/fleet.md §Agents: failover and sealing): a client that
 * fails over between them, and sealing as an action across the fleet.
 *
 * AgentFleetClient sends each request to one agent (the last that answered, else the first
 * listed) and moves to the next when that agent is unreachable or dies. Whether a request is sent
 * again depends on what became of it (client.ts RequestFate):
 *
 *  - never sent (no connection, the hello failed): any op goes to the next agent; nothing happened;
 *  - answered KW_KEYSTORE_SEALED: the agent refused before doing anything; any op goes to the next;
 *  - sent, then the connection died or the answer timed out (the agent may have done it): only the
 *    ops in RETRIED_WHEN_LOST go to the next agent, because a second run changes nothing the
 *    caller can see:
 *      decryptDataKey  a pure function of its arguments: the same DEK comes back;
 *      generateDataKey the lost run's DEK and wrapped DEK never reached the caller, so nothing can
 *                      have been encrypted under them; the retry's fresh pair is the only one the
 *                      caller ever holds (the store is not written: data keys are not stored);
 *      getKey, listKeys, status  reads;
 *    createKey, rotateKey and the lifecycle ops (disableVersion, enableVersion, compromiseVersion,
 *    destroyVersion) write the store (a retry would answer KW_KEY_EXISTS for a key the lost run
 *    created, rotate twice, or answer KW_KEY_STATE for a version the lost run already changed), and
 *    unseal and seal change one agent's own state: these fail
 *    with an AgentError that says the outcome is unknown, and the caller decides (getKey tells).
 *
 * No request is answered twice: each is settled by exactly one agent connection's answer, its
 * error, or its timeout (a late answer to a timed-out request is ignored, client.ts), and a retry
 * starts only after that. An error an agent answered (other than sealed) is the answer: it is not
 * retried, since every agent serves the same store and would say the same. A refusal of this
 * client itself (a certificate or token not accepted, no protocol version in common) is not a dead
 * agent either: it is thrown at once rather than tried on every agent.
 */
import {
  AccessDeniedError,
  AgentError,
  AgentProtocolError,
  AgentUnavailableError,
  AgentVersionError,
  KeywardenError,
} from '@keywarden/core';
import { type AgentEndpoint, AgentClient, type AgentClientOptions, AgentOperations, isTcp } from './client.js';
import type { AgentOp } from './protocol.js';
import type { AgentClientTlsOptions } from './_tls.js';
import { tcpDisplay } from './_tls.js';

/** Ops sent again to another agent when their agent died after receiving them (see the file comment). */
export const RETRIED_WHEN_LOST: ReadonlySet<AgentOp> = new Set<AgentOp>([
  'generateDataKey',
  'decryptDataKey',
  'getKey',
  'listKeys',
  'status',
]);

export interface AgentFleetOptions extends AgentClientOptions {
  /** After an agent failed, skip it for this long before trying it first again. Default 5 s. */
  downForMs?: number;
}

export interface FleetStats {
  /** Requests answered by another agent than the one they were first sent to. */
  failovers: number;
  /** Of those, requests that an agent had received before it died (retried as RETRIED_WHEN_LOST allows). */
  retriedAfterLoss: number;
}

export class AgentFleetClient extends AgentOperations {
  readonly endpoints: readonly AgentEndpoint[];
  readonly #options: AgentFleetOptions;
  readonly #clients: (AgentClient | undefined)[];
  readonly #downUntil: number[];
  readonly #stats: FleetStats = { failovers: 0, retriedAfterLoss: 0 };
  #preferred = 0;
  #closed = false;

  private constructor(endpoints: readonly AgentEndpoint[], options: AgentFleetOptions) {
    super();
    this.endpoints = [...endpoints];
    this.#options = options;
    this.#clients = endpoints.map(() => undefined);
    this.#downUntil = endpoints.map(() => 0);
  }

  /**
   * A client for the agents at `endpoints` (unix sockets and TLS endpoints, in order of
   * preference), connected to the first that answers (AgentUnavailableError when none does).
   */
  static async connect(
    endpoints: readonly AgentEndpoint[],
    options: AgentFleetOptions = {},
  ): Promise<AgentFleetClient> {
    if (!Array.isArray(endpoints) || endpoints.length === 0) {
      throw new AgentError('agent: a fleet client needs at least one agent endpoint');
    }
    const fleet = new AgentFleetClient(endpoints, options);
    try {
      // `hello` again on an open connection only renegotiates the version: a harmless first request.
      await fleet.request('status');
    } catch (err) {
      await fleet.close();
      throw err;
    }
    return fleet;
  }

  /** How often requests moved to another agent (for tests and monitoring). */
  get stats(): FleetStats {
    return { ...this.#stats };
  }

  /** How messages name each endpoint. */
  get displays(): string[] {
    return this.endpoints.map(endpointDisplay);
  }

  async request(op: AgentOp, args: Record<string, unknown> = {}): Promise<unknown> {
    if (this.#closed) throw new AgentError('agent: connection closed');
    const tried: string[] = [];
    let last: Error | undefined;
    let lost = false;
    for (const i of this.#order()) {
      const client = this.#client(i);
      const o = await client.exchange(op, args);
      if (o.ok) {
        this.#preferred = i;
        if (tried.length > 0) {
          this.#stats.failovers++;
          if (lost) this.#stats.retriedAfterLoss++;
        }
        return o.result;
      }
      tried.push(client.socket.display);
      last = o.error;
      if (o.fate === 'answered') {
        // A sealed agent refused before doing anything: another may be unsealed.
        if (KeywardenError.isInstance(o.error, 'KW_KEYSTORE_SEALED') && op !== 'seal' && op !== 'unseal') continue;
        throw o.error;
      }
      if (o.fate === 'unsent' && refusesThisClient(o.error)) throw o.error;
      this.#down(i, client);
      if (o.fate === 'lost') {
        if (!RETRIED_WHEN_LOST.has(op)) {
          throw new AgentError(
            `agent: the agent on ${client.socket.display} went away while it ran ${op}; it may or may not have been done, so it is not sent to another agent (look with getKey)`,
            { cause: o.error },
          );
        }
        lost = true;
      }
    }
    if (last && KeywardenError.isInstance(last, 'KW_KEYSTORE_SEALED')) throw last;
    throw new AgentUnavailableError(
      `agent: no agent answered (tried ${tried.join(', ')})${last ? `; last: ${last.message}` : ''}`,
    );
  }

  /** The preferred agent first, then the rest in order; agents down recently go last. */
  #order(): number[] {
    const n = this.endpoints.length;
    const now = Date.now();
    const all = Array.from({ length: n }, (_, k) => (this.#preferred + k) % n);
    return [
      ...all.filter((i) => (this.#downUntil[i] as number) <= now),
      ...all.filter((i) => (this.#downUntil[i] as number) > now),
    ];
  }

  #client(i: number): AgentClient {
    const existing = this.#clients[i];
    if (existing && !existing.failed) return existing;
    const c = AgentClient.create(this.endpoints[i] as AgentEndpoint, this.#options);
    this.#clients[i] = c;
    return c;
  }

  #down(i: number, client: AgentClient): void {
    this.#downUntil[i] = Date.now() + (this.#options.downForMs ?? 5000);
    if (this.#preferred === i) this.#preferred = (i + 1) % this.endpoints.length;
    if (this.#clients[i] === client) {
      this.#clients[i] = undefined;
      void client.close().catch(() => {});
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    await Promise.all(this.#clients.map((c) => c?.close().catch(() => {})));
  }
}

/** A refusal of this client (same answer from every agent), not a dead agent. */
function refusesThisClient(err: Error): boolean {
  return (
    AccessDeniedError.isInstance(err) ||
    AgentVersionError.isInstance(err) ||
    AgentProtocolError.isInstance(err) ||
    (AgentError.isInstance(err) &&
      /: (the agent (requires|does not trust|refused)|no TLS version|the agent's certificate)/.test(err.message))
  );
}

export function endpointDisplay(e: AgentEndpoint): string {
  if (typeof e === 'string') return e;
  if (isTcp(e)) return e.display ?? tcpDisplay(e.host, e.port);
  return e.display;
}

/**
 * An endpoint from its text: `tcp://HOST:PORT` or `tls://HOST:PORT` (IPv6 in brackets), which
 * needs `tls`; `unix:PATH`; or a socket path.
 */
export function parseAgentEndpoint(text: string, tls?: AgentClientTlsOptions): AgentEndpoint {
  const m = /^(?:tcp|tls):\/\/(\[[0-9A-Fa-f:.]+\]|[^:/[\]]+):([0-9]{1,5})$/.exec(text);
  if (m) {
    const port = Number(m[2]);
    if (port < 1 || port > 65535) throw new AgentError(`agent: ${text}: the port must be from 1 to 65535`);
    if (!tls) {
      throw new AgentError(`agent: ${text} is a TCP endpoint: it needs this client's TLS certificate, key and CA`);
    }
    const host = (m[1] as string).replace(/^\[|\]$/g, '');
    return { host, port, tls, display: tcpDisplay(host, port) };
  }
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(text)) {
    throw new AgentError(`agent: ${text}: an agent endpoint is tcp://HOST:PORT, unix:PATH or a socket path`);
  }
  return text.startsWith('unix:') ? text.slice('unix:'.length) : text;
}

export interface SealReport {
  endpoint: string;
  /** True when the agent answered that it is sealed. */
  sealed: boolean;
  /** Why it was not sealed (unreachable, refused, a root that cannot be sealed). */
  error?: Error;
}

/**
 * Seal every agent in `endpoints` (an administrative action: over mutual TLS the certificate, on a
 * unix socket the token, must name a principal allowed to `administer`). Each agent is asked on
 * its own connection, all at once; one that cannot be reached or refuses does not stop the others.
 * The report lists every endpoint in order.
 */
export async function sealAgents(
  endpoints: readonly AgentEndpoint[],
  options: AgentClientOptions = {},
): Promise<SealReport[]> {
  return Promise.all(
    endpoints.map(async (e): Promise<SealReport> => {
      const endpoint = endpointDisplay(e);
      let client: AgentClient | undefined;
      try {
        client = await AgentClient.connect(e, options);
        await client.seal();
        return { endpoint, sealed: true };
      } catch (err) {
        return { endpoint, sealed: false, error: err instanceof Error ? err : new AgentError('agent: seal failed') };
      } finally {
        await client?.close().catch(() => {});
      }
    }),
  );
}
