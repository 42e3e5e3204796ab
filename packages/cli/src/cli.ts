/**
 * The `keywarden` command line, runnable in-process: `run(argv, io)` never touches process.*
 * (bin.ts does that), so tests drive it with PassThrough streams and read the exit status.
 *
 * Exit status: 0 success; 1 failure; 2 usage error (unknown command or option, missing argument);
 * 128 + N interrupted by signal N (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP…). A failure is one line `keywarden: <message>` on stderr; --debug adds the stack.
 */
import { readFileSync } from 'node:fs';
import { constants } from 'node:os';
import { Command, CommanderError } from 'commander';
import { registerAgent } from './commands/agent.js';
import { checkAgentOptionsApply } from './commands/_agent-client.js';
import { registerAudit } from './commands/audit.js';
import { registerAuditCheckpoint, registerCert } from './commands/cert.js';
import { registerDatakey } from './commands/datakey.js';
import { registerDecrypt } from './commands/decrypt.js';
import { registerDemo } from './commands/demo.js';
import { registerEncrypt } from './commands/encrypt.js';
import { registerInit } from './commands/init.js';
import { registerKey } from './commands/key.js';
import { registerPolicy } from './commands/policy.js';
import { registerPrincipal } from './commands/principal.js';
import { registerRekey } from './commands/rekey.js';
import { registerRewrap } from './commands/rewrap.js';
import { registerRoot } from './commands/root.js';
import { registerScan } from './commands/scan.js';
import { registerShare } from './commands/share.js';
import { registerUnseal } from './commands/unseal.js';
import { debugDetails, describeError, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE } from './errors.js';
import type { CliIO } from './io.js';
import { AGENT_SOCKET_ENV, DIR_ENV, UNSEAL_KEY_ENV } from './store-dir.js';

export type { CliIO } from './io.js';

export async function run(argv: string[], io: CliIO): Promise<number> {
  const program = buildProgram(io);
  // A closed stdout (EPIPE) must surface as a failed write, never as an uncaught 'error' event.
  const swallow = () => {};
  io.stdout.on('error', swallow);
  io.stderr.on('error', swallow);
  try {
    await program.parseAsync(programVersionFlag(argv), { from: 'user' });
    return EXIT_OK;
  } catch (err) {
    if (err instanceof CommanderError) {
      // --help, help for a command group, --version
      if (err.code === 'commander.helpDisplayed' || err.code === 'commander.version') return EXIT_OK;
      // `keywarden help CMD` (exit code 0, help on stdout), or `keywarden` / `keywarden key` alone
      // (non-zero, help on stderr: a usage error).
      if (err.code === 'commander.help') return err.exitCode === 0 ? EXIT_OK : EXIT_USAGE;
    }
    let { message, exitCode } = describeError(err, io.cwd);
    if (exitCode === EXIT_INTERRUPTED) {
      // Interrupted by a signal (bin.ts aborts io.signal with the signal's name): say which, and
      // exit with 128 + its number as a shell does for a process the signal killed.
      const reason = io.signal?.aborted ? io.signal.reason : undefined;
      const number = typeof reason === 'string' ? signalNumber(reason) : undefined;
      if (number !== undefined) {
        message = `interrupted (${reason})`;
        exitCode = 128 + number;
      }
    }
    const debug = wantsDebug(argv);
    io.stderr.write(
      `keywarden: ${message}${debug ? '' : exitCode === EXIT_USAGE ? " (see 'keywarden --help')" : ''}\n`,
    );
    if (debug) io.stderr.write(`${debugDetails(err)}\n`);
    return exitCode;
  } finally {
    io.stdout.off('error', swallow);
    io.stderr.off('error', swallow);
  }
}

