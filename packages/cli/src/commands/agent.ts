/**
 * `keywarden agent`: the long-running process that holds a split-knowledge store's root. The
 * server is @keywarden/agent's AgentServer, started over D's store by @keywarden/ceremony's
 * startFolderAgent; this command parses the options, prints the log lines, and stops on a signal.
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import {
  DEFAULT_IDLE_TIMEOUT_SECONDS,
  DEFAULT_LINE_TIMEOUT_SECONDS,
  DEFAULT_MAX_CONNECTIONS,
  DEFAULT_UNSEAL_TIMEOUT_SECONDS,
} from '@keywarden/agent';
import { startFolderAgent } from '@keywarden/ceremony';
import type { CliIO } from '../io.js';
import { AGENT_SOCKET_ENV, AGENT_SOCKET_FILE, loadFolderRootBackend } from '../store-dir.js';

/** What key-using clients are told while the agent is sealed. */
const SEALED_MESSAGE =
  'keystore: sealed; unseal the root before using keys (the agent is sealed: unseal it with a quorum of shares, `keywarden unseal`)';

import { locationOf, socketOf } from './_common.js';

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

interface AgentCommandOptions {
  unsealTimeout?: number;
  idleTimeout?: number;
  lineTimeout?: number;
  maxConnections?: number;
  allowInspector?: boolean;
}

export function registerAgent(program: Command, io: CliIO): void {
  program
    .command('agent')
    .description(
      'serve a split-knowledge key store: start sealed, unseal by quorum, answer key operations (foreground)',
    )
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
    .addHelpText(
      'after',
      `
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

The log (stderr) names share indices and counts, never a share or a key.`,
    )
    .action(async (opts: AgentCommandOptions, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const socket = socketOf(cmd, io, loc);
      const log = (line: string) => {
        io.stderr.write(`keywarden agent: ${line}\n`);
      };
      const timeoutSeconds = opts.unsealTimeout ?? DEFAULT_UNSEAL_TIMEOUT_SECONDS;
      // A device root whose PIN / auth value was split is served too: register its backend first.
      await loadFolderRootBackend(loc).catch(() => undefined);
      const agent = await startFolderAgent(
        loc,
        {
          socket: socket.path,
          unsealTimeoutMs: Math.round(timeoutSeconds * 1000),
          log,
          sealedMessage: SEALED_MESSAGE,
          ...(opts.idleTimeout !== undefined ? { idleTimeoutMs: Math.round(opts.idleTimeout * 1000) } : {}),
          ...(opts.lineTimeout !== undefined ? { lineTimeoutMs: Math.round(opts.lineTimeout * 1000) } : {}),
          ...(opts.maxConnections !== undefined ? { maxConnections: opts.maxConnections } : {}),
          ...(opts.allowInspector ? { allowInspector: true } : {}),
        },
        { cwd: io.cwd, env: io.env },
      );
      log(`serving ${socket.display} for the key store in ${loc.display} (pid ${process.pid})`);
      log(`sealed: unseal with ${agent.describeSealed()} (\`keywarden unseal\`)`);
      await untilAborted(io.signal);
      await agent.close();
      log('stopped: the root and the KEK cache were wiped and the socket removed');
    });
}

/** Resolves when `signal` aborts (SIGINT/SIGTERM in bin.ts); never without one. */
function untilAborted(signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    if (!signal) return;
    if (signal.aborted) resolve();
    else signal.addEventListener('abort', () => resolve(), { once: true });
  });
}
