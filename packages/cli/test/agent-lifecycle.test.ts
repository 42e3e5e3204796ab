/**
 * `keywarden key disable|enable|compromise|destroy NAME --version N --socket PATH` through real
 * agent processes (dist/bin.js, `keywarden agent --listen`, so they serve authenticated principals
 * on their unix sockets too) on one split-knowledge store, run from a directory that holds no
 * key-store folder, as on a fleet: a version disabled through one agent is refused by the other;
 * the principal's policy decides; the destroy safeguards hold; a compromise rotates.
 */
import * as path from 'node:path';
import { AgentClient, issueAgentCredential } from '@keywarden/agent';
import { KeywardenError, writeStoredPolicy } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { makePki, type TestPki } from '@keywarden/testkit/tls-certs';
import { cli, tempDir } from './helpers.js';
import { built, requireBuild, startAgent, waitFor } from './split-helpers.js';

requireBuild('agent-lifecycle.test.ts');

let pki: TestPki;
beforeAll(() => {
  pki = makePki();
});
afterAll(() => pki?.remove());

const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e as Error,
  );

describe.skipIf(!built)('key lifecycle commands through an agent (--socket)', () => {
  it('disable through one agent, refused by the other; KW_DENIED without the permission; destroy safeguards; compromise rotates', async () => {
    const cwd = await tempDir();
    const init = await cli(['init', '--shares', '3', '--threshold', '2', '--share-dir', 'shares'], { cwd });
    expect(init.code, init.stderr).toBe(0);
    const shares = [1, 2].map((i) => path.join(cwd, 'shares', `share-${i}-of-3.txt`));
    const store = SqliteKeyStore.open(path.join(cwd, '.keywarden', 'keystore.db'));
    await writeStoredPolicy(
      store,
      'keywarden-policy 1\nprincipal admin\nprincipal app\nallow admin * on *\nallow app encrypt,decrypt,generate-data-key on *\n',
    );
    const admin = (await issueAgentCredential(store, 'admin')).token;
    const app = (await issueAgentCredential(store, 'app')).token;
    await store.close();

    const tls = [
      '--tls-cert',
      pki.server.certFile,
      '--tls-key',
      pki.server.keyFile,
      '--tls-client-ca',
      pki.ca.certFile,
    ];
    const a = await startAgent(cwd, ['start', '--socket', 'a.sock', '--listen', 'tcp://127.0.0.1:0', ...tls]);
    const b = await startAgent(cwd, ['start', '--socket', 'b.sock', '--listen', 'tcp://127.0.0.1:0', ...tls]);
    await waitFor(() => /listening on tls:/.test(a.log()) && /listening on tls:/.test(b.log()), 'both listeners');
    for (const sock of ['a.sock', 'b.sock']) {
      for (const f of shares) {
        const r = await cli(['--socket', sock, 'unseal', '--share-file', f], { cwd });
        expect(r.code, r.stderr).toBe(0);
      }
    }
    const aSock = path.join(cwd, 'a.sock');
    const bSock = path.join(cwd, 'b.sock');
    const clients: AgentClient[] = [];
    try {
      const adminA = await AgentClient.connect(aSock, { credential: admin });
      const appA = await AgentClient.connect(aSock, { credential: app });
      const appB = await AgentClient.connect(bSock, { credential: app });
      clients.push(adminA, appA, appB);
      await adminA.createKey('orders');
      const dk = await appA.generateDataKey('orders');
      expect((await adminA.rotateKey('orders')).primaryVersion).toBe(2);

      // A fleet operator's machine: no key-store folder here, only the agent's socket and a token.
      const ops = await tempDir();
      const as = (token: string) => ({ cwd: ops, env: { KEYWARDEN_AGENT_TOKEN: token } });

      const disabled = await cli(['key', 'disable', 'orders', '--version', '1', '--socket', aSock], as(admin));
      expect(disabled.stderr).toBe('');
      expect(disabled.out).toBe('Disabled orders v1.\n');
      expect(disabled.code).toBe(0);
      // The other agent (which never used the key) refuses the version.
      const refused = await failure(appB.decryptDataKey(dk.wrapped, undefined, { key: 'orders' }));
      expect(KeywardenError.isInstance(refused, 'KW_KEY_STATE')).toBe(true);

      // A principal without the permission: KW_DENIED, exit 1, nothing changed.
      const denied = await cli(['--socket', bSock, 'key', 'destroy', 'orders', '--version', '1', '--force'], as(app));
      expect(denied.code).toBe(1);
      expect(denied.stderr).toBe(
        'keywarden: policy: principal "app" may not destroy key "orders" (no rule allows it)\n',
      );
      expect((await appB.getKey('orders')).versions.map((v) => v.state)).toEqual(['disabled', 'enabled']);

      // Destroy: the grace period unless --force; the CLI names the flag.
      const grace = await cli(['key', 'destroy', 'orders', '--version', '1', '--socket', bSock], as(admin));
      expect(grace.code).toBe(1);
      expect(grace.stderr).toBe(
        'keywarden: key "orders" v1 became disabled less than the grace period ago; destroy it in 168 h, or force it with --force\n',
      );
      const destroyed = await cli(
        ['key', 'destroy', 'orders', '--version', '1', '--force', '--json', '--socket', bSock],
        as(admin),
      );
      expect(destroyed.code, destroyed.stderr).toBe(0);
      expect(
        (JSON.parse(destroyed.out) as { versions: Array<{ state: string }> }).versions.map((v) => v.state),
      ).toEqual(['destroyed', 'enabled']);

      // The primary cannot be disabled; compromising it rotates in the same change.
      const primary = await cli(['key', 'disable', 'orders', '--version', '2', '--socket', aSock], as(admin));
      expect(primary.code).toBe(1);
      expect(primary.stderr).toMatch(/with --confirm-last-version\n$/);
      const compromised = await cli(
        ['key', 'compromise', 'orders', '--version', '2', '--json', '--socket', aSock],
        as(admin),
      );
      expect(compromised.code, compromised.stderr).toBe(0);
      const report = JSON.parse(compromised.out) as { rotatedTo: number; unreadableVersions: number[] };
      expect(report.rotatedTo).toBe(3);
      expect(report.unreadableVersions).toEqual([2]);
      expect((await appB.generateDataKey('orders')).version).toBe(3);
      const enable = await cli(['key', 'enable', 'orders', '2', '--socket', aSock], as(admin));
      expect(enable.code).toBe(1);
      expect(enable.stderr).toBe('keywarden: key "orders" v2 is compromised and can never be enabled again\n');

      // No agent on the socket: the usual error, no folder looked for.
      const none = await cli(['key', 'enable', 'orders', '1', '--socket', path.join(ops, 'x.sock')], as(admin));
      expect(none.code).toBe(1);
      expect(none.stderr).toMatch(/no agent running on/);
    } finally {
      for (const c of clients) await c.close().catch(() => {});
      await a.stop();
      await b.stop();
    }
  }, 120_000);
});
