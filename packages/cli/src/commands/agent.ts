/**
 * `keywarden agent` / `keywarden agent start`: the long-running process that holds a
 * split-knowledge store's root. The server is @keywarden/agent's AgentServer, started over D's
 * store by @keywarden/ceremony's startFolderAgent; this command parses the options, reads the TLS
 * files (--listen), prints the log lines, and stops on a signal.
 * `keywarden agent seal --all ENDPOINT…`: @keywarden/agent's sealAgents over a list of agents.
 */
import * as path from 'node:path';
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import {
  type AgentCheckpointOptions,
  type AgentClientTlsOptions,
  type AgentEndpoint,
  CHECKPOINT_PRINCIPAL,
  type AgentListenOptions,
  DEFAULT_IDLE_TIMEOUT_SECONDS,
  DEFAULT_LINE_TIMEOUT_SECONDS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_UNSEAL_TIMEOUT_SECONDS,
  parseAgentEndpoint,
  sealAgents,
} from '@keywarden/agent';
import { readFolderStoreConfig, startFolderAgent, startStoreAgent } from '@keywarden/ceremony';
import { readStoreAuditHead } from '@keywarden/core';
import { EXIT_FAILURE, UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { AGENT_SOCKET_ENV, AGENT_SOCKET_FILE, loadFolderRootBackend } from '../store-dir.js';

/** What key-using clients are told while the agent is sealed. */
const SEALED_MESSAGE =
  'keystore: sealed; unseal the root before using keys (the agent is sealed: unseal it with a quorum of shares, `keywarden unseal`)';

import { readKeyPem, readPem } from './_agent-client.js';
import { locationOf, socketOf } from './_common.js';
import { PG_SCHEMA_HELP, pgSchema, storeKind } from './_store-options.js';

/** Seconds, possibly fractional, up to the UnsealSession's limit (~24.8 days). */
function seconds(value: string): number {
  const n = Number(value);
  if (!/^[0-9]+(\.[0-9]+)?$/.test(value) || !(n > 0) || n * 1000 > 2 ** 31 - 1) {
    throw new InvalidArgumentError('must be a positive number of seconds (at most 2147483)');
  }
  return n;
}

/** A connection count, 1..4096. */
function connections(value: string): number {
  const n = Number(value);
  if (!/^[0-9]{1,4}$/.test(value) || n < 1 || n > 4096) {
    throw new InvalidArgumentError('must be an integer from 1 to 4096');
  }
  return n;
}

/** `tcp://HOST:PORT` (IPv6 in brackets); port 0 picks a free one (the log says which). */
function listenAddress(value: string): { host: string; port: number } {
  const m = /^tcp:\/\/(\[[0-9A-Fa-f:.]+\]|[^:/[\]]+):([0-9]{1,5})$/.exec(value);
  if (!m || Number(m[2]) > 65535) throw new InvalidArgumentError('must be tcp://HOST:PORT (IPv6 in brackets)');
  return { host: (m[1] as string).replace(/^\[|\]$/g, ''), port: Number(m[2]) };
}

function principalFrom(value: string): 'uri' | 'cn' {
  if (value !== 'uri' && value !== 'cn') throw new InvalidArgumentError('must be uri or cn');
  return value;
}

interface AgentCommandOptions {
  unsealTimeout?: number;
  idleTimeout?: number;
  lineTimeout?: number;
  maxConnections?: number;
  allowInspector?: boolean;
  listen?: { host: string; port: number };
  tlsCert?: string;
  tlsKey?: string;
  tlsClientCa?: string;
  tlsPrincipalFrom?: 'uri' | 'cn';
  store?: 'folder' | 'postgres';
  pgSchema?: string;
  pollInterval?: number;
  pollOnly?: boolean;
  socket?: string;
  checkpointKeyPair?: string;
  checkpointInterval?: number;
}

/** How often an agent signs the audit chain's head by default (with --checkpoint-key-pair). */
const DEFAULT_CHECKPOINT_SECONDS = 300;

/**
 * --checkpoint-key-pair NAME [--checkpoint-interval S]: the agent signs the audit chain's head with
 * key pair NAME of @keywarden/pki (held under its KEK, or in the root device with storage "root")
 * every S seconds when records were written since the last checkpoint, before a seal and at
 * shutdown. Off without --checkpoint-key-pair: the key pair and its certificate are made first
 * (\`keywarden cert ca|request\`), and the verifier keeps the certificate.
 */
async function checkpointOptions(opts: AgentCommandOptions): Promise<AgentCheckpointOptions | undefined> {
  if (opts.checkpointKeyPair === undefined) {
    if (opts.checkpointInterval !== undefined) {
      throw new UsageError('agent: --checkpoint-interval goes with --checkpoint-key-pair');
    }
    return undefined;
  }
  const name = opts.checkpointKeyPair;
  const pki = await import('@keywarden/pki');
  return {
    intervalMs: Math.round((opts.checkpointInterval ?? DEFAULT_CHECKPOINT_SECONDS) * 1000),
    open: async (kw) => {
      // Unwrapped once per unseal (the agent drops the writer at a seal); each checkpoint signs.
      const signer = await new pki.KeyPairs({ keywarden: kw }).signer(name);
      return {
        write: (log) =>
          pki.writeCheckpoint(log, signer, {
            principal: CHECKPOINT_PRINCIPAL,
            readHead: async () => (await readStoreAuditHead(kw.store, await log.key())) ?? { seq: 0, mac: '' },
          }),
      };
    },
  };
}

/**
 * The TLS listener from --listen and the --tls-* files. The key file is a secret file: warned
 * about when group or others can read it, like every secret file the CLI reads, its bytes wiped
 * once the agent holds the key in its TLS context, and never logged.
 */
async function listenOptions(io: CliIO, opts: AgentCommandOptions): Promise<AgentListenOptions | undefined> {
  const tlsGiven = opts.tlsCert ?? opts.tlsKey ?? opts.tlsClientCa;
  if (!opts.listen) {
    if (tlsGiven !== undefined)
      throw new UsageError('agent: --tls-cert, --tls-key and --tls-client-ca go with --listen');
    return undefined;
  }
  if (!opts.tlsCert || !opts.tlsKey || !opts.tlsClientCa) {
    throw new UsageError(
      'agent: --listen needs --tls-cert, --tls-key and --tls-client-ca (remote clients use mutual TLS only)',
    );
  }
  const key = await readKeyPem(io, opts.tlsKey);
  return {
    host: opts.listen.host,
    port: opts.listen.port,
    tls: {
      cert: await readPem(io, opts.tlsCert, 'TLS certificate'),
      key,
      clientCa: await readPem(io, opts.tlsClientCa, 'client CA'),
      ...(opts.tlsPrincipalFrom ? { principalFrom: opts.tlsPrincipalFrom } : {}),
    },
  };
}

function startOptions(cmd: Command): Command {
  return cmd
    .option(
      '--unseal-timeout <seconds>',
      `discard the shares given so far after this long without a new one (default ${DEFAULT_UNSEAL_TIMEOUT_SECONDS})`,
      seconds,
    )
    .option(
      '--idle-timeout <seconds>',
      `close a client connection after this long with nothing in progress (default ${DEFAULT_IDLE_TIMEOUT_SECONDS})`,
      seconds,
    )
    .option(
      '--line-timeout <seconds>',
      `drop a client that does not finish a request line, or read a reply, within this long (default ${DEFAULT_LINE_TIMEOUT_SECONDS})`,
      seconds,
    )
    .option(
      '--max-connections <n>',
      `client connections at once; at the limit the one waiting longest on its client is closed (default ${DEFAULT_MAX_CONNECTIONS})`,
      connections,
    )
    .option(
      '--allow-inspector',
      'development only: serve even when a Node inspector (--inspect) is active in this process',
    )
    .option(
      '--listen <tcp://HOST:PORT>',
      'also serve remote clients on TCP, mutual TLS 1.3 only (needs --tls-cert, --tls-key, --tls-client-ca)',
      listenAddress,
    )
    .option('--tls-cert <file>', "the agent's TLS certificate chain (PEM)")
    .option('--tls-key <file>', "the agent's TLS private key (PEM; keep it mode 600)")
    .option('--tls-client-ca <file>', 'the CA whose client certificates are accepted (PEM)')
    .option(
      '--tls-principal-from <uri|cn>',
      'which field of a client certificate names its principal: the URI SAN keywarden:principal:NAME (default) or the subject CN',
      principalFrom,
    )
    .option(
      '--store <folder|postgres>',
      "the key store served: the key-store folder (default), or a fleet's PostgreSQL store, reached through $KEYWARDEN_PG_URL and $KEYWARDEN_PG_PASSWORD_FILE (docs/fleet.md)",
      storeKind,
    )
    .option('--pg-schema <name>', PG_SCHEMA_HELP, pgSchema)
    .option(
      '--poll-interval <seconds>',
      `with --store postgres: also compare the store's change counter this often, for changes whose notification was missed (default ${DEFAULT_POLL_SECONDS})`,
      seconds,
    )
    .option(
      '--checkpoint-key-pair <name>',
      "sign the audit chain's head with this key pair (`keywarden cert ca|request`) every --checkpoint-interval, before a seal and at shutdown; `audit verify --checkpoint-cert` checks them",
    )
    .option(
      '--checkpoint-interval <seconds>',
      `with --checkpoint-key-pair: how often to sign when records were written (default ${DEFAULT_CHECKPOINT_SECONDS})`,
      seconds,
    )
    .option(
      '--poll-only',
      'with --store postgres: do not LISTEN for change notifications (behind a transaction-mode pooler such as PgBouncer); changes are seen within --poll-interval',
    );
}

/** How often an agent on PostgreSQL polls the store's change counter (docs/fleet.md: the bound). */
const DEFAULT_POLL_SECONDS = 1;

export function registerAgent(program: Command, io: CliIO): void {
  const agent = startOptions(
    program
      .command('agent')
      .description(
        'serve a split-knowledge key store: start sealed, unseal by quorum, answer key operations (foreground); `agent seal --all` seals a fleet',
      ),
  );
  const start = startOptions(
    agent.command('start').description('start the agent (the same as `keywarden agent` with no subcommand)'),
  );
  for (const c of [agent, start]) {
    c.addHelpText('after', START_HELP).action((_opts: unknown, cmd: Command) => startAgent(io, cmd));
  }
  agent
    .command('seal')
    .description("seal every agent listed: each wipes its root and KEK cache (an administrator's action)")
    .option('--all', 'seal all the agents listed, each on its own: one that fails does not stop the others')
    .argument('<endpoints...>', 'agents: a socket path, unix:PATH, or tcp://HOST:PORT (mutual TLS)')
    .option('--tls-cert <file>', "this client's certificate (PEM), for tcp:// agents; it must name an administrator")
    .option('--tls-key <file>', "this client's private key (PEM)")
    .option('--tls-ca <file>', "the CA that issued the agents' certificates (PEM)")
    .addHelpText(
      'after',
      `
Each agent is asked to seal on its own connection, all at once; the result is one line per agent,
in the order given, and the exit status is 1 when any agent was not sealed (unreachable, refused,
or a root that cannot be sealed). Over a unix socket the principal is $KEYWARDEN_AGENT_TOKEN's; over
tcp:// it is the one --tls-cert names. Either must be allowed to administer the store.`,
    )
    .action(async (endpoints: string[], _opts: unknown, cmd: Command) => {
      // --tls-cert and --tls-key are also `agent`'s own options: given after "seal", `agent` parses them.
      await sealFleet(io, endpoints, cmd.optsWithGlobals<SealCommandOptions>());
    });
}

interface SealCommandOptions {
  all?: boolean;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

async function sealFleet(io: CliIO, endpoints: string[], opts: SealCommandOptions): Promise<void> {
  if (!opts.all) {
    throw new UsageError(
      'agent seal: pass --all with the agents to seal (`keywarden agent seal --all ENDPOINT…`); `keywarden seal` seals the local agent',
    );
  }
  let tls: AgentClientTlsOptions | undefined;
  if (endpoints.some((e) => /^(tcp|tls):\/\//.test(e))) {
    if (!opts.tlsCert || !opts.tlsKey || !opts.tlsCa) {
      throw new UsageError('agent seal: tcp:// agents need --tls-cert, --tls-key and --tls-ca');
    }
    const key = await readKeyPem(io, opts.tlsKey);
    tls = {
      cert: await readPem(io, opts.tlsCert, 'TLS certificate'),
      key,
      ca: await readPem(io, opts.tlsCa, 'TLS CA'),
    };
  }
  const parsed = endpoints.map((e): AgentEndpoint => {
    try {
      const endpoint = parseAgentEndpoint(e, tls);
      // A socket path is relative to the working directory; it is shown as given.
      return typeof endpoint === 'string' ? { path: path.resolve(io.cwd, endpoint), display: e } : endpoint;
    } catch (err) {
      throw new UsageError(`agent seal: ${(err as Error).message.replace(/^agent: /, '')}`);
    }
  });
  const token = io.env.KEYWARDEN_AGENT_TOKEN;
  let report: Awaited<ReturnType<typeof sealAgents>>;
  try {
    report = await sealAgents(parsed, token ? { credential: token } : {});
  } finally {
    if (tls && typeof tls.key !== 'string') tls.key.fill(0);
  }
  let failed = 0;
  for (const r of report) {
    if (r.sealed) io.stdout.write(`sealed      ${r.endpoint}\n`);
    else {
      failed++;
      io.stdout.write(`not sealed  ${r.endpoint}: ${(r.error?.message ?? 'failed').replace(/^agent: /, '')}\n`);
    }
  }
  if (failed > 0) {
    throw new UsageError(`agent seal: ${failed} of ${report.length} agents were not sealed`, {
      exitCode: EXIT_FAILURE,
    });
  }
}

const START_HELP = `
Runs in the foreground until SIGINT, SIGTERM, SIGHUP or SIGQUIT (run it under systemd, a container
runtime or a terminal multiplexer). It opens the store SEALED and listens on a unix socket:
--socket PATH, else $${AGENT_SOCKET_ENV}, else DIR/${AGENT_SOCKET_FILE} (mode 0600; DIR is 0700).
Commands find it there:
  keywarden status                  sealed or not, unseal progress
  keywarden unseal                  custodians give their shares, one at a time (input hidden)
  keywarden encrypt/decrypt/datakey, key create/rotate
                                    their key operations go through the agent; envelope encryption
                                    itself runs in the command's own process
  keywarden seal                    wipe the root and the KEK cache; key operations are refused again
While sealed, key operations fail with "keystore: sealed; …". Shares are held only in memory and
are discarded after --unseal-timeout seconds without a new one. Refuses to start when an agent
already answers on the socket; a socket file left by a killed agent is replaced. On SIGINT,
SIGTERM, SIGHUP or SIGQUIT it wipes the root and the KEK cache, removes the socket and exits 0.

Anyone who can connect to the socket (the user the agent runs as) can use every key while it is
unsealed. Seal it when it is not needed, and keep the socket in a private directory.

Hostile or stuck clients cannot lock the others out: a request line must be finished and each
reply read within --line-timeout, an idle connection is closed after --idle-timeout (commands
reconnect), a request line is at most 64 KiB, a client that sends requests without reading the
replies is paused, and at --max-connections the connection waiting longest on its client is closed
to admit a new one, so \`status\` and \`seal\` always get through.

SIGUSR1 does nothing (by default it would open Node's debugger on 127.0.0.1:9229); the agent
refuses to start with an active inspector (--inspect) unless --allow-inspector. Disable core dumps
for it (ulimit -c 0, or LimitCORE=0 under systemd): see docs/threat-model.md.

Remote clients (--listen tcp://HOST:PORT, docs/agent-protocol.md §1.1): TLS 1.3 only, and every
client presents a certificate issued by --tls-client-ca whose URI SAN keywarden:principal:NAME
names its principal; the key store's policy decides its requests. With --listen the agent serves
authenticated principals only, on the unix socket too (\`keywarden principal issue\`); status and
unseal stay open to anyone who can connect. \`keywarden principal revoke NAME\` cuts NAME's open
connections, TLS and socket alike, within a second.

A fleet's PostgreSQL store (--store postgres, docs/fleet.md): several agents serve one store,
each unsealed by its custodians (\`keywarden unseal --socket PATH\`); clients fail over between
them. The connection comes from $KEYWARDEN_PG_URL, the password from the file named by
$KEYWARDEN_PG_PASSWORD_FILE (else libpq's PG* variables), never from the command line; neither is
logged. The store must already hold a split-knowledge root (the agent creates nothing); --socket
PATH or $${AGENT_SOCKET_ENV} says where to listen. A change committed by any instance (rotate,
disable, compromise, destroy) drops the agent's KEK cache on its notification, or within
--poll-interval when a notification was missed (or with --poll-only, behind a transaction-mode
pooler that does not carry LISTEN).

The log (stderr) names share indices and counts, never a share or a key.`;

async function startAgent(io: CliIO, cmd: Command): Promise<void> {
  // \`agent start\`: options given before "start" were parsed by \`agent\`; take both.
  const opts = cmd.optsWithGlobals<AgentCommandOptions>();
  if (
    opts.store !== 'postgres' &&
    (opts.pgSchema !== undefined || opts.pollInterval !== undefined || opts.pollOnly !== undefined)
  ) {
    throw new UsageError('agent: --pg-schema, --poll-interval and --poll-only go with --store postgres');
  }
  const checkpoint = await checkpointOptions(opts);
  const listen = await listenOptions(io, opts);
  if (opts.store === 'postgres') {
    await startPostgresAgent(io, opts, listen, checkpoint);
    return;
  }
  const loc = locationOf(cmd, io);
  const socket = socketOf(cmd, io, loc);
  // A folder whose store is a PostgreSQL schema (D/store.json): the fleet's agent on that schema
  // (with the change watch), on the folder's socket.
  const kept = await readFolderStoreConfig(loc);
  if (kept?.kind === 'postgres') {
    await startPostgresAgent(io, { ...opts, pgSchema: kept.schema, socket: socket.path }, listen, checkpoint);
    return;
  }
  const log = (line: string) => {
    io.stderr.write(`keywarden agent: ${line}\n`);
  };
  const timeoutSeconds = opts.unsealTimeout ?? DEFAULT_UNSEAL_TIMEOUT_SECONDS;
  // A device root whose PIN / auth value was split is served too: register its backend first.
  await loadFolderRootBackend(loc).catch(() => undefined);
  let agent: Awaited<ReturnType<typeof startFolderAgent>>;
  try {
    agent = await startFolderAgent(
      loc,
      {
        socket: socket.path,
        unsealTimeoutMs: Math.round(timeoutSeconds * 1000),
        ...serveOptionsOf(opts, log, listen, checkpoint),
      },
      { cwd: io.cwd, env: io.env },
    );
  } finally {
    // The agent holds the key in its TLS context now (or failed to start): wipe the bytes read.
    if (listen && typeof listen.tls.key !== 'string') listen.tls.key.fill(0);
  }
  log(`serving ${socket.display} for the key store in ${loc.display} (pid ${process.pid})`);
  log(`sealed: unseal with ${agent.describeSealed()} (\`keywarden unseal\`)`);
  await untilAborted(io.signal);
  await agent.close();
  log('stopped: the root and the KEK cache were wiped and the socket removed');
}

/**
 * `keywarden agent --store postgres`: one agent of a fleet on a PostgreSQL store (docs/fleet.md).
 * The connection string and the password come from the environment only ($KEYWARDEN_PG_URL,
 * $KEYWARDEN_PG_PASSWORD_FILE, else libpq's PG* variables), never from the command line, and are
 * never logged. The store must exist with a split-knowledge root (the agent creates nothing); its
 * root is read from the store, the agent starts sealed and a quorum of shares unseals it, as for a
 * folder. Every change committed on the store by any instance drops this agent's KEK cache
 * (LISTEN/NOTIFY, and a poll of the change counter every --poll-interval for missed notifications).
 */
async function startPostgresAgent(
  io: CliIO,
  opts: AgentCommandOptions,
  listen: AgentListenOptions | undefined,
  checkpoint: AgentCheckpointOptions | undefined,
): Promise<void> {
  const log = (line: string) => {
    io.stderr.write(`keywarden agent: ${line}\n`);
  };
  try {
    const raw = opts.socket ?? (io.env[AGENT_SOCKET_ENV] || undefined);
    if (raw === undefined) {
      throw new UsageError(
        `agent --store postgres: give the socket to listen on with --socket PATH or $${AGENT_SOCKET_ENV} (there is no key-store folder)`,
      );
    }
    const socket = { path: path.resolve(io.cwd, raw), display: raw };
    const schema = opts.pgSchema ?? 'keywarden';
    const { PostgresKeyStore, invalidateCachesOnChange } = await import('@keywarden/store-postgres');
    const store = await PostgresKeyStore.open({ schema, create: false, env: io.env });
    let agent: Awaited<ReturnType<typeof startStoreAgent>>;
    try {
      agent = await startStoreAgent(store, {
        socket,
        ownsStore: true,
        unsealTimeoutMs: Math.round((opts.unsealTimeout ?? DEFAULT_UNSEAL_TIMEOUT_SECONDS) * 1000),
        ...serveOptionsOf(opts, log, listen, checkpoint),
      });
    } catch (err) {
      await store.close().catch(() => {});
      throw err;
    } finally {
      // The agent holds the key in its TLS context now (or failed to start): wipe the bytes read.
      if (listen && typeof listen.tls.key !== 'string') listen.tls.key.fill(0);
    }
    let stopWatching: () => Promise<void>;
    try {
      stopWatching = await invalidateCachesOnChange(store, agent, {
        pollIntervalMs: Math.round((opts.pollInterval ?? DEFAULT_POLL_SECONDS) * 1000),
        ...(opts.pollOnly ? { listen: false } : {}),
        onError: (err) => log(`watching the store for changes: ${err.message}`),
      });
    } catch (err) {
      await agent.close().catch(() => {});
      throw err;
    }
    log(`serving ${socket.display} for the PostgreSQL key store, schema ${schema} (pid ${process.pid})`);
    log(`sealed: unseal with ${agent.describeSealed()} (\`keywarden unseal --socket ${socket.display}\`)`);
    await untilAborted(io.signal);
    await stopWatching();
    await agent.close();
    log('stopped: the root and the KEK cache were wiped and the socket removed');
  } finally {
    if (listen && typeof listen.tls.key !== 'string') listen.tls.key.fill(0);
  }
}

/** Resolves when `signal` aborts (SIGINT/SIGTERM in bin.ts); never without one. */
function untilAborted(signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (!signal) return;
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}

/** What the folder agent and the PostgreSQL agent are both given from the command's options. */
function serveOptionsOf(
  opts: AgentCommandOptions,
  log: (line: string) => void,
  listen: AgentListenOptions | undefined,
  checkpoint: AgentCheckpointOptions | undefined,
) {
  return {
    log,
    sealedMessage: SEALED_MESSAGE,
    ...(opts.idleTimeout !== undefined ? { idleTimeoutMs: Math.round(opts.idleTimeout * 1000) } : {}),
    ...(opts.lineTimeout !== undefined ? { lineTimeoutMs: Math.round(opts.lineTimeout * 1000) } : {}),
    ...(opts.maxConnections !== undefined ? { maxConnections: opts.maxConnections } : {}),
    ...(opts.allowInspector ? { allowInspector: true } : {}),
    ...(listen ? { listen } : {}),
    ...(checkpoint ? { checkpoint } : {}),
  };
}
