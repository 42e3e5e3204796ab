/**
 * Key commands over a remote agent's mutual-TLS listener: `keywarden --agent tls://HOST:PORT
 * --tls-cert --tls-key --tls-ca key disable|enable|compromise|destroy|create|rotate …` (and
 * encrypt/decrypt/datakey, unseal, seal), from a directory with no key-store folder, against a real agent process
 * (dist/bin.js, `agent start --listen`) with certificates made by openssl at test time. The
 * certificate names the principal; the store's policy decides; a principal without the policy, a
 * client certificate from another CA, and an agent certificate from another CA are refused in one
 * line without a stack trace.
 */
import { chmod, writeFile } from 'node:fs/promises';
import * as path from 'node:path';
import { writeStoredPolicy } from '@keywarden/core';
import { SqliteKeyStore } from '@keywarden/store-sqlite';
import { makePki, type Pem, type TestPki } from '@keywarden/testkit/tls-certs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cli, tempDir } from './helpers.js';
import { requireBuild, sharesIn, startAgent, waitFor } from './split-helpers.js';

requireBuild('agent-remote-cli.test.ts');

let pki: TestPki;
let admin: Pem;
let reader: Pem;
beforeAll(async () => {
  pki = makePki();
  admin = pki.client('admin');
  reader = pki.client('reader');
  for (const p of [admin, reader, pki.server]) await chmod(p.keyFile, 0o600);
});
afterAll(() => pki?.remove());

const POLICY = `keywarden-policy 1
principal admin
principal reader
allow admin * on *
allow reader encrypt,decrypt,generate-data-key on *
`;

/** A split-knowledge folder served by an unsealed agent that also listens on TCP (mutual TLS). */
async function remoteAgent(): Promise<{ cwd: string; port: number; stop: () => Promise<number | null> }> {
  const cwd = await tempDir();
  const init = await cli(['init', '--shares', '3', '--threshold', '2'], { cwd });
  expect(init.code, init.stderr).toBe(0);
  const shares = sharesIn(init.out);
  const store = SqliteKeyStore.open(path.join(cwd, '.keywarden', 'keystore.db'));
  await writeStoredPolicy(store, POLICY);
  await store.close();
  const agent = await startAgent(cwd, [
    'start',
    '--listen',
    'tcp://127.0.0.1:0',
    '--tls-cert',
    pki.server.certFile,
    '--tls-key',
    pki.server.keyFile,
    '--tls-client-ca',
    pki.ca.certFile,
  ]);
  await waitFor(() => /listening on tls:/.test(agent.log()), 'the listening line');
  const port = Number(/listening on tls:\/\/127\.0\.0\.1:(\d+)/.exec(agent.log())?.[1]);
  // One custodian at the agent's host (its unix socket), one remote (mutual TLS, no folder).
  await writeFile(path.join(cwd, 's0.txt'), `${shares[0]}\n`, { mode: 0o600 });
  const local = await cli(['unseal', '--share-file', 's0.txt'], { cwd });
  expect(local.code, local.stderr).toBe(0);
  const away = await tempDir();
  await writeFile(path.join(away, 's1.txt'), `${shares[1]}\n`, { mode: 0o600 });
  const remote = await cli(['--agent', `tls://127.0.0.1:${port}`, ...as(admin), 'unseal', '--share-file', 's1.txt'], {
    cwd: away,
  });
  expect(remote.code, remote.stderr).toBe(0);
  expect(remote.out).toMatch(/unsealed/);
  return { cwd, port, stop: () => agent.stop() };
}

function as(p: Pem, ca = pki.ca.certFile): string[] {
  return ['--tls-cert', p.certFile, '--tls-key', p.keyFile, '--tls-ca', ca];
}

