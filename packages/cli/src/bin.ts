#!/usr/bin/env node
import { run } from './cli.js';

// SIGINT/SIGTERM abort streaming commands, which then delete their temporary output files.
const controller = new AbortController();
const onSignal = () => controller.abort();
process.once('SIGINT', onSignal);
process.once('SIGTERM', onSignal);

process.exitCode = await run(process.argv.slice(2), {
  stdin: process.stdin,
  stdout: process.stdout,
  stderr: process.stderr,
  env: process.env,
  cwd: process.cwd(),
  signal: controller.signal,
});

process.off('SIGINT', onSignal);
process.off('SIGTERM', onSignal);
// A partly read stdin (e.g. decrypt stopped at a bad frame) would keep the process waiting. A stdin
// the command never used is left alone (it may be shared with a calling script's read loop).
if (process.stdin.readableFlowing !== null || process.stdin.readableDidRead) process.stdin.destroy();
