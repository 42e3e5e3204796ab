/**
 * Which channel to a pool's child process is cheaper (docs/pkcs11.md, "A pool of processes"):
 * child_process.fork's IPC channel with "advanced" serialization (what _process-channel.ts uses),
 * or a plain pipe (an extra stdio fd) carrying length-prefixed frames of v8.serialize output that
 * this script parses itself. No PKCS#11 is involved: the child answers each batch at once with a
 * reply of the pool's shape, so the figures are the transport's cost alone. The payloads are the
 * pool's (_worker.ts WorkerBatch / WorkerBatchReply): 16 AES-GCM requests of 32 B with 12-byte IV
 * and 80 bytes of AAD per batch, and 16 results of 48 B per reply; `--inflight` batches are kept
 * in flight, as the pool does under load.
 *
 *   node dist/pkcs11-ipc.js [--seconds 1] [--rounds 5] [--inflight 4]
 *
 * Reported per request (a batch is 16): wall-clock round trips per second, and the CPU time of the
 * parent (process.cpuUsage: what the pool's host process pays) and of the child (it reports its
 * own), interleaved round by round, median.
 */
import { fork } from 'node:child_process';
import type { Readable, Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import * as v8 from 'node:v8';
import { median } from './_measure.js';

const SELF = fileURLToPath(import.meta.url);
const PER_BATCH = 16;

function batch(seq: number): unknown {
  const requests = Array.from({ length: PER_BATCH }, (_, i) => ({
    seq: seq * PER_BATCH + i,
    op: 'encrypt',
    label: 'kw-kek-0123456789abcdef',
    b: ['id', i * 140, 16, 'iv', i * 140 + 16, 12, 'aad', i * 140 + 28, 80, 'data', i * 140 + 108, 32],
  }));
  return { requests, bytes: new Uint8Array(PER_BATCH * 140) };
}

function reply(): unknown {
  return { replies: [], done: new Float64Array(PER_BATCH * 3), packed: new Uint8Array(PER_BATCH * 48) };
}

/** Length-prefixed frames on a stream: 4-byte big-endian length, then the v8.serialize bytes. */
function frames(input: Readable, on: (value: unknown) => void): void {
  let pending: Buffer = Buffer.alloc(0);
  input.on('data', (chunk: Buffer) => {
    pending = pending.length === 0 ? chunk : Buffer.concat([pending, chunk]);
    let off = 0;
    while (pending.length - off >= 4) {
      const n = pending.readUInt32BE(off);
      if (pending.length - off - 4 < n) break;
      on(v8.deserialize(pending.subarray(off + 4, off + 4 + n)));
      off += 4 + n;
    }
    pending = off === pending.length ? Buffer.alloc(0) : pending.subarray(off);
  });
}

function writeFrame(out: Writable, value: unknown): void {
  const body = v8.serialize(value);
  const head = Buffer.alloc(4);
  head.writeUInt32BE(body.length);
  out.write(Buffer.concat([head, body]));
}

async function child(mode: string): Promise<void> {
  const cpu = () => {
    const c = process.cpuUsage();
    return (c.user + c.system) / 1000;
  };
  if (mode === 'ipc') {
    process.on('message', (m: unknown) => {
      if (m === 'cpu') process.send?.({ cpuMs: cpu() });
      else process.send?.(reply());
    });
    process.on('disconnect', () => process.exit(0));
  } else {
    // Sockets over the inherited pipe ends (libuv streams, as the IPC channel is), not fs streams.
    const { Socket } = await import('node:net');
    const input = new Socket({ fd: 3, readable: true, writable: false });
    const output = new Socket({ fd: 4, readable: false, writable: true });
    frames(input, (m) => writeFrame(output, m === 'cpu' ? { cpuMs: cpu() } : reply()));
    input.on('end', () => process.exit(0));
  }
}

interface Link {
  send(value: unknown): void;
  onReply(f: (value: unknown) => void): void;
  close(): void;
}

function start(mode: 'ipc' | 'pipe'): Link {
  if (mode === 'ipc') {
    const c = fork(SELF, ['child', 'ipc'], {
      serialization: 'advanced',
      execArgv: [],
      stdio: ['ignore', 'inherit', 'inherit', 'ipc'],
    });
    return {
      send: (v) => c.send(v as never),
      onReply: (f) => {
        c.removeAllListeners('message');
        c.on('message', f);
      },
      close: () => c.disconnect(),
    };
  }
  const c = fork(SELF, ['child', 'pipe'], {
    execArgv: [],
    stdio: ['ignore', 'inherit', 'inherit', 'pipe', 'pipe', 'ipc'],
  });
  const toChild = c.stdio[3] as Writable;
  const fromChild = c.stdio[4] as Readable;
  let handler: (v: unknown) => void = () => undefined;
  frames(fromChild, (v) => handler(v));
  return {
    send: (v) => writeFrame(toChild, v),
    onReply: (f) => {
      handler = f;
    },
    close: () => {
      toChild.end();
      c.disconnect();
    },
  };
}

async function measure(
  link: Link,
  seconds: number,
  inflight: number,
): Promise<{ perSecond: number; parentUs: number; childUs: number }> {
  const childCpu = () =>
    new Promise<number>((resolve) => {
      link.onReply((v) => resolve((v as { cpuMs: number }).cpuMs));
      link.send('cpu');
    });
  const child0 = await childCpu();
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const deadline = t0 + seconds * 1000;
  let done = 0;
  let seq = 0;
  await new Promise<void>((resolve) => {
    let outstanding = 0;
    link.onReply(() => {
      outstanding--;
      done++;
      if (performance.now() < deadline) {
        outstanding++;
        link.send(batch(seq++));
      } else if (outstanding === 0) resolve();
    });
    for (let i = 0; i < inflight; i++) {
      outstanding++;
      link.send(batch(seq++));
    }
  });
  const elapsed = (performance.now() - t0) / 1000;
  const cpu = process.cpuUsage(cpu0);
  const child1 = await childCpu();
  const requests = done * PER_BATCH;
  return {
    perSecond: requests / elapsed,
    parentUs: ((cpu.user + cpu.system) / requests) as number,
    childUs: ((child1 - child0) * 1000) / requests,
  };
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    args: process.argv.slice(2),
    options: {
      seconds: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '5' },
      inflight: { type: 'string', default: '4' },
    },
  });
  const seconds = Number(values.seconds);
  const rounds = Number(values.rounds);
  const inflight = Number(values.inflight);
  const modes = ['ipc', 'pipe'] as const;
  const links = Object.fromEntries(modes.map((m) => [m, start(m)])) as Record<(typeof modes)[number], Link>;
  const results: Record<string, Array<{ perSecond: number; parentUs: number; childUs: number }>> = {
    ipc: [],
    pipe: [],
  };
  for (let r = 0; r < rounds; r++) for (const m of modes) results[m]?.push(await measure(links[m], seconds, inflight));
  for (const l of Object.values(links)) l.close();
  console.log(`| channel | requests/s (wall) | parent CPU µs / request | child CPU µs / request |`);
  console.log('|---|---:|---:|---:|');
  const label = { ipc: 'fork IPC, serialization "advanced"', pipe: 'pipe, length-prefixed v8.serialize frames' };
  for (const m of modes) {
    const xs = results[m] ?? [];
    const med = (f: (x: { perSecond: number; parentUs: number; childUs: number }) => number) => median(xs.map(f));
    console.log(
      `| ${label[m]} | ${Math.round(med((x) => x.perSecond)).toLocaleString('en-US')} | ${med((x) => x.parentUs).toFixed(1)} | ${med((x) => x.childUs).toFixed(1)} |`,
    );
  }
}

if (process.argv[2] === 'child') await child(process.argv[3] as string);
else await main();
