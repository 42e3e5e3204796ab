/**
 * pkcs11-uri.ts against RFC 7512: every example of §3.3 (joined on one line: the RFC's line breaks
 * are for display, §3.3) parses to the attributes the RFC describes; malformed URIs are refused
 * with an error naming the attribute and never echoing a value (a URI may carry the PIN).
 */
import { describe, expect, it } from 'vitest';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { InvalidInputError, parsePkcs11Uri, readPkcs11Pin } from '../src/index.js';

const text = (b: Uint8Array | undefined) => (b ? new TextDecoder().decode(b) : undefined);

describe('parsePkcs11Uri: the examples of RFC 7512 §3.3', () => {
  it('"pkcs11:" — every attribute absent', () => {
    const u = parsePkcs11Uri('pkcs11:');
    expect(u).toEqual({ vendorPath: {}, vendorQuery: {} });
  });

  it('pkcs11:object=my-pubkey;type=public', () => {
    const u = parsePkcs11Uri('pkcs11:object=my-pubkey;type=public');
    expect(u.object).toBe('my-pubkey');
    expect(u.type).toBe('public');
  });

  it('pkcs11:object=my-key;type=private?pin-source=file:/etc/token', () => {
    const u = parsePkcs11Uri('pkcs11:object=my-key;type=private?pin-source=file:/etc/token');
    expect(u.object).toBe('my-key');
    expect(u.type).toBe('private');
    expect(u.pinSource).toBe('file:/etc/token');
  });

  it('token, manufacturer, serial (empty), model, object, type and a binary id, with a pin-source', () => {
    const u = parsePkcs11Uri(
      'pkcs11:token=The%20Software%20PKCS%2311%20Softtoken;manufacturer=Snake%20Oil,%20Inc.;model=1.0;object=my-certificate;type=cert;id=%69%95%3E%5C%F4%BD%EC%91;serial=?pin-source=file:/etc/token_pin',
    );
    expect(u.token).toBe('The Software PKCS#11 Softtoken');
    expect(u.manufacturer).toBe('Snake Oil, Inc.');
    expect(u.model).toBe('1.0');
    expect(u.serial).toBe('');
    expect(u.object).toBe('my-certificate');
    expect(u.type).toBe('cert');
    expect(Array.from(u.id as Uint8Array)).toEqual([0x69, 0x95, 0x3e, 0x5c, 0xf4, 0xbd, 0xec, 0x91]);
    expect(u.pinSource).toBe('file:/etc/token_pin');
  });

  it('module-name and module-path', () => {
    expect(parsePkcs11Uri('pkcs11:object=my-sign-key;type=private?module-name=mypkcs11').moduleName).toBe('mypkcs11');
    expect(parsePkcs11Uri('pkcs11:object=my-sign-key;type=private?module-path=/mnt/libmypkcs11.so.1').modulePath).toBe(
      '/mnt/libmypkcs11.so.1',
    );
  });

  it('pin-value, returned as bytes', () => {
    const u = parsePkcs11Uri(
      'pkcs11:token=Software%20PKCS%2311%20softtoken;manufacturer=Snake%20Oil,%20Inc.?pin-value=the-pin',
    );
    expect(u.token).toBe('Software PKCS#11 softtoken');
    expect(u.pinValue).toBeInstanceOf(Uint8Array);
    expect(text(u.pinValue)).toBe('the-pin');
  });

  it('slot-description', () => {
    expect(parsePkcs11Uri('pkcs11:slot-description=Sun%20Metaslot').slotDescription).toBe('Sun Metaslot');
  });

  it('library-manufacturer, library-description and library-version M.N', () => {
    const u = parsePkcs11Uri(
      'pkcs11:library-manufacturer=Snake%20Oil,%20Inc.;library-description=Soft%20Token%20Library;library-version=1.23',
    );
    expect(u.libraryManufacturer).toBe('Snake Oil, Inc.');
    expect(u.libraryDescription).toBe('Soft Token Library');
    expect(u.libraryVersion).toEqual({ major: 1, minor: 23 });
  });

  it('a percent-encoded "%" in a label, library-version M, and an id in mixed-case hex', () => {
    const u = parsePkcs11Uri(
      'pkcs11:token=My%20token%25%20created%20by%20Joe;library-version=3;id=%01%02%03%Ba%dd%Ca%fe%04%05%06',
    );
    expect(u.token).toBe('My token% created by Joe');
    expect(u.libraryVersion).toEqual({ major: 3, minor: 0 });
    expect(Array.from(u.id as Uint8Array)).toEqual([1, 2, 3, 0xba, 0xdd, 0xca, 0xfe, 4, 5, 6]);
  });

  it('percent-encoded ";" and "%" inside a value', () => {
    const u = parsePkcs11Uri('pkcs11:token=A%20name%20with%20a%20substring%20%25%3B;object=my-certificate;type=cert');
    expect(u.token).toBe('A name with a substring %;');
    expect(u.object).toBe('my-certificate');
  });

  it('UTF-8 in a value (a small a with acute)', () => {
    const u = parsePkcs11Uri(
      'pkcs11:token=Name%20with%20a%20small%20A%20with%20acute:%20%C3%A1;object=my-certificate;type=cert',
    );
    expect(u.token).toBe('Name with a small A with acute: á');
  });

  it('vendor-specific attributes in the path and the query are kept apart', () => {
    const u = parsePkcs11Uri(
      'pkcs11:token=my-token;object=my-certificate;type=cert;vendor-aaa=value-a?pin-source=file:/etc/token_pin&vendor-bbb=value-b',
    );
    expect(u.vendorPath).toEqual({ 'vendor-aaa': 'value-a' });
    expect(u.vendorQuery).toEqual({ 'vendor-bbb': ['value-b'] });
    expect(u.pinSource).toBe('file:/etc/token_pin');
  });

  it("Keywarden's own form: pkcs11:token=keywarden;object=kw-root?module-path=…", () => {
    const u = parsePkcs11Uri('PKCS11:token=keywarden;object=kw-root?module-path=/usr/lib/softhsm/libsofthsm2.so');
    expect(u).toMatchObject({ token: 'keywarden', object: 'kw-root', modulePath: '/usr/lib/softhsm/libsofthsm2.so' });
  });
});

