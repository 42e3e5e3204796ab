/**
 * Remote clients over mutual TLS 1.3 (docs/agent-protocol.md §1.1), against a real AgentServer on a
 * loopback port with certificates made by openssl at test time (test/_certs.ts): a client with a
 * certificate from the client CA works and acts as the principal its certificate names; no
 * certificate, a certificate from another CA, an expired certificate, a TLS 1.2-only client and a
 * certificate naming no principal are refused with clear errors; revoking the principal cuts its
 * live connection and refuses its next one.
 */
import { randomBytes } from 'node:crypto';
import { type ConnectionOptions, connect as tlsConnect } from 'node:tls';
import { AccessDeniedError, Keywarden, MemoryKeyStore, SoftwareRoot, writeStoredPolicy } from '@keywarden/core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { AgentClient } from '../src/client.js';
import { admitAgentPrincipal, issueAgentCredential, revokeAgentCredential } from '../src/credentials.js';
import { AgentServer } from '../src/server.js';
import { makePki, type Pem, type TestPki } from '@keywarden/testkit/tls-certs';

let pki: TestPki;
let store: MemoryKeyStore;
let agent: AgentServer;
let port: number;
const log: string[] = [];
const clients: AgentClient[] = [];

beforeAll(async () => {
  pki = makePki();
  store = new MemoryKeyStore();
  const root = await SoftwareRoot.initialize(store, { unsealKey: new Uint8Array(randomBytes(32)) });
  await writeStoredPolicy(
    store,
    `keywarden-policy 1
principal app    environment=prod
principal admin  environment=prod
allow app    encrypt,decrypt,generate-data-key on orders/*
allow admin  *                                 on *
`,
  );
  const setup = new Keywarden({ store, root });
  await setup.createKey('orders/main', { scope: { environment: 'prod' } });
  await setup.createKey('hr/payroll', { scope: { environment: 'prod' } });
  await setup.close();
  const dir = pki.dir;
  agent = await AgentServer.start({
    socket: `${dir}/agent.sock`,
    store,
    root,
    ownsRoot: true,
    log: (l) => log.push(l),
    listen: { host: '127.0.0.1', port: 0, tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca.cert } },
  });
  port = agent.tcpAddress?.port as number;
}, 60_000);

afterAll(async () => {
  for (const c of clients) await c.close().catch(() => {});
  await agent?.close();
  pki?.remove();
});

async function connect(pem: Pem): Promise<AgentClient> {
  const c = await AgentClient.connect(
    { host: '127.0.0.1', port, tls: { cert: pem.cert, key: pem.key, ca: pki.ca.cert } },
    { connectTimeoutMs: 10_000 },
  );
  clients.push(c);
  return c;
}

const failure = (p: Promise<unknown>) =>
  p.then(
    () => undefined,
    (e: unknown) => e as Error,
  );

/** A raw TLS client's handshake outcome: the error code it got, or "connected" and the first line. */
function rawHandshake(
  options: ConnectionOptions,
  line = '{"id":1,"op":"hello","args":{"versions":[1]}}',
): Promise<string> {
  return new Promise((resolve) => {
    const s = tlsConnect({ host: '127.0.0.1', port, ca: pki.ca.cert, ...options });
    const timer = setTimeout(() => {
      s.destroy();
      resolve('timeout');
    }, 10_000);
    s.on('error', (err: NodeJS.ErrnoException) => {
      clearTimeout(timer);
      s.destroy();
      resolve(err.code ?? 'error');
    });
    s.on('secureConnect', () => {
      // TLS 1.3: the server's verdict on the client certificate comes after the client's handshake.
      s.write(`${line}\n`);
    });
    s.on('data', (d: Buffer) => {
      clearTimeout(timer);
      s.destroy();
      resolve(`answered ${d.toString('utf8').trim()}`);
    });
  });
}

