/**
 * Reaching an agent as a client: a local unix socket (--socket PATH, the folder's agent.sock), or a
 * fleet's agent over its mutual-TLS listener (--agent tls://HOST:PORT with this client's
 * certificate, key and the agents' CA: --tls-cert/--tls-key/--tls-ca or $KEYWARDEN_AGENT_TLS_CERT,
 * $KEYWARDEN_AGENT_TLS_KEY, $KEYWARDEN_AGENT_TLS_CA; docs/agent-protocol.md §1.1). Only file paths
 * are given, never key material: the key file is read (warned about when group or others can
 * read it, like every secret file the CLI reads) and its bytes are wiped when the command is done.
 * Over TLS the client certificate names the principal; over a socket $KEYWARDEN_AGENT_TOKEN does.
 */
import { readFile, stat } from 'node:fs/promises';
import * as path from 'node:path';
import {
  AgentClient,
  type AgentClientTlsOptions,
  type AgentEndpoint,
  endpointDisplay,
  type KeyService,
  parseAgentEndpoint,
} from '@keywarden/agent';
import { AgentError } from '@keywarden/core';
import type { Command } from 'commander';
import { systemErrorText, UsageError } from '../errors.js';
import type { CliIO } from '../io.js';
import { type StoreLocation, withKeyService } from '../store-dir.js';
import { keyServiceOptionsOf } from './_common.js';

export const AGENT_ENV = 'KEYWARDEN_AGENT';
export const AGENT_TLS_CERT_ENV = 'KEYWARDEN_AGENT_TLS_CERT';
export const AGENT_TLS_KEY_ENV = 'KEYWARDEN_AGENT_TLS_KEY';
export const AGENT_TLS_CA_ENV = 'KEYWARDEN_AGENT_TLS_CA';
export const AGENT_TOKEN_ENV = 'KEYWARDEN_AGENT_TOKEN';

/** Largest certificate (chain) or key file read (PEM). */
const MAX_PEM_BYTES = 1024 * 1024;

/** A public PEM file (a certificate or CA bundle). */
export async function readPem(io: Pick<CliIO, 'cwd'>, file: string, what: string): Promise<Buffer> {
  const p = path.resolve(io.cwd, file);
  try {
    const st = await stat(p);
    if (!st.isFile() || st.size > MAX_PEM_BYTES) throw new UsageError(`${what} ${file} is not a PEM file`);
    return await readFile(p);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`cannot read ${what} ${file}: ${systemErrorText(err)}`);
  }
}

/**
 * A PEM private key file, as bytes the caller wipes: warned about, like every secret file the CLI
 * reads (readSmallSecretFile), when group or others can read it.
 */
export async function readKeyPem(io: Pick<CliIO, 'cwd' | 'stderr'>, file: string): Promise<Buffer> {
  const p = path.resolve(io.cwd, file);
  try {
    const st = await stat(p);
    if (!st.isFile() || st.size > MAX_PEM_BYTES) throw new UsageError(`TLS key file ${file} is not a PEM file`);
    if (process.platform !== 'win32' && (st.mode & 0o077) !== 0) {
      io.stderr.write(
        `keywarden: warning: TLS key file ${file} is accessible to group or others (mode ${(st.mode & 0o777).toString(8)}); run chmod 600 on it\n`,
      );
    }
    return await readFile(p);
  } catch (err) {
    if (err instanceof UsageError) throw err;
    throw new UsageError(`cannot read TLS key file ${file}: ${systemErrorText(err)}`);
  }
}

interface ClientGlobals {
  agent?: string;
  socket?: string;
  tlsCert?: string;
  tlsKey?: string;
  tlsCa?: string;
}

/** An agent named on the command line (or $KEYWARDEN_AGENT), ready to connect to. */
export interface NamedAgent {
  endpoint: AgentEndpoint;
  /** How messages name it. */
  display: string;
  /** $KEYWARDEN_AGENT_TOKEN over a unix socket; none over TLS (the certificate names the principal). */
  credential?: string;
  /** Wipe the TLS key bytes read (once the client is closed). */
  wipe(): void;
}

function nonEmpty(v: string | undefined): string | undefined {
  return v === undefined || v === '' ? undefined : v;
}

/**
 * The agent that `--agent ENDPOINT` (else $KEYWARDEN_AGENT) names, or undefined when neither is
 * given (then the command uses --socket / the key-store folder as before). ENDPOINT is
 * tls://HOST:PORT (or tcp://; IPv6 in brackets), unix:PATH or a socket path. Usage errors: both
 * --agent and --socket, a TLS endpoint without this client's certificate, key and CA, and TLS
 * files given with no TLS endpoint.
 */