describe('parsePkcs11Uri: strictness', () => {
  const PIN = '918273645';
  const refused: Array<[string, RegExp]> = [
    ['pkcs12:token=x', /must start with "pkcs11:"/],
    ['token=x', /must start with "pkcs11:"/],
    ['pkcs11:token=a;token=b', /"token" appears more than once/],
    ['pkcs11:token=a?pin-source=x&pin-source=y', /"pin-source" appears more than once/],
    ['pkcs11:type=secret', /"type" must be public, private, cert, secret-key or data/],
    ['pkcs11:slot-id=1a', /"slot-id" must be a decimal number/],
    ['pkcs11:library-version=1.bar', /"library-version" must be M or M.N/],
    ['pkcs11:library-version=1.256', /0\.\.255/],
    ['pkcs11:token=a;', /empty path attribute/],
    ['pkcs11:token=a;;object=b', /empty path attribute/],
    ['pkcs11:token', /without the name=value form/],
    ['pkcs11:=x', /without the name=value form/],
    ['pkcs11:token=a b', /"token" has a character that must be percent-encoded/],
    ['pkcs11:object=a/b', /"object" has a character that must be percent-encoded/],
    ['pkcs11:token=a%2', /"token" has a character that must be percent-encoded/],
    ['pkcs11:token=a%zz', /"token" has a character that must be percent-encoded/],
    ['pkcs11:token=%C3%28', /"token" is not valid UTF-8/],
    [`pkcs11:token=a?pin-source=file:/p&pin-value=${PIN}`, /both "pin-source" and "pin-value"/],
    ['pkcs11:pin-value=1', /invalid path attribute name/],
    ['pkcs11:token=a?object=b', /invalid query attribute name/],
    ['pkcs11:token=a?pin-value=a b', /"pin-value" has a character/],
    [`pkcs11:token=a?${PIN}`, /without the name=value form/],
  ];
  for (const [uri, message] of refused) {
    it(`refuses ${JSON.stringify(uri)}`, () => {
      let err: unknown;
      try {
        parsePkcs11Uri(uri);
      } catch (e) {
        err = e;
      }
      expect(InvalidInputError.isInstance(err), String(err)).toBe(true);
      expect((err as Error).message).toMatch(/^pkcs11: URI /);
      expect((err as Error).message).toMatch(message);
    });
  }

  it('never echoes the PIN or any value in an error', () => {
    for (const uri of [
      `pkcs11:token=a?pin-value=${PIN}%`,
      `pkcs11:token=a?pin-value=${PIN}&pin-value=${PIN}`,
      `pkcs11:token=a?pin-value=${PIN}&pin-source=file:/x`,
      `pkcs11:token=a?${PIN}`,
      `pkcs11:${PIN}`,
      `pkcs11:x-${PIN}=1;x-${PIN}=2`,
      `pkcs11:token=a?x-${PIN}=%C3%28`,
      `pkcs11:token=${PIN} 1`,
    ]) {
      let message = '';
      try {
        parsePkcs11Uri(uri);
      } catch (e) {
        message = (e as Error).message;
      }
      expect(message, uri).not.toBe('');
      expect(message, uri).not.toContain(PIN);
    }
  });

  it('refuses a URI longer than 8192 characters and a non-string', () => {
    expect(() => parsePkcs11Uri(`pkcs11:token=${'a'.repeat(8200)}`)).toThrow(/longer than 8192/);
    expect(() => parsePkcs11Uri(42 as unknown as string)).toThrow(InvalidInputError);
  });
});

