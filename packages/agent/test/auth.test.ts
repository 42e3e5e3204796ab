/**
 * Agent authentication against a real agent process (test/fixtures/auth-agent.mjs): unauthenticated
 * and out-of-policy requests are refused, each principal gets exactly its policy, revoking a
 * credential cuts the principal's open connections, and every request leaves a verifiable record.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import { AccessDeniedError, verifyAuditLog } from '@keywarden/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/client.js';
import { checkAgentCredential, issueAgentCredential, readAgentCredentials } from '../src/credentials.js';
import { MemoryKeyStore } from '@keywarden/core';

const FIXTURE = fileURLToPath(new URL('./fixtures/auth-agent.mjs', import.meta.url));
let child: ChildProcess;
let dir: string;
let socket: string;
let tokens: Record<string, string>;
const messages: Array<Record<string, unknown>> = [];
const waiters: Array<(m: Record<string, unknown>) => void> = [];
const clients: AgentClient[] = [];

function next(): Promise<Record<string, unknown>> {
  const m = messages.shift();
  if (m) return Promise.resolve(m);
  return new Promise((resolve) => waiters.push(resolve));
}

async function connect(credential?: string): Promise<AgentClient> {
  const c = await AgentClient.connect(socket, credential ? { credential } : {});
  clients.push(c);
  return c;
}

beforeAll(async () => {
  dir = await mkdtemp(path.join(tmpdir(), 'kw-auth-'));
  socket = path.join(dir, 'agent.sock');
  child = spawn(process.execPath, [FIXTURE, socket, path.join(dir, 'audit.jsonl')], {
    stdio: ['pipe', 'pipe', 'inherit'],
    env: { ...process.env, KEYWARDEN_AGENT_TOKEN: '' },
  });
  createInterface({ input: child.stdout as NodeJS.ReadableStream }).on('line', (l) => {
    const m = JSON.parse(l) as Record<string, unknown>;
    const w = waiters.shift();
    if (w) w(m);
    else messages.push(m);
  });
  const ready = await next();
  tokens = ready.tokens as Record<string, string>;
}, 20_000);

afterAll(async () => {
  for (const c of clients) await c.close().catch(() => {});
  if (child.exitCode === null) {
    const exited = new Promise((r) => child.once('exit', r));
    child.kill('SIGTERM');
    await exited;
  }
  await rm(dir, { recursive: true, force: true });
});

describe('the agent authenticates its callers', () => {
  it('refuses every key operation to a connection without a credential (status stays open)', async () => {
    const anon = await connect();
    expect((await anon.status()).sealed).toBe(false);
    await expect(anon.generateDataKey('orders/main')).rejects.toBeInstanceOf(AccessDeniedError);
    await expect(anon.getKey('orders/main')).rejects.toThrow(/authenticated principals only/);
    await expect(anon.seal()).rejects.toBeInstanceOf(AccessDeniedError);
  });

  it('refuses a wrong, forged or mistyped credential at hello', async () => {
    const forged = `${tokens.app?.slice(0, -4)}AAAA`;
    await expect(connect(forged)).rejects.toBeInstanceOf(AccessDeniedError);
    await expect(connect('kwagent1.admin.nottherightshape')).rejects.toThrow(/credential was not accepted/);
    // A principal's token does not work for another principal.
    const swapped = (tokens.app as string).replace('kwagent1.app.', 'kwagent1.admin.');
    await expect(connect(swapped)).rejects.toBeInstanceOf(AccessDeniedError);
  });

  it("applies each principal's policy to every request", async () => {
    const app = await connect(tokens.app);
    const dk = await app.generateDataKey('orders/main', { order: 'o-1' });
    const dek = await app.decryptDataKey(dk.wrapped, { order: 'o-1' }, { key: 'orders/main' });
    expect(Buffer.from(dek).equals(Buffer.from(dk.plaintext))).toBe(true);
    await expect(app.generateDataKey('hr/payroll')).rejects.toThrow(
      'policy: principal "app" may not generate-data-key key "hr/payroll" (no rule allows it)',
    );
    await expect(app.rotateKey('orders/main')).rejects.toBeInstanceOf(AccessDeniedError);
    await expect(app.createKey('orders/other', { scope: { environment: 'prod' } })).rejects.toBeInstanceOf(
      AccessDeniedError,
    );
    await expect(app.seal()).rejects.toBeInstanceOf(AccessDeniedError);
    // Environment separation: devapp may do anything by its rules, but not with a prod key.
    const dev = await connect(tokens.devapp);
    await dev.generateDataKey('orders/dev');
    await expect(dev.generateDataKey('orders/main')).rejects.toThrow(
      /is for environment prod and principal "devapp" acts in dev/,
    );
    // A credential for a principal the policy does not name gets nothing.
    const ghost = await connect(tokens.ghost);
    await expect(ghost.generateDataKey('orders/main')).rejects.toThrow(/not a principal of this key store/);
    const admin = await connect(tokens.admin);
    expect((await admin.rotateKey('orders/main')).primaryVersion).toBe(2);
  });

  it("revoking a principal's credential cuts its open connections", async () => {
    const dev = await connect(tokens.devapp);
    await dev.generateDataKey('orders/dev');
    child.stdin?.write('revoke devapp\n');
    expect(await next()).toEqual({ revoked: 'devapp' });
    // The agent re-reads the credentials every second and drops the connection; the client's
    // reconnect presents the revoked token and is refused.
    let err: unknown;
    for (let i = 0; i < 40 && err === undefined; i++) {
      await new Promise((r) => setTimeout(r, 100));
      try {
        await dev.generateDataKey('orders/dev');
      } catch (e) {
        err = e;
      }
    }
    expect(AccessDeniedError.isInstance(err) || /closed|connection/i.test(String(err))).toBe(true);
    await expect(connect(tokens.devapp)).rejects.toBeInstanceOf(AccessDeniedError);
  });

  it('every request, allowed or denied, is in the audit log, which verifies', async () => {
    child.stdin?.write('verify\n');
    const m = (await next()) as { verify: { ok: boolean; verified: number }; records: string[][] };
    expect(m.verify.ok).toBe(true);
    expect(m.records).toContainEqual(['app', 'generate-data-key', 'ok']);
    expect(m.records).toContainEqual(['app', 'generate-data-key', 'denied']);
    expect(m.records).toContainEqual(['devapp', 'generate-data-key', 'denied']);
    expect(m.records).toContainEqual(['admin', 'rotate-key', 'ok']);
    // The JSONL file holds the same chain.
    const lines = (await readFile(path.join(dir, 'audit.jsonl'), 'utf8')).trim().split('\n');
    expect(lines.length).toBe(m.verify.verified);
    expect(lines.join('\n').split(/[^\w-]+/)).not.toContain('o-1'); // a whole token: a MAC may hold the letters
    void verifyAuditLog;
  });
});

describe('credentials', () => {
  it('are stored only as a digest, and checked against it', async () => {
    const store = new MemoryKeyStore();
    const { token } = await issueAgentCredential(store, 'svc');
    const doc = await readAgentCredentials(store);
    const secret = token.split('.')[2] as string;
    expect(JSON.stringify(doc)).not.toContain(secret);
    expect(checkAgentCredential(doc, token)).toBe('svc');
    expect(() => checkAgentCredential(doc, `${token.slice(0, -1)}${token.endsWith('A') ? 'B' : 'A'}`)).toThrow(
      AccessDeniedError,
    );
    expect(() => checkAgentCredential(doc, 42)).toThrow(AccessDeniedError);
    // Re-issuing replaces the old token.
    const again = await issueAgentCredential(store, 'svc');
    const after = await readAgentCredentials(store);
    expect(() => checkAgentCredential(after, token)).toThrow(AccessDeniedError);
    expect(checkAgentCredential(after, again.token)).toBe('svc');
  });
});