export async function namedAgentOf(cmd: Command, io: CliIO): Promise<NamedAgent | undefined> {
  const g = cmd.optsWithGlobals<ClientGlobals>();
  const text = g.agent ?? nonEmpty(io.env[AGENT_ENV]);
  const tlsGiven = g.tlsCert ?? g.tlsKey ?? g.tlsCa;
  if (text === undefined) {
    if (tlsGiven !== undefined) {
      throw new UsageError('--tls-cert, --tls-key and --tls-ca go with --agent tls://HOST:PORT');
    }
    return undefined;
  }
  if (g.agent !== undefined && g.socket !== undefined) {
    throw new UsageError('--agent and --socket both name the agent: give one');
  }
  if (!/^(tls|tcp):\/\//.test(text)) {
    if (tlsGiven !== undefined) {
      throw new UsageError('--tls-cert, --tls-key and --tls-ca go with --agent tls://HOST:PORT');
    }
    const endpoint = parsed(text, undefined);
    const socket = typeof endpoint === 'string' ? endpoint : text;
    const token = nonEmpty(io.env[AGENT_TOKEN_ENV]);
    return {
      endpoint: { path: path.resolve(io.cwd, socket), display: socket },
      display: socket,
      ...(token ? { credential: token } : {}),
      wipe: () => {},
    };
  }
  const certFile = g.tlsCert ?? nonEmpty(io.env[AGENT_TLS_CERT_ENV]);
  const keyFile = g.tlsKey ?? nonEmpty(io.env[AGENT_TLS_KEY_ENV]);
  const caFile = g.tlsCa ?? nonEmpty(io.env[AGENT_TLS_CA_ENV]);
  if (!certFile || !keyFile || !caFile) {
    throw new UsageError(
      `--agent ${text} needs this client's --tls-cert, --tls-key and --tls-ca (or $${AGENT_TLS_CERT_ENV}, $${AGENT_TLS_KEY_ENV}, $${AGENT_TLS_CA_ENV})`,
    );
  }
  const cert = await readPem(io, certFile, 'TLS certificate');
  const ca = await readPem(io, caFile, 'TLS CA');
  const key = await readKeyPem(io, keyFile);
  const tls: AgentClientTlsOptions = { cert, key, ca };
  const endpoint = parsed(text, tls);
  return {
    endpoint,
    display: endpointDisplay(endpoint),
    wipe: () => key.fill(0),
  };
}

function parsed(text: string, tls: AgentClientTlsOptions | undefined): AgentEndpoint {
  try {
    return parseAgentEndpoint(text, tls);
  } catch (err) {
    if (AgentError.isInstance(err)) throw new UsageError(`--agent: ${err.message.replace(/^agent: /, '')}`);
    throw err;
  }
}

/** Connect to the named agent, run `fn`, close, and wipe the TLS key read. */
export async function withNamedAgent<T>(agent: NamedAgent, fn: (client: AgentClient) => Promise<T>): Promise<T> {
  try {
    const client = await AgentClient.connect(agent.endpoint, agent.credential ? { credential: agent.credential } : {});
    try {
      return await fn(client);
    } finally {
      await client.close();
    }
  } finally {
    agent.wipe();
  }
}

/**
 * A connection to the agent --agent names, else to `fallback()` (the folder's socket, --socket):
 * for `unseal` and `seal`. Closing it also wipes the TLS key read.
 */
export async function connectCommandAgent(
  cmd: Command,
  io: CliIO,
  fallback: () => AgentEndpoint,
): Promise<AgentClient> {
  const named = await namedAgentOf(cmd, io);
  if (!named) return AgentClient.connect(fallback());
  let client: AgentClient;
  try {
    client = await AgentClient.connect(named.endpoint, named.credential ? { credential: named.credential } : {});
  } catch (err) {
    named.wipe();
    throw err;
  }
  const close = client.close.bind(client);
  client.close = async () => {
    try {
      await close();
    } finally {
      named.wipe();
    }
  };
  return client;
}

/**
 * The key service a key-using command runs on: the agent --agent names (a fleet's, reached without
 * a key-store folder), else the folder's (openKeyService: development mode, or its agent under
 * split knowledge).
 */
export async function withAgentOrKeyService<T>(
  cmd: Command,
  io: CliIO,
  loc: StoreLocation,
  fn: (ks: KeyService) => Promise<T>,
): Promise<T> {
  const agent = await namedAgentOf(cmd, io);
  if (agent) return withNamedAgent(agent, fn);
  return withKeyService(loc, io, keyServiceOptionsOf(cmd), fn);
}

/** The commands --agent applies to (the others would silently use the folder's agent instead). */
const AGENT_COMMANDS = new Set([
  'key create',
  'key rotate',
  'key disable',
  'key enable',
  'key compromise',
  'key destroy',
  'encrypt',
  'decrypt',
  'datakey',
  'unseal',
  'seal',
  'status',
]);
/** Commands with TLS files of their own (the agent's listener, `agent seal --all`'s clients). */
const TLS_FILE_COMMANDS = new Set(['agent', 'agent start', 'agent seal']);

/**
 * Before any action (cli.ts): --agent, and --tls-cert/--tls-key/--tls-ca, on a command they do not
 * apply to are a usage error, not ignored (`keywarden --agent tls://… key list` must not answer
 * from the local folder).
 */
export function checkAgentOptionsApply(action: Command): void {
  const names: string[] = [];
  for (let c: Command | null = action; c?.parent; c = c.parent) names.unshift(c.name());
  const name = names.join(' ');
  const g = action.optsWithGlobals<ClientGlobals>();
  if (g.agent !== undefined && !AGENT_COMMANDS.has(name)) {
    throw new UsageError(
      `--agent does not apply to \`${name}\` (it does to key create|rotate|disable|enable|compromise|destroy, encrypt, decrypt, datakey, unseal, seal, status)`,
    );
  }
  if ((g.tlsCert ?? g.tlsKey ?? g.tlsCa) !== undefined && !AGENT_COMMANDS.has(name) && !TLS_FILE_COMMANDS.has(name)) {
    throw new UsageError(`--tls-cert, --tls-key and --tls-ca do not apply to \`${name}\``);
  }
}
