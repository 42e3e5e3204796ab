/**
 * `keywarden agent`: the long-running process that holds a split-knowledge store's root (agent.ts).
 */
import type { Command } from 'commander';
import { InvalidArgumentError } from 'commander';
import { DEFAULT_UNSEAL_TIMEOUT_SECONDS, KeyAgent } from '../agent.js';
import type { CliIO } from '../io.js';
import { AGENT_SOCKET_ENV, AGENT_SOCKET_FILE } from '../store-dir.js';
import { locationOf, socketOf } from './_common.js';

/** Seconds, possibly fractional, up to the UnsealSession's limit (~24.8 days). */
function seconds(value: string): number {
  const n = Number(value);
  if (!/^[0-9]+(\.[0-9]+)?$/.test(value) || !(n > 0) || n * 1000 > 2 ** 31 - 1) {
    throw new InvalidArgumentError('must be a positive number of seconds (at most 2147483)');
  }
  return n;
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
    .addHelpText(
      'after',
      `
Runs in the foreground until SIGINT or SIGTERM (run it under systemd, a container runtime or a
terminal multiplexer). It opens the store SEALED and listens on a unix socket: --socket PATH, else
$${AGENT_SOCKET_ENV}, else DIR/${AGENT_SOCKET_FILE} (mode 0600; DIR is 0700). Commands find it there:
  keywarden status                  sealed or not, unseal progress
  keywarden unseal                  custodians give their shares, one at a time (input hidden)
  keywarden encrypt/decrypt/datakey, key create/rotate
                                    their key operations go through the agent; envelope encryption
                                    itself runs in the command's own process
  keywarden seal                    wipe the root and the KEK cache; key operations are refused again
While sealed, key operations fail with "keystore: sealed; …". Shares are held only in memory and
are discarded after --unseal-timeout seconds without a new one. Refuses to start when an agent
already answers on the socket; a socket file left by a killed agent is replaced. On SIGINT or
SIGTERM it wipes the root and the KEK cache, removes the socket and exits 0.

Anyone who can connect to the socket (the user the agent runs as) can use every key while it is
unsealed. Seal it when it is not needed, and keep the socket in a private directory.

The log (stderr) names share indices and counts, never a share or a key.`,
    )
    .action(async (opts: { unsealTimeout?: number }, cmd: Command) => {
      const loc = locationOf(cmd, io);
      const socket = socketOf(cmd, io, loc);
      const log = (line: string) => {
        io.stderr.write(`keywarden agent: ${line}\n`);
      };
      const timeoutSeconds = opts.unsealTimeout ?? DEFAULT_UNSEAL_TIMEOUT_SECONDS;
      const agent = await KeyAgent.start({
        loc,
        socket,
        unsealTimeoutMs: Math.round(timeoutSeconds * 1000),
        log,
        cwd: io.cwd,
      });
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
