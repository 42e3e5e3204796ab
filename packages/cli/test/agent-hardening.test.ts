/**
 * The agent against hostile neighbours, on a real `keywarden agent` process (dist/bin.js): clients
 * that never finish a line, that pipeline requests without reading the replies, that sit idle;
 * SIGUSR1 (Node's "open the debugger" signal); an inspector active at start-up; the stop signals.
 */
import { readFile } from 'node:fs/promises';
import { createConnection, type Socket } from 'node:net';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';
import { cli, tempDir } from './helpers.js';
import { BIN, built, requireBuild, startAgent, waitFor } from './split-helpers.js';
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';

requireBuild('agent-hardening.test.ts');

/** A 2-of-3 split store; the agent started with `agentArgs` and unsealed. */
async function unsealedAgent(agentArgs: string[] = []) {
  const cwd = await tempDir();
  const init = await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], { cwd });
  if (init.code !== 0) throw new Error(`init failed: ${init.stderr}`);
  const agent = await startAgent(cwd, agentArgs);
  const shares = ['shares/share-1-of-3.txt', 'shares/share-2-of-3.txt'];
  const u = await cli(['unseal', ...shares.flatMap((s) => ['--share-file', s])], { cwd });
  expect(u.code, u.stderr).toBe(0);
  expect(u.out).toContain('unsealed');
  return { cwd, agent, socket: path.join(cwd, '.keywarden', 'agent.sock'), pid: agent.child.pid as number };
}

async function rssKiB(pid: number): Promise<number> {
  const m = /^VmRSS:\s+(\d+) kB/m.exec(await readFile(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error('no VmRSS');
  return Number(m[1]);
}

interface Raw {
  conn: Socket;
  received(): string;
  closed(): boolean;
}

/** A raw connection to the agent that records what it receives and whether it was closed. */
function raw(socket: string, options: { read?: boolean } = {}): Promise<Raw> {
  return new Promise((resolve, reject) => {
    const conn = createConnection({ path: socket });
    let text = '';
    let closed = false;
    conn.on('error', () => {});
    conn.on('close', () => {
      closed = true;
    });
    if (options.read !== false) conn.on('data', (c: Buffer) => (text += c.toString('utf8')));
    conn.once('connect', () => resolve({ conn, received: () => text, closed: () => closed }));
    conn.once('error', reject);
  });
}

function statusOf(out: string): string {
  return /state:\s+(\w+)/.exec(out)?.[1] ?? out;
}

describe.skipIf(!built)('the agent against slow and hostile clients', () => {
  it('80 connections that never finish a line: status and seal still succeed, and each is dropped after --line-timeout', async () => {
    const { cwd, socket, agent } = await unsealedAgent(['--line-timeout', '1']);
    const hostile: Raw[] = [];
    for (let i = 0; i < 80; i++) {
      const r = await raw(socket);
      r.conn.write('{"id":1,"op":"sta'); // never finished
      hostile.push(r);
    }
    const status = await cli(['status'], { cwd });
    expect(status.code, status.stderr).toBe(0);
    expect(statusOf(status.out)).toBe('unsealed');
    const seal = await cli(['seal'], { cwd });
    expect(seal.code, seal.stderr).toBe(0);
    expect(statusOf((await cli(['status'], { cwd })).out)).toBe('sealed');

    // Every hostile connection goes: evicted to make room, or dropped with an answer at the line timeout.
    await waitFor(() => hostile.every((h) => h.closed()), 'the unfinished connections to be closed', 10_000);
    const timedOut = hostile.filter((h) => h.received() !== '');
    expect(timedOut.length).toBeGreaterThan(0);
    for (const h of timedOut) {
      expect(JSON.parse(h.received())).toEqual({
        id: null,
        ok: false,
        error: {
          code: 'KW_AGENT_PROTOCOL',
          message: 'agent: request line not finished within 1 s; closing the connection',
        },
      });
    }
    expect(agent.log()).toMatch(/connection limit \(64\) reached: closed \d+ connection/);
    expect(agent.child.exitCode).toBe(null);
  });

  it('a byte every half second does not keep a line open past --line-timeout', async () => {
    const { socket } = await unsealedAgent(['--line-timeout', '1']);
    const slow = await raw(socket);
    const drip = setInterval(() => slow.conn.write('{'), 500);
    try {
      await waitFor(() => slow.closed(), 'the dripping connection to be dropped', 10_000);
    } finally {
      clearInterval(drip);
    }
    expect(slow.received()).toContain('request line not finished within 1 s');
  });

  it('a client that pipelines thousands of requests without reading: the agent RSS stays bounded, others are served, it is dropped', async () => {
    const { cwd, socket, pid, agent } = await unsealedAgent(['--line-timeout', '3']);
    // Replies worth growing on: listKeys on 20 keys is ~7 KB a reply.
    for (let i = 0; i < 20; i++) {
      const r = await cli(
        [
          'key',
          'create',
          `tenant-${i}`,
          '--tenant',
          `t${i}`,
          '--purpose',
          'a-longer-purpose-string-to-make-replies-bigger',
        ],
        { cwd },
      );
      expect(r.code, r.stderr).toBe(0);
    }
    const before = await rssKiB(pid);
    const flood = await raw(socket, { read: false });
    flood.conn.pause();
    // 30 000 requests: answered in full without backpressure, ~200 MiB of replies.
    const batch = Buffer.from('{"id":1,"op":"listKeys"}\n'.repeat(1000));
    for (let i = 0; i < 30; i++) flood.conn.write(batch);
    let peak = before;
    const sample = async () => {
      peak = Math.max(peak, await rssKiB(pid));
    };
    for (let i = 0; i < 10; i++) {
      await new Promise((r) => setTimeout(r, 100));
      await sample();
    }
    // Another client is served meanwhile.
    const status = await cli(['status'], { cwd });
    expect(status.code, status.stderr).toBe(0);
    expect(statusOf(status.out)).toBe('unsealed');
    await sample();
    // Generous: the old agent grew by hundreds of MiB here.
    expect(peak - before).toBeLessThan(64 * 1024);
    // It never reads: dropped once a reply waited --line-timeout.
    await waitFor(() => flood.closed(), 'the non-reading client to be dropped', 15_000);
    flood.conn.destroy();
    expect(agent.child.exitCode).toBe(null);
    expect((await cli(['key', 'list'], { cwd })).code).toBe(0);
  });

  it('pipelined requests from a client that does read are all answered, in order', async () => {
    const { socket } = await unsealedAgent();
    const r = await raw(socket);
    const n = 500;
    r.conn.write(Array.from({ length: n }, (_, i) => `{"id":${i},"op":"status"}\n`).join(''));
    await waitFor(() => r.received().split('\n').length > n, 'every answer', 15_000);
    const ids = r
      .received()
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l).id);
    expect(ids).toEqual(Array.from({ length: n }, (_, i) => i));
    r.conn.destroy();
  });

  it('an idle connection is closed after --idle-timeout; a command whose connection went idle reconnects', async () => {
    const { cwd, socket } = await unsealedAgent(['--idle-timeout', '1']);
    const idle = await raw(socket);
    await waitFor(() => idle.closed(), 'the idle connection to be closed', 10_000);
    expect(idle.received()).toBe('');
    // In-process client: first request, idle past the timeout, second request on a new connection.
    const { AgentClient } = await import('@keywarden/agent');
    const client = await AgentClient.connect({ path: socket, display: 'agent.sock' });
    try {
      expect((await client.status()).sealed).toBe(false);
      await new Promise((r) => setTimeout(r, 2500));
      expect((await client.status()).sealed).toBe(false);
    } finally {
      await client.close();
    }
    expect((await cli(['status'], { cwd })).code).toBe(0);
  });

  it('a request line over 64 KiB is answered with an error and closes only that connection', async () => {
    const { cwd, socket } = await unsealedAgent();
    const long = await raw(socket);
    long.conn.write(Buffer.alloc(64 * 1024 + 1, 0x61));
    await waitFor(() => long.closed(), 'the connection to be closed', 10_000);
    expect(JSON.parse(long.received()).error).toEqual({
      code: 'KW_AGENT_PROTOCOL',
      message: 'agent: request longer than 64 KiB; closing the connection',
    });
    expect(statusOf((await cli(['status'], { cwd })).out)).toBe('unsealed');
  });
});