export function buildProgram(io: CliIO): Command {
  const program = new Command('keywarden');
  // Set before adding commands: subcommands copy these settings when they are created.
  program
    .exitOverride()
    .configureOutput({
      writeOut: (s) => io.stdout.write(s),
      writeErr: (s) => io.stderr.write(s),
      // run() prints commander's errors itself, as one line.
      outputError: () => {},
      getOutHelpWidth: () => 100,
      getErrHelpWidth: () => 100,
      getOutHasColors: () => false,
      getErrHasColors: () => false,
    })
    .configureHelp({ showGlobalOptions: true })
    .showSuggestionAfterError(true)
    .hook('preAction', (_program, action) => checkAgentOptionsApply(action));

  program
    .description('Keywarden key management: a key store, KEKs with scope, envelope encryption of files and streams')
    // -V only: commander recognises a program option anywhere on the line, which would take
    // `key disable NAME --version 2` for the program's version; `--version` before any command is
    // turned into -V by programVersionFlag.
    .version(packageVersion(), '-V', 'print the version (also --version, before any command)')
    .option('-d, --dir <dir>', `key-store directory (default: $${DIR_ENV}, else ./.keywarden)`)
    .option(
      '--unseal-key-file <path>',
      `development mode: unseal key file (default: DIR/unseal.key; $${UNSEAL_KEY_ENV}, when set, takes precedence)`,
    )
    .option(
      '--socket <path>',
      `split knowledge: the agent's unix socket (default: $${AGENT_SOCKET_ENV}, else DIR/agent.sock)`,
    )
    .option(
      '--agent <endpoint>',
      "the agent key commands go through: tls://HOST:PORT (a fleet's agent, mutual TLS; with --tls-cert, --tls-key, --tls-ca), unix:PATH or a socket path (default: $KEYWARDEN_AGENT)",
    )
    .option(
      '--tls-cert <file>',
      "with --agent tls://…: this client's certificate, naming its principal (default: $KEYWARDEN_AGENT_TLS_CERT)",
    )
    .option(
      '--tls-key <file>',
      "with --agent tls://…: this client's private key file, mode 600 (default: $KEYWARDEN_AGENT_TLS_KEY)",
    )
    .option(
      '--tls-ca <file>',
      "with --agent tls://…: the CA of the agents' certificates (default: $KEYWARDEN_AGENT_TLS_CA)",
    )
    .option('--debug', 'on failure, also print the stack trace')
    .helpCommand(true)
    .addHelpText(
      'after',
      `
Split knowledge: \`init --shares N --threshold M\` splits the unseal key among custodians; a
long-running \`agent\` holds the root, starts sealed, and is unsealed by a quorum (\`unseal\`); key
commands then go through it. \`rekey\`, \`root rotate\` and \`root destroy\` need a quorum of the
current shares. See docs/split-knowledge.md.

Exit status: 0 success, 1 failure, 2 usage error. Errors are one line on stderr.
Run 'keywarden demo' for a guided tour of the key lifecycle, and 'keywarden COMMAND --help' for details.`,
    );

  registerInit(program, io);
  registerKey(program, io);
  registerEncrypt(program, io);
  registerDecrypt(program, io);
  registerDatakey(program, io);
  registerAgent(program, io);
  registerUnseal(program, io);
  registerRekey(program, io);
  registerRewrap(program, io);
  registerRoot(program, io);
  registerShare(program, io);
  registerDemo(program, io);
  registerAudit(program, io);
  registerAuditCheckpoint(program, io);
  registerCert(program, io);
  registerPolicy(program, io);
  registerPrincipal(program, io);
  registerScan(program, io);
  return program;
}

function signalNumber(name: string): number | undefined {
  return (constants.signals as Record<string, number | undefined>)[name];
}

/** The program's options that take a value (their value is not a command name). */
const PROGRAM_OPTIONS_WITH_VALUE = new Set([
  '-d',
  '--dir',
  '--unseal-key-file',
  '--socket',
  '--agent',
  '--tls-cert',
  '--tls-key',
  '--tls-ca',
]);

/**
 * `--version` before the command (`keywarden --version`, `keywarden --dir D --version`) is the
 * program's version (-V); after the command it belongs to the command (`key disable NAME --version 2`).
 */
export function programVersionFlag(argv: readonly string[]): string[] {
  const out = [...argv];
  for (let i = 0; i < out.length; i++) {
    const a = out[i] as string;
    if (a === '--') break;
    if (a === '--version') {
      out[i] = '-V';
      break;
    }
    if (PROGRAM_OPTIONS_WITH_VALUE.has(a)) i++;
    else if (!a.startsWith('-')) break; // the command
  }
  return out;
}

/** --debug anywhere before a `--` terminator (known even when parsing itself failed). */
function wantsDebug(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '--debug') return true;
  }
  return false;
}

function packageVersion(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof pkg.version === 'string' ? pkg.version : '0.0.0';
  } catch {
    return '0.0.0';
  }
}