describe('readPkcs11Pin: the PIN from exactly one place', () => {
  const PIN = '5839201746';
  const dir = mkdtempSync(path.join(tmpdir(), 'kw-pin-'));
  const file = path.join(dir, 'pin');
  writeFileSync(file, `${PIN}\n`, { mode: 0o600 });

  it('pin-value, a file: pin-source (absolute path or file:///, one newline dropped), env:NAME, or the caller’s secret', async () => {
    const t = async (uri: string, o = {}) => new TextDecoder().decode(await readPkcs11Pin(parsePkcs11Uri(uri), o));
    expect(await t(`pkcs11:token=a?pin-value=${PIN}`)).toBe(PIN);
    expect(await t(`pkcs11:token=a?pin-source=file:${file}`)).toBe(PIN);
    expect(await t(`pkcs11:token=a?pin-source=file://${file}`)).toBe(PIN);
    expect(await t('pkcs11:token=a?pin-source=env:KW_PIN', { env: { KW_PIN: PIN } })).toBe(PIN);
    expect(await t('pkcs11:token=a', { secret: new TextEncoder().encode(PIN) })).toBe(PIN);
    expect(await readPkcs11Pin(parsePkcs11Uri('pkcs11:token=a'))).toBeUndefined();
  });

  it('refuses two sources, an unreadable or empty file, a missing variable and other schemes, never echoing the PIN', async () => {
    const empty = path.join(dir, 'empty');
    writeFileSync(empty, '\n');
    const cases: Array<[string, object]> = [
      [`pkcs11:token=a?pin-value=${PIN}`, { secret: new TextEncoder().encode(PIN) }],
      [`pkcs11:token=a?pin-source=file:${dir}/missing-${PIN}`, {}],
      [`pkcs11:token=a?pin-source=file:${empty}`, {}],
      ['pkcs11:token=a?pin-source=env:KW_NONE', { env: {} }],
      [`pkcs11:token=a?pin-source=https://example.org/${PIN}`, {}],
      ['pkcs11:token=a?pin-source=file://host/etc/pin', {}],
    ];
    for (const [uri, options] of cases) {
      let err: unknown;
      try {
        await readPkcs11Pin(parsePkcs11Uri(uri), options);
      } catch (e) {
        err = e;
      }
      expect(InvalidInputError.isInstance(err), uri).toBe(true);
      expect((err as Error).message).toMatch(/^pkcs11: URI /);
      expect((err as Error).message).not.toContain(PIN);
    }
  });
});