describe('mutual TLS: who may connect', () => {
  it('a client certificate from the client CA works, as the principal its URI SAN names', async () => {
    const app = await connect(pki.client('app'));
    const dk = await app.generateDataKey('orders/main', { order: '1' });
    expect(dk.plaintext).toHaveLength(32);
    const again = await app.decryptDataKey(dk.wrapped, { order: '1' }, { key: 'orders/main' });
    expect(Buffer.from(again).equals(Buffer.from(dk.plaintext))).toBe(true);
    expect(app.socket.display).toBe(`tls://127.0.0.1:${port}`);
  });

  it("the principal's policy applies: a key outside it is KW_DENIED, and so is seal", async () => {
    const app = await connect(pki.client('app'));
    const err = await failure(app.generateDataKey('hr/payroll'));
    expect(AccessDeniedError.isInstance(err)).toBe(true);
    expect(await failure(app.seal())).toSatisfy((e) => AccessDeniedError.isInstance(e));
    // The administrator's certificate may use the other key.
    const admin = await connect(pki.client('admin'));
    expect((await admin.generateDataKey('hr/payroll')).keyId).toBeTypeOf('string');
  });

  it('a principal the policy does not know is denied everything', async () => {
    const ghost = await connect(pki.client('ghost'));
    expect(AccessDeniedError.isInstance(await failure(ghost.generateDataKey('orders/main')))).toBe(true);
  });

  it('no client certificate: refused before any request is read, saying so, and logged', async () => {
    const before = log.length;
    expect(await rawHandshake({})).toBe(
      'answered {"id":null,"ok":false,"error":{"code":"KW_DENIED","message":"agent: no client certificate (this agent requires one issued by its client CA)"}}',
    );
    expect(log.slice(before).join('\n')).toMatch(/refused a TLS client from 127\.0\.0\.1:\d+: no client certificate/);
  });

  it('a certificate from another CA: KW_DENIED, "not issued by this agent\'s client CA"', async () => {
    const before = log.length;
    const err = await failure(connect(pki.foreign('app')));
    expect(AccessDeniedError.isInstance(err)).toBe(true);
    expect(err?.message).toBe("agent: the client certificate was not issued by this agent's client CA");
    expect(log.slice(before).join('\n')).toMatch(/refused a TLS client from .*not issued by this agent's client CA/);
  });

  it('an expired certificate: KW_DENIED, "has expired"', async () => {
    const err = await failure(connect(pki.expired('app')));
    expect(AccessDeniedError.isInstance(err)).toBe(true);
    expect(err?.message).toBe('agent: the client certificate has expired');
  });

  it('a client that speaks TLS 1.2 at most: refused, "TLS 1.3 only"', async () => {
    const pem = pki.client('app');
    const code = await rawHandshake({ cert: pem.cert, key: pem.key, maxVersion: 'TLSv1.2', minVersion: 'TLSv1.2' });
    expect(code).toBe('ERR_SSL_TLSV1_ALERT_PROTOCOL_VERSION');
    const { tlsFailureText } = await import('../src/_tls.js');
    expect(tlsFailureText({ code })).toBe('no TLS version in common: the agent speaks TLS 1.3 only');
  });

  it('a certificate from the client CA that names no principal: KW_DENIED, saying what it lacks', async () => {
    const err = await failure(connect(pki.noPrincipal()));
    expect(AccessDeniedError.isInstance(err)).toBe(true);
    expect(err?.message).toBe(
      'agent: the client certificate names no principal (expected one URI subject alternative name keywarden:principal:NAME)',
    );
  });

  it('the subject CN is not a principal unless the agent is configured so', async () => {
    // cnOnly("admin") has CN=admin and no URI SAN: by default that names nobody.
    expect(AccessDeniedError.isInstance(await failure(connect(pki.cnOnly('admin'))))).toBe(true);
  });

  it('a credential token in the hello of a TLS connection is refused (AgentClient never sends one there)', async () => {
    const { token } = await issueAgentCredential(store, 'admin');
    const pem = pki.client('app');
    const hello = JSON.stringify({ id: 1, op: 'hello', args: { versions: [1], credential: token } });
    expect(await rawHandshake({ cert: pem.cert, key: pem.key }, hello)).toBe(
      'answered {"id":1,"ok":false,"error":{"code":"KW_DENIED","message":"agent: over mutual TLS the client certificate names the principal; send no credential"}}',
    );
    // With KEYWARDEN_AGENT_TOKEN set, AgentClient still connects over TLS as the certificate's principal.
    const c = await AgentClient.connect(
      { host: '127.0.0.1', port, tls: { cert: pem.cert, key: pem.key, ca: pki.ca.cert } },
      { credential: token },
    );
    clients.push(c);
    expect(AccessDeniedError.isInstance(await failure(c.generateDataKey('hr/payroll')))).toBe(true);
  });

  it("the agent's certificate is checked by the client: a client trusting another CA refuses the agent", async () => {
    const pem = pki.client('app');
    const err = await failure(
      AgentClient.connect({ host: '127.0.0.1', port, tls: { cert: pem.cert, key: pem.key, ca: pki.otherCa.cert } }),
    );
    expect(err?.message).toBe(
      `agent: tls://127.0.0.1:${port}: the agent's certificate was not issued by the CA this client trusts`,
    );
  });
});

describe('mutual TLS: revocation', () => {
  it('revoking the principal cuts its live TLS connection and refuses the next; issuing again re-admits it', async () => {
    await issueAgentCredential(store, 'app'); // a token too: revocation removes both
    const pem = pki.client('app');
    const app = await connect(pem);
    await app.generateDataKey('orders/main');
    const other = await connect(pki.client('admin'));
    // A raw TLS connection of the principal's, authenticated (hello answered), then left idle.
    const live = tlsConnect({ host: '127.0.0.1', port, ca: pki.ca.cert, cert: pem.cert, key: pem.key });
    live.on('error', () => {});
    const answered = new Promise<string>((resolve) => live.once('data', (d: Buffer) => resolve(d.toString('utf8'))));
    live.write('{"id":1,"op":"hello","args":{"versions":[1]}}\n');
    expect(await answered).toContain('"principal":"app"');
    const cut = new Promise<'cut'>((resolve) => live.once('close', () => resolve('cut')));
    await revokeAgentCredential(store, 'app');
    // The agent re-reads the credentials record every second and closes the connection.
    const timeout = new Promise<'still open'>((resolve) => setTimeout(() => resolve('still open'), 15_000).unref());
    expect(await Promise.race([cut, timeout])).toBe('cut');
    // The client's connection went the same way: its next request fails (cut, or its reconnect refused).
    expect((await failure(app.generateDataKey('orders/main')))?.message).toMatch(
      /closed the connection before answering|the principal app was revoked/,
    );
    const again = await failure(connect(pki.client('app')));
    expect(again?.message).toBe('agent: the principal app was revoked');
    expect(AccessDeniedError.isInstance(again)).toBe(true);
    // Other principals' connections stay.
    expect((await other.generateDataKey('orders/main')).plaintext).toHaveLength(32);
    expect(await admitAgentPrincipal(store, 'app')).toBe(true);
    expect((await (await connect(pki.client('app'))).generateDataKey('orders/main')).plaintext).toHaveLength(32);
  }, 30_000);
});

describe('mutual TLS: options', () => {
  it('a TCP listener with authenticate: false is refused at start', async () => {
    const err = await failure(
      AgentServer.start({
        socket: `${pki.dir}/other.sock`,
        store,
        root: new (class {})() as never,
        authenticate: false,
        listen: {
          host: '127.0.0.1',
          port: 0,
          tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca.cert },
        },
      }),
    );
    expect(err?.message).toBe(
      'agent: a TCP listener serves authenticated principals only; leave "authenticate" unset or true',
    );
  });

  it('principalFrom "cn" takes the subject CN', async () => {
    const root = await SoftwareRoot.load(store);
    const cnAgent = await AgentServer.start({
      socket: `${pki.dir}/cn.sock`,
      store,
      root,
      listen: {
        host: '127.0.0.1',
        port: 0,
        tls: { cert: pki.server.cert, key: pki.server.key, clientCa: pki.ca.cert, principalFrom: 'cn' },
      },
    });
    try {
      const pem = pki.cnOnly('admin');
      const c = await AgentClient.connect({
        host: '127.0.0.1',
        port: cnAgent.tcpAddress?.port as number,
        tls: { cert: pem.cert, key: pem.key, ca: pki.ca.cert },
      });
      // The root was loaded sealed: the principal got through to the sealed check (not KW_DENIED).
      expect((await failure(c.generateDataKey('orders/main')))?.name).toBe('KeystoreSealedError');
      expect((await c.getKey('hr/payroll')).name).toBe('hr/payroll');
      await c.close();
    } finally {
      await cnAgent.close();
      await root.close();
    }
  });
});
