import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { Readable } from 'node:stream';
import { text as streamText } from 'node:stream/consumers';
import { describe, expect, it } from 'vitest';
import { createRedactTransform, pinoRedaction, redactSecrets, redactValue } from '../../src/redact.js';
import { encodeUnsealKey } from '../../src/software-root.js';

const secret32 = () => new Uint8Array(randomBytes(32));

describe('redactSecrets removes Keywarden secret forms', () => {
  it('an unseal key', () => {
    const k = encodeUnsealKey(secret32());
    const out = redactSecrets(`starting with ${k} now`);
    expect(out).toBe('starting with keywarden-unseal-key:v1:[REDACTED] now');
  });

  it('a share text keeps its non-secret header and loses payload and checksum (also wrapped over lines)', () => {
    const payload = Buffer.from(randomBytes(33)).toString('base64url');
    const share = `kwshare1.unseal-key.ss_q3Vh0yJ2mZk8c1aP.2-of-5.need-3.${payload}.5c1e09a4`;
    expect(redactSecrets(`got ${share}`)).toBe('got kwshare1.unseal-key.ss_q3Vh0yJ2mZk8c1aP.2-of-5.need-3.[REDACTED]');
    const wrapped = `kwshare1.unseal-key.ss_q3Vh0yJ2mZk8c1aP.2-of-5.need-3.${payload.slice(0, 20)}\n${payload.slice(20)}.5c1e09a4`;
    expect(redactSecrets(wrapped)).not.toContain(payload.slice(20));
  });

  it('an agent credential keeps the principal', () => {
    const token = `kwagent1.billing-api.${Buffer.from(randomBytes(32)).toString('base64url')}`;
    expect(redactSecrets(`KEYWARDEN_AGENT_TOKEN=${token}`)).not.toContain(token.slice(22));
    expect(redactSecrets(`hello ${token}`)).toBe('hello kwagent1.billing-api.[REDACTED]');
  });

  it('data-key JSON (keywarden datakey output)', () => {
    const pt = Buffer.from(secret32()).toString('base64');
    const line = JSON.stringify({ keyId: 'kek_abc', version: 1, plaintext: pt, wrapped: 'AAEC' });
    const out = redactSecrets(line);
    expect(out).not.toContain(pt);
    expect(JSON.parse(out)).toEqual({ keyId: 'kek_abc', version: 1, plaintext: '[REDACTED]', wrapped: 'AAEC' });
  });
});

describe('redactSecrets removes common secrets', () => {
  it('PEM private keys of every kind, whole', () => {
    const rsa = generateKeyPairSync('rsa', { modulusLength: 1024 }).privateKey.export({
      type: 'pkcs1',
      format: 'pem',
    }) as string;
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string;
    for (const pem of [rsa, ec]) {
      const body = pem.split('\n')[1] as string;
      const out = redactSecrets(`key:\n${pem}done`);
      expect(out).not.toContain(body);
      expect(out).toMatch(/-----BEGIN (RSA )?PRIVATE KEY-----\[REDACTED\]-----END (RSA )?PRIVATE KEY-----/);
      expect(out.endsWith('done')).toBe(true);
    }
    // A public key is not a secret and stays.
    const pub = generateKeyPairSync('ec', { namedCurve: 'P-256' }).publicKey.export({
      type: 'spki',
      format: 'pem',
    }) as string;
    expect(redactSecrets(pub)).toBe(pub);
  });

  it('bearer tokens and basic credentials', () => {
    expect(redactSecrets('Authorization: Bearer eyJhbGciOi.J9.abc-_')).toBe('Authorization: Bearer [REDACTED]');
    expect(redactSecrets('curl -H "X: Bearer abc.def"')).toBe('curl -H "X: Bearer [REDACTED]"');
    expect(redactSecrets('basic dXNlcjpwYXNz')).toBe('basic [REDACTED]');
  });

  it('passwords in connection strings', () => {
    expect(redactSecrets('postgres://app:s3cr3t!@db.internal:5432/kw')).toBe(
      'postgres://app:[REDACTED]@db.internal:5432/kw',
    );
    expect(redactSecrets('Server=db;User Id=sa;Password=Hunter2;Database=kw')).toBe(
      'Server=db;User Id=sa;Password=[REDACTED];Database=kw',
    );
    expect(redactSecrets('https://example.com/path?a=1&token=zzz&b=2')).toBe(
      'https://example.com/path?a=1&token=[REDACTED]&b=2',
    );
  });

  it('values under configurable field names, and nothing else', () => {
    expect(redactSecrets('user=alice pin=123456 env=prod')).toBe('user=alice pin=[REDACTED] env=prod');
    expect(redactSecrets('{"ssn":"123-45-6789","name":"a"}', { fields: ['ssn'] })).toBe(
      '{"ssn":"[REDACTED]","name":"a"}',
    );
    expect(redactSecrets('pin=1', { fields: ['ssn'], replaceFields: true })).toBe('pin=1');
    expect(redactSecrets('the tokenizer ran; secretary=bob')).toBe('the tokenizer ran; secretary=bob');
    expect(redactSecrets('nothing secret here: kw1.AAAA envelope, kek_abc v2')).toBe(
      'nothing secret here: kw1.AAAA envelope, kek_abc v2',
    );
  });
});

describe('structured values, pino and streams', () => {
  it('redactValue scrubs strings, secret fields and bytes, and keeps the rest', () => {
    const dek = secret32();
    const v = redactValue({
      msg: 'unseal with keywarden-unseal-key:v1:abcdef',
      dataKey: { keyId: 'kek_1', plaintext: dek, wrapped: 'xx' },
      headers: { Authorization: 'Bearer zz' },
      list: [{ password: 'p' }, 'postgres://u:p@h/db'],
      err: new Error('pin=1234 wrong'),
      n: 3,
    });
    expect(v).toEqual({
      msg: 'unseal with keywarden-unseal-key:v1:[REDACTED]',
      dataKey: { keyId: 'kek_1', plaintext: '[REDACTED]', wrapped: 'xx' },
      headers: { Authorization: '[REDACTED]' },
      list: [{ password: '[REDACTED]' }, 'postgres://u:[REDACTED]@h/db'],
      err: { name: 'Error', message: 'pin=[REDACTED] wrong' },
      n: 3,
    });
  });

  it('pinoRedaction: the log formatter and the message hook scrub what pino would write', () => {
    const p = pinoRedaction();
    expect(p.formatters.log({ share: 'x', user: 'a' })).toEqual({ share: '[REDACTED]', user: 'a' });
    let written: unknown[] = [];
    p.hooks.logMethod.call(undefined, ['token=abc %s', 'Bearer q'], (...a: unknown[]) => {
      written = a;
    });
    expect(written).toEqual(['token=[REDACTED] %s', 'Bearer [REDACTED]']);
  });

  it('createRedactTransform scrubs a stream line by line, across chunk boundaries', async () => {
    const k = encodeUnsealKey(secret32());
    const text = `line one\nkey ${k}\nlast password=x`;
    const chunks = [text.slice(0, 15), text.slice(15, 40), text.slice(40)];
    const out = await streamText(Readable.from(chunks).pipe(createRedactTransform()));
    expect(out).toBe('line one\nkey keywarden-unseal-key:v1:[REDACTED]\nlast password=[REDACTED]');
  });
});