describe('key commands over --agent tls://HOST:PORT', () => {
  it('a remote custodian unseals; a permitted principal changes a version, one without the policy is refused, wrong CAs are refused; the admin seals', async () => {
    const agent = await remoteAgent();
    // No key-store folder here: everything goes to the remote agent.
    const away = await tempDir();
    const at = ['--agent', `tls://127.0.0.1:${agent.port}`];
    const run = (args: string[], env: NodeJS.ProcessEnv = {}) => cli(args, { cwd: away, env });

    const created = await run([...at, ...as(admin), 'key', 'create', 'orders']);
    expect(created.stderr).toBe('');
    expect(created.out).toMatch(/^Created key orders \(kek_[^,]+, v1\)\.\n$/);
    const rotated = await run(['key', 'rotate', 'orders', ...at, ...as(admin)]);
    expect(rotated.out).toMatch(/primary is now v2\.\n$/);

    const disabled = await run(['key', 'disable', 'orders', '--version', '1', ...at, ...as(admin)]);
    expect(disabled.stderr).toBe('');
    expect(disabled.code).toBe(0);
    expect(disabled.out).toMatch(/orders v1/);
    const json = await run(['key', 'enable', 'orders', '--version', '1', '--json', ...at, ...as(admin)]);
    expect(json.code, json.stderr).toBe(0);
    const info = JSON.parse(json.out) as { versions: Array<{ version: number; state: string }> };
    expect(info.versions.find((v) => v.version === 1)?.state).toBe('enabled');

    // The reader may use keys but not change them: the agent's policy refuses, in one line.
    const denied = await run(['key', 'disable', 'orders', '--version', '1', ...at, ...as(reader)]);
    expect(denied.code).toBe(1);
    expect(denied.stderr).toBe(
      'keywarden: policy: principal "reader" may not disable key "orders" (no rule allows it)\n',
    );
    expect(denied.stderr).not.toMatch(/\n\s+at /);
    expect(denied.out).toBe('');

    // The same reader through the environment: a data key, then an envelope round trip.
    const env = {
      KEYWARDEN_AGENT: `tls://127.0.0.1:${agent.port}`,
      KEYWARDEN_AGENT_TLS_CERT: reader.certFile,
      KEYWARDEN_AGENT_TLS_KEY: reader.keyFile,
      KEYWARDEN_AGENT_TLS_CA: pki.ca.certFile,
    };
    const dk = await run(['datakey', 'orders'], env);
    expect(dk.code, dk.stderr).toBe(0);
    expect(JSON.parse(dk.out)).toMatchObject({ version: 2 });
    const enc = await cli(['encrypt', '--key', 'orders', '--text'], { cwd: away, env, stdin: 'hello fleet' });
    expect(enc.code, enc.stderr).toBe(0);
    const dec = await cli(['decrypt', '--key', 'orders'], { cwd: away, env, stdin: enc.out });
    expect(dec.code, dec.stderr).toBe(0);
    expect(dec.out).toBe('hello fleet');

    // A client certificate from another CA: the agent refuses it.
    const foreign = pki.foreign('admin');
    await chmod(foreign.keyFile, 0o600);
    const refused = await run(['key', 'disable', 'orders', '--version', '1', ...at, ...as(foreign)]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toBe("keywarden: agent: the client certificate was not issued by this agent's client CA\n");
    // An agent whose certificate the client's CA did not issue: the client refuses it.
    const wrongCa = await run([
      'key',
      'disable',
      'orders',
      '--version',
      '1',
      ...at,
      ...as(admin, pki.otherCa.certFile),
    ]);
    expect(wrongCa.code).toBe(1);
    expect(wrongCa.stderr).toBe(
      `keywarden: agent: tls://127.0.0.1:${agent.port}: the agent's certificate was not issued by the CA this client trusts\n`,
    );
    expect(wrongCa.stderr).not.toMatch(/\n\s+at /);

    // Nothing was changed by the refused requests: v1 is still enabled.
    const shown = await run(['key', 'enable', 'orders', '--version', '1', '--json', ...at, ...as(admin)]);
    expect(JSON.parse(shown.out).versions.find((v: { version: number }) => v.version === 1)?.state).toBe('enabled');

    // Sealing over TLS is an administrator's: the reader is refused, the admin seals.
    const notAdmin = await run([...at, ...as(reader), 'seal']);
    expect(notAdmin.code).toBe(1);
    expect(notAdmin.stderr).toMatch(/^keywarden: agent: seal: [^\n]*\n$/);
    // status through --agent: the remote agent's own answer, no folder here.
    const up = await run([...at, ...as(reader), 'status', '--json']);
    expect(up.code, up.stderr).toBe(0);
    expect(JSON.parse(up.out)).toMatchObject({
      mode: 'agent',
      agent: `tls://127.0.0.1:${agent.port}`,
      sealed: false,
      threshold: 2,
      shares: 3,
    });
    const sealed = await run([...at, ...as(admin), 'seal']);
    expect(sealed.code, sealed.stderr).toBe(0);
    expect(sealed.out).toBe('sealed\n');
    const down = await run([...at, ...as(reader), 'status']);
    expect(down.code, down.stderr).toBe(0);
    expect(down.out).toMatch(/^agent: +tls:\/\/127\.0\.0\.1:\d+ \(pid \d+\)\n/);
    expect(down.out).toMatch(/\nunseal: +any 2 of 3 shares of share set \S+\n/);
    expect(down.out).toMatch(/\nstate: +sealed, unseal progress 0 of 2\n/);
    const refused2 = await run(['datakey', 'orders', ...at, ...as(reader)]);
    expect(refused2.code).toBe(1);
    expect(refused2.stderr).toMatch(/^keywarden: keystore: sealed/);
    expect(await agent.stop()).toBe(0);
  }, 120_000);

  it('usage errors: a TLS endpoint without the files, TLS files without --agent, --agent with --socket', async () => {
    const cwd = await tempDir();
    const noFiles = await cli(['--agent', 'tls://127.0.0.1:1', 'key', 'disable', 'k', '--version', '1'], { cwd });
    expect(noFiles.code).toBe(2);
    expect(noFiles.stderr).toContain(
      "keywarden: --agent tls://127.0.0.1:1 needs this client's --tls-cert, --tls-key and --tls-ca (or $KEYWARDEN_AGENT_TLS_CERT, $KEYWARDEN_AGENT_TLS_KEY, $KEYWARDEN_AGENT_TLS_CA)",
    );
    const stray = await cli(['key', 'disable', 'k', '--version', '1', '--socket', 'a.sock', ...as(admin)], { cwd });
    expect(stray.code).toBe(2);
    expect(stray.stderr).toContain('keywarden: --tls-cert, --tls-key and --tls-ca go with --agent tls://HOST:PORT');
    const both = await cli(['--agent', 'x.sock', '--socket', 'a.sock', 'key', 'enable', 'k', '--version', '1'], {
      cwd,
    });
    expect(both.code).toBe(2);
    expect(both.stderr).toContain('keywarden: --agent and --socket both name the agent: give one');
    // Not ignored where it does not apply: `key list` must not answer from a local folder instead.
    const listed = await cli(['--agent', 'tls://127.0.0.1:1', 'key', 'list'], { cwd });
    expect(listed.code).toBe(2);
    expect(listed.stderr).toContain('keywarden: --agent does not apply to `key list`');
    const list = await cli(['key', 'list', ...as(admin)], { cwd });
    expect(list.code).toBe(2);
    expect(list.stderr).toContain('keywarden: --tls-cert, --tls-key and --tls-ca do not apply to `key list`');
    const bad = await cli(['--agent', 'http://h:1', 'key', 'enable', 'k', '--version', '1'], { cwd });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toContain('keywarden: --agent: http://h:1: an agent endpoint is tcp://HOST:PORT');
  }, 60_000);
});