describe.skipIf(!built)('the agent and debuggers', () => {
  it('SIGUSR1 to an unsealed agent opens no inspector: nothing listens on 127.0.0.1:9229 and it still serves', async () => {
    const { cwd, agent } = await unsealedAgent();
    agent.child.kill('SIGUSR1');
    await new Promise((r) => setTimeout(r, 1000));
    const listening = await new Promise<boolean>((resolve) => {
      const c = createConnection({ host: '127.0.0.1', port: 9229 });
      c.once('connect', () => {
        c.destroy();
        resolve(true);
      });
      c.once('error', () => resolve(false));
    });
    expect(listening).toBe(false);
    expect(agent.log()).not.toMatch(/Debugger listening/);
    expect(agent.child.exitCode).toBe(null);
    expect(statusOf((await cli(['status'], { cwd })).out)).toBe('unsealed');
  });

  it('an agent with an active inspector refuses to start, unless --allow-inspector', async () => {
    const cwd = await tempDir();
    expect((await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], { cwd })).code).toBe(0);
    const run = (args: string[]) =>
      new Promise<{ code: number | null; stderr: string; child: ReturnType<typeof spawn> }>((resolve) => {
        const child = spawn(process.execPath, ['--inspect=127.0.0.1:0', BIN, 'agent', ...args], {
          cwd,
          env: { PATH: process.env.PATH },
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr.on('data', (c: Buffer) => {
          stderr += c.toString('utf8');
          if (/keywarden agent: serving /.test(stderr)) resolve({ code: null, stderr, child });
        });
        child.on('exit', (code) => resolve({ code, stderr, child }));
      });
    const refused = await run([]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(
      /keywarden: agent: a Node inspector \(debugger\) is active in this process \(ws:\/\/127\.0\.0\.1:\d+\/[^)]*\); refusing to hold the root/,
    );
    expect(existsSync(path.join(cwd, '.keywarden', 'agent.sock'))).toBe(false);

    const allowed = await run(['--allow-inspector']);
    try {
      expect(allowed.code).toBe(null);
      expect(allowed.stderr).toMatch(/WARNING: a Node inspector is active/);
    } finally {
      allowed.child.kill('SIGKILL');
    }
  });

  it('SIGHUP and SIGQUIT stop the agent like SIGTERM: exit 0, socket removed (no core dump from SIGQUIT)', async () => {
    for (const signal of ['SIGHUP', 'SIGQUIT'] as const) {
      const { agent, socket } = await unsealedAgent();
      expect(await agent.stop(signal)).toBe(0);
      expect(agent.log()).toContain('stopped: the root and the KEK cache were wiped');
      expect(existsSync(socket)).toBe(false);
    }
  });
});
