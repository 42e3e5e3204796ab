/**
 * A pool worker in a child process (pool kind "processes"). SoftHSM2 serialises the threads of one
 * process on its own locks (docs/pkcs11.md, bench:pkcs11-scaling), so threads do not scale there;
 * processes do, each with its own loaded module, C_Initialize, session and login.
 *
 * The child runs the same _worker.js as a thread would, with the same batch protocol (one binary
 * frame per batch and per chunk of replies: _wire.ts), over the IPC channel of child_process.fork
 * with "advanced" serialization: Node writes each message as a length-prefixed frame of the V8
 * serializer's output, and a frame is one typed array, which crosses as its raw bytes.
 *
 * Secrets: the child's argv holds only the module path and the token label (JSON); the PIN travels
 * in a login request over the channel (the child wipes it after C_Login, or holds it while the root
 * is unsealed, exactly as a thread does). The child's environment is the one the pool is given (the
 * root leaves out a pin-source=env: variable). Each batch frame is wiped as soon as send() has
 * serialized it; the serialized frame in Node's write queue is not reachable to wipe (the thread
 * pool's structured clone had the same limit on its side).
 *
 * Lifetime: the child exits when its channel closes (the pool closed, or this process died, even
 * by SIGKILL: the kernel closes the socket), so it never outlives its parent. A child stuck inside
 * the module past a deadline is killed (SIGKILL) and the pool replaces it.
 */
import { fork } from 'node:child_process';
import { constants, getPriority, setPriority } from 'node:os';
import { fileURLToPath } from 'node:url';
import { wipe } from '@keywarden/core';
import type { Channel, ChannelEvents } from './_pool.js';
import type { WorkerBatch, WorkerBatchReply, WorkerConfig } from './_worker.js';

/** How long a child may take to exit after its channel closed before it is killed. */
const STOP_GRACE_MS = 2_000;

export function processChannel(
  url: URL,
  config: WorkerConfig,
  env: Readonly<Record<string, string | undefined>> | undefined,
  on: ChannelEvents,
  nice = 0,
): Channel {
  const child = fork(fileURLToPath(url), [JSON.stringify({ modulePath: config.modulePath, token: config.token })], {
    serialization: 'advanced',
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
    // Not this process's flags (a test runner's loaders, --inspect ports): the worker is plain JS.
    execArgv: [],
    env: { ...(env ?? process.env) },
  });
  if (nice > 0 && child.pid !== undefined) {
    try {
      // Lower than the host (the root's workerNice); never past the lowest priority.
      setPriority(child.pid, Math.min(constants.priority.PRIORITY_LOW, getPriority() + nice));
    } catch {
      // Not permitted or the child is already gone: it runs at the host's priority.
    }
  }
  let exited = false;
  const exitedPromise = new Promise<void>((resolve) => {
    const done = () => {
      if (exited) return;
      exited = true;
      resolve();
      on.exit();
    };
    child.on('exit', done);
    // A child that could not be started at all ('exit' may never come).
    child.on('error', () => {
      if (child.exitCode === null && child.signalCode === null && child.pid === undefined) done();
    });
  });
  const unref = () => {
    child.unref();
    child.channel?.unref();
  };
  unref();
  child.on('message', (reply: WorkerBatchReply) => on.reply(reply));
  const kill = () => {
    if (!exited) child.kill('SIGKILL');
  };
  return {
    get pid() {
      return child.pid;
    },
    post(batch: WorkerBatch) {
      try {
        if (!child.connected) throw new Error('the worker process is gone');
        child.send(batch);
      } finally {
        wipe(batch);
      }
    },
    kill,
    async stop() {
      if (exited) return;
      // Held until the child is gone: a caller awaiting close() (a CLI's top-level await) must not
      // see its event loop run empty while the child is exiting (Node exits with code 13 then).
      child.ref();
      if (child.connected) child.disconnect();
      const timer = setTimeout(kill, STOP_GRACE_MS);
      await exitedPromise;
      clearTimeout(timer);
    },
    ref() {
      child.ref();
      child.channel?.ref();
    },
    unref,
  };
}
