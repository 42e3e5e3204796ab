#!/usr/bin/env node
/**
 * The executable: process signals and streams in, `run()` (cli.ts) in the middle, an exit status out.
 *
 * Signals:
 *  - SIGUSR1 does nothing. Node's default opens its inspector on 127.0.0.1:9229, an
 *    unauthenticated debugger through which any local user could run code in a process holding
 *    key material (the agent holds the root). The handler is installed before the rest of the CLI
 *    is loaded (cli.js is imported afterwards, dynamically), which leaves only Node's own start-up
 *    open: the agent checks for an active inspector when it starts and before it takes a share.
 *    Node ≥ 22.14 also has --disable-sigusr1 (docs/threat-model.md).
 *  - Every catchable terminating signal (SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGALRM, SIGUSR2…)
 *    removes the temporary output files at once (synchronously), then aborts the command (io.signal)
 *    so it stops cleanly; a command that has not exited 3 s later, or a second signal, exits at
 *    once. The exit status is 128 + the signal's number, as for a process the signal killed
 *    (SIGQUIT and SIGABRT therefore do not dump core, which could hold key material). The agent
 *    treats the signal as a stop request: it wipes the root and exits 0.
 *  - SIGSEGV, SIGBUS, SIGFPE and SIGILL are left alone (Node uses them internally), and so is
 *    SIGPROF (V8's sampling profiler, --cpu-prof, runs on it).
 */
import { constants } from 'node:os';
import { removeRegisteredSync } from './_exit-cleanup.js';

process.on('SIGUSR1', () => {});

const TERMINATING: readonly string[] = [
  'SIGHUP',
  'SIGINT',
  'SIGQUIT',
  'SIGTERM',
  'SIGALRM',
  'SIGUSR2',
  'SIGVTALRM',
  'SIGXCPU',
  'SIGXFSZ',
  'SIGTRAP',
  'SIGSYS',
  'SIGABRT',
  'SIGPOLL',
  'SIGPWR',
  'SIGSTKFLT',
];
/** How long a command may take to stop after a signal before it is stopped hard. */
const GRACE_MS = 3000;

const signals = constants.signals as Record<string, number | undefined>;
const controller = new AbortController();
let received: string | undefined;
let finished = false;

function exitStatusFor(signal: string): number {
  return 128 + (signals[signal] ?? 15);
}

function onSignal(signal: NodeJS.Signals): void {
  removeRegisteredSync();
  if (received !== undefined || finished) process.exit(exitStatusFor(signal));
  received = signal;
  controller.abort(signal);
  setTimeout(() => {
    removeRegisteredSync();
    process.exit(exitStatusFor(signal));
  }, GRACE_MS).unref();
}

for (const name of TERMINATING) {
  if (signals[name] === undefined) continue; // not on this platform
  try {
    process.on(name as NodeJS.Signals, onSignal);
  } catch {
    // a signal this platform's libuv will not watch
  }
}
process.on('exit', removeRegisteredSync);

// A write error on stdout or stderr after the command is done (a reader that went away: `| head`,
// `| true`) must not become an uncaught 'error' event and a stack trace.
let stdoutError: NodeJS.ErrnoException | undefined;
process.stdout.on('error', (err: NodeJS.ErrnoException) => {
  stdoutError ??= err;
});
process.stderr.on('error', () => {});

const { run } = await import('./cli.js');
const { EXIT_OK, EXIT_FAILURE, systemErrorText } = await import('./errors.js');

let code = await run(process.argv.slice(2), {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
  signal: controller.signal,
});

// Output written synchronously (help text, the demo's narration) fails after run() returned when
// the reader is gone: find out before claiming success.
const flushError = await new Promise<NodeJS.ErrnoException | null | undefined>((resolve) => {
  if (process.stdout.destroyed) resolve(stdoutError ?? new Error('stdout closed'));
  else process.stdout.write('', resolve);
});
if (flushError && code === EXIT_OK) {
  const why = stdoutError ?? flushError;
  process.stderr.write(
    why.code === 'EPIPE' || why.code === undefined || why.code === 'ERR_STREAM_DESTROYED'
      ? 'keywarden: output closed before the command finished (broken pipe)\n'
      : `keywarden: cannot write to standard output: ${systemErrorText(why)}\n`,
  );
  code = EXIT_FAILURE;
}
process.exitCode = code;
finished = true;

// A partly read stdin (e.g. decrypt stopped at a bad frame) would keep the process waiting. A stdin
// the command never used is left alone (it may be shared with a calling script's read loop).
if (process.stdin.readableFlowing !== null || process.stdin.readableDidRead) process.stdin.destroy();
