/**
 * `keywarden agent start --listen tcp://…` (a real agent process from dist/bin.js) with mutual TLS,
 * certificates made by openssl at test time, and `keywarden agent seal --all` over a fleet of two
 * agents on one store: one reached on its unix socket, one over TLS.
 */
import { chmod, readFile } from 'node:fs/promises';
import * as path from 'node:path';
import { AgentClient } from '@keywarden/agent';
import { writeStoredPolicy } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makePki, type TestPki } from '@keywarden/testkit/tls-certs';
import { cli, tempDir } from './helpers.js';
import { requireBuild, startAgent, waitFor } from './split-helpers.js';

requireBuild('agent-tls.test.ts');

let pki: TestPki;
beforeAll(() => {
  pki = makePki();
});
afterAll(() => pki?.remove());

async function splitStore(): Promise<{ cwd: string; shares: string[] }> {
  const cwd = await tempDir();
  const r = await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], { cwd });
  if (r.code !== 0) throw new Error(`init failed: ${r.stderr}`);
  return { cwd, shares: [1, 2].map((i) => path.join(cwd, 'shares', `share-${i}-of-3.txt`)) };
}

function tlsArgs(): string[] {
  return ['--tls-cert', pki.server.certFile, '--tls-key', pki.server.keyFile, '--tls-client-ca', pki.ca.certFile];
}

function portOf(log: string): number {
  const m = /keywarden agent: listening on tls:\/\/127\.0\.0\.1:(\d+) \(mutual TLS 1\.3/.exec(log);
  if (!m) throw new Error(`no listening line in:\n${log}`);
  return Number(m[1]);
}

describe('keywarden agent start --listen', () => {
  it('serves a remote client with a certificate from the client CA; unseal over TLS; the key is never logged', async () => {
    const { cwd, shares } = await splitStore();
    await chmod(pki.server.keyFile, 0o600);
    const agent = await startAgent(cwd, ['start', '--listen', 'tcp://127.0.0.1:0', ...tlsArgs()]);
    await waitFor(() => /listening on tls:/.test(agent.log()), 'the listening line');
    const port = portOf(agent.log());
    const admin = pki.client('admin');
    const c = await AgentClient.connect({
      host: '127.0.0.1',
      port,
      tls: { cert: admin.cert, key: admin.key, ca: pki.ca.cert },
    });
    expect((await c.status()).sealed).toBe(true);
    for (const f of shares) await c.unseal((await readFile(f, 'utf8')).trim());
    expect((await c.status()).sealed).toBe(false);
    await c.close();
    // A client certificate from another CA is refused, and the agent says why in its log.
    const foreign = pki.foreign('admin');
    await expect(
      AgentClient.connect({ host: '127.0.0.1', port, tls: { cert: foreign.cert, key: foreign.key, ca: pki.ca.cert } }),
    ).rejects.toThrow("agent: the client certificate was not issued by this agent's client CA");
    await waitFor(
      () => /refused a TLS client from 127\.0\.0\.1:\d+: the client certificate was not issued/.test(agent.log()),
      'the refusal in the log',
    );
    const key = (await readFile(pki.server.keyFile, 'utf8')).split('\n')[1] as string;
    expect(agent.log()).not.toContain(key);
    expect(agent.log()).not.toMatch(/PRIVATE KEY|warning: TLS key file/);
    expect(await agent.stop()).toBe(0);
  }, 60_000);

  it('a TLS key file group or others can read: warned about, like every secret file', async () => {
    const { cwd } = await splitStore();
    await chmod(pki.server.keyFile, 0o644);
    try {
      const agent = await startAgent(cwd, ['start', '--listen', 'tcp://127.0.0.1:0', ...tlsArgs()]);
      expect(agent.log()).toContain(
        `keywarden: warning: TLS key file ${pki.server.keyFile} is accessible to group or others (mode 644); run chmod 600 on it`,
      );
      expect(await agent.stop()).toBe(0);
    } finally {
      await chmod(pki.server.keyFile, 0o600);
    }
  }, 60_000);

  it('--listen without the TLS files, or a listen address that is not tcp://HOST:PORT: usage errors', async () => {
    const { cwd } = await splitStore();
    const r = await cli(['agent', 'start', '--listen', 'tcp://127.0.0.1:0', '--tls-cert', pki.server.certFile], {
      cwd,
    });
    expect(r.code).toBe(2);
    expect(r.stderr).toContain(
      'keywarden: agent: --listen needs --tls-cert, --tls-key and --tls-client-ca (remote clients use mutual TLS only)',
    );
    const bad = await cli(['agent', 'start', '--listen', 'http://x:1', ...tlsArgs()], { cwd });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/--listen.*must be tcp:\/\/HOST:PORT/);
  }, 60_000);
});

describe('keywarden agent seal --all', () => {
  it('seals every agent listed (unix socket and TLS), and reports one that does not answer (exit 1)', async () => {
    const { cwd, shares } = await splitStore();
    // The TLS agent serves principals: "admin" may administer (and so seal).
    const store = SqliteKeyStore.open(path.join(cwd, '.keywarden', 'keystore.db'));
    await writeStoredPolicy(store, 'keywarden-policy 1\nprincipal admin\nallow admin * on *\n');
    await store.close();
    const a = await startAgent(cwd, ['start', '--socket', 'a.sock']);
    const b = await startAgent(cwd, ['start', '--socket', 'b.sock', '--listen', 'tcp://127.0.0.1:0', ...tlsArgs()]);
    await waitFor(() => /listening on tls:/.test(b.log()), 'the listening line');
    const port = portOf(b.log());
    for (const sock of ['a.sock', 'b.sock']) {
      for (const f of shares) {
        const r = await cli(['--socket', sock, 'unseal', '--share-file', f], { cwd });
        expect(r.code, r.stderr).toBe(0);
      }
    }
    const admin = pki.client('admin');
    const args = ['--tls-cert', admin.certFile, '--tls-key', admin.keyFile, '--tls-ca', pki.ca.certFile];
    const r = await cli(['agent', 'seal', '--all', 'a.sock', `tcp://127.0.0.1:${port}`, 'gone.sock', ...args], {
      cwd,
    });
    expect(r.out).toBe(
      [
        'sealed      a.sock',
        `sealed      tls://127.0.0.1:${port}`,
        'not sealed  gone.sock: no agent running on gone.sock',
        '',
      ].join('\n'),
    );
    expect(r.code).toBe(1);
    expect(r.stderr).toContain('keywarden: agent seal: 1 of 3 agents were not sealed');
    for (const sock of ['a.sock', 'b.sock']) {
      const s = await cli(['--socket', sock, 'status'], { cwd });
      expect(s.out).toMatch(/sealed/i);
      expect(s.out).not.toMatch(/unsealed/i);
    }
    const usage = await cli(['agent', 'seal', 'a.sock'], { cwd });
    expect(usage.code).toBe(2);
    expect(usage.stderr).toContain('agent seal: pass --all with the agents to seal');
    expect(await a.stop()).toBe(0);
    expect(await b.stop()).toBe(0);
  }, 90_000);
});
