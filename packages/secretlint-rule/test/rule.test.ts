/**
 * The rule through secretlint's own core API (lintSource), beside the recommended preset, with
 * every secret made at test time by Keywarden's own code (nothing secret is committed).
 */
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { issueAgentCredential } from '@keywarden/agent';
import { encodeUnsealKey, Keywarden, MemoryKeyStore, SoftwareRoot } from '@keywarden/core';
import { encryptShareForCustodian, splitHardwareSecret, splitSecret } from '@keywarden/split-knowledge';
import { lintSource } from '@secretlint/core';
import { creator as recommended } from '@secretlint/secretlint-rule-preset-recommend';
import type { SecretLintCoreResultMessage } from '@secretlint/types';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { creator, detectKeywardenSecrets, MESSAGE_IDS, RULE_ID, shareChecksumMatches } from '../src/index.js';

async function lint(
  content: string,
  filePath = 'config.txt',
  maskSecrets = false,
): Promise<SecretLintCoreResultMessage[]> {
  const result = await lintSource({
    source: { content, filePath, contentType: 'text' },
    options: {
      maskSecrets,
      config: {
        rules: [
          { id: '@secretlint/secretlint-rule-preset-recommend', rule: recommended },
          { id: RULE_ID, rule: creator },
        ],
      },
    },
  });
  return result.messages;
}

const ours = (ms: SecretLintCoreResultMessage[]) => ms.filter((m) => m.ruleId === RULE_ID);

let kw: Keywarden;
let unsealKey: string;
let shares: string[];
let pinShares: string[];
let dataKeyJson: string;
let wrappedB64: string;
let envelopeB64: string;
let credential: string;
let encryptedShare: string;

beforeAll(async () => {
  const store = new MemoryKeyStore();
  const key = new Uint8Array(randomBytes(32));
  unsealKey = encodeUnsealKey(key);
  const root = await SoftwareRoot.initialize(store, { unsealKey: key });
  kw = new Keywarden({ store, root });
  const kek = await kw.createKey('tenant-acme');
  const dk = await kw.generateDataKey('tenant-acme');
  // What `keywarden datakey` prints (packages/cli/src/commands/datakey.ts, formatJson).
  wrappedB64 = Buffer.from(dk.wrapped).toString('base64');
  dataKeyJson = JSON.stringify(
    {
      keyId: kek.id,
      version: dk.version,
      plaintext: Buffer.from(dk.plaintext).toString('base64'),
      wrapped: wrappedB64,
    },
    null,
    2,
  );
  dk.plaintext.fill(0);
  const envelope = await kw.encrypt(new TextEncoder().encode('hello'), { key: 'tenant-acme' });
  envelopeB64 = Buffer.from(envelope).toString('base64');
  shares = (await splitSecret(new Uint8Array(randomBytes(32)), { shares: 5, threshold: 3, purpose: 'unseal-key' }))
    .encoded;
  pinShares = (await splitHardwareSecret(new TextEncoder().encode('a-long-random-pin-1234'), { purpose: 'hsm-pin' }))
    .encoded;
  credential = (await issueAgentCredential(store, 'svc-billing')).token;
  const { publicKey } = generateKeyPairSync('x25519');
  encryptedShare = encryptShareForCustodian(
    shares[0] as string,
    publicKey.export({ type: 'spki', format: 'pem' }) as string,
  );
});

afterAll(async () => {
  await kw?.close();
});

describe('every Keywarden secret form is flagged, with what leaked and the command that remediates it', () => {
  it('a development unseal key (key file or KEYWARDEN_UNSEAL_KEY)', async () => {
    const ms = ours(await lint(`KEYWARDEN_UNSEAL_KEY=${unsealKey}\n`, '.env'));
    expect(ms).toHaveLength(1);
    expect(ms[0]?.messageId).toBe(MESSAGE_IDS['unseal-key']);
    expect(ms[0]?.message).toContain('keywarden rekey');
    expect(ms[0]?.message).toContain('keywarden root rotate');
    expect(ms[0]?.message).not.toContain(unsealKey.slice(24));
    // The reported range is the secret part, not the public prefix.
    const content = `KEYWARDEN_UNSEAL_KEY=${unsealKey}\n`;
    expect(content.slice(...((ms[0] as SecretLintCoreResultMessage).range as [number, number]))).toBe(
      unsealKey.slice('keywarden-unseal-key:v1:'.length),
    );
    expect(ours(await lint(`${unsealKey}\n`, 'unseal.key'))).toHaveLength(1);
  });

  it('a plaintext share, also when wrapped over two lines, and a PIN share', async () => {
    const share = shares[1] as string;
    expect(shareChecksumMatches(share)).toBe(true);
    const ms = ours(await lint(`custodian 2: ${share}\n`));
    expect(ms).toHaveLength(1);
    expect(ms[0]?.messageId).toBe(MESSAGE_IDS.share);
    expect(ms[0]?.message).toContain('keywarden rekey');
    expect(ms[0]?.message).toMatch(/unseal-key share 2 of 5 of share set ss_[A-Za-z0-9_-]{16}, 3 needed/);
    // With secretlint's maskSecrets (as `keywarden scan` runs it) the non-secret detail stays readable.
    const masked = ours(await lint(share, 'notes.txt', true));
    expect(masked[0]?.message).toMatch(/unseal-key share 2 of 5 of share set ss_[A-Za-z0-9_-]{16}, 3 needed/);
    const cut = share.length - 30;
    expect(ours(await lint(`${share.slice(0, cut)}\n    ${share.slice(cut)}\n`))).toHaveLength(1);
    expect(ours(await lint(pinShares.join('\n')))).toHaveLength(5);
    // A mistyped checksum still leaks the payload.
    const typo = `${share.slice(0, -1)}${share.endsWith('0') ? '1' : '0'}`;
    expect(shareChecksumMatches(typo)).toBe(false);
    expect(ours(await lint(typo))).toHaveLength(1);
  });

  it('the JSON that `keywarden datakey` prints', async () => {
    const ms = ours(await lint(dataKeyJson, 'dk.json'));
    expect(ms).toHaveLength(1);
    expect(ms[0]?.messageId).toBe(MESSAGE_IDS['data-key']);
    expect(ms[0]?.message).toContain('encrypt it again under a new data key');
    expect(ms[0]?.message).toContain('under KEK');
    expect(ours(await lint(JSON.stringify(JSON.parse(dataKeyJson)), 'one-line.log'))).toHaveLength(1);
  });

  it('an agent credential', async () => {
    const ms = ours(await lint(`export KEYWARDEN_AGENT_TOKEN='${credential}'\n`, 'deploy.sh'));
    expect(ms).toHaveLength(1);
    expect(ms[0]?.messageId).toBe(MESSAGE_IDS['agent-credential']);
    expect(ms[0]?.message).toContain('keywarden principal revoke <principal>');
    expect(ms[0]?.message).toContain('principal svc-billing');
  });

  it('a PIN file and a PKCS#11 URI carrying pin-value=', async () => {
    const pin = randomBytes(12).toString('hex');
    for (const name of ['user.pin', 'secrets/so.pin', 'hsm-pin.txt', 'pin']) {
      const ms = ours(await lint(`${pin}\n`, name));
      expect(ms, name).toHaveLength(1);
      expect(ms[0]?.messageId).toBe(MESSAGE_IDS.pin);
      expect(ms[0]?.message).toContain('change the PIN');
    }
    const uri = `pkcs11:token=keywarden;object=root?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-value=${pin}`;
    const ms = ours(await lint(`${uri}\n`, 'root.uri'));
    expect(ms).toHaveLength(1);
    expect(ms[0]?.message).toContain('pin-value=');
    // Placeholders are not PINs.
    // biome-ignore lint/suspicious/noTemplateCurlyInString: a template placeholder, written as text on purpose.
    for (const p of ['${PIN}', '$PIN', '{{ pin }}', '<pin>']) {
      expect(ours(await lint(`pkcs11:token=keywarden?pin-value=${p}\n`, 'root.uri')), p).toEqual([]);
    }
  });
});

describe('what is not a secret is not flagged', () => {
  it('wrapped keys, envelopes, encrypted shares and share-set ids', async () => {
    const wrappedJson = JSON.stringify({ keyId: 'k_1', wrapped: wrappedB64 });
    expect(await lint(wrappedJson, 'row.json')).toEqual([]);
    expect(await lint(`envelope=${envelopeB64}\n`)).toEqual([]);
    expect(await lint(encryptedShare, 'share-1-of-5.kwshare')).toEqual([]);
    expect(await lint(`Share-Set: ${shares[0]?.split('.')[2]}\n`)).toEqual([]);
  });

  it('random base64 in the same shapes, and the forms with a broken structure', async () => {
    const b64url = randomBytes(32).toString('base64url');
    const cases = [
      // A "plaintext" that is not in a data-key object, and a data-key object with a 16-byte plaintext.
      JSON.stringify({ plaintext: randomBytes(32).toString('base64') }),
      JSON.stringify({ keyId: 'k', plaintext: randomBytes(16).toString('base64'), wrapped: wrappedB64 }),
      // Unseal-key prefix with a wrong length.
      `keywarden-unseal-key:v1:${randomBytes(16).toString('base64url')}`,
      // Share texts whose index and x-coordinate disagree, or whose threshold exceeds N.
      (shares[1] as string).replace('.2-of-5.', '.3-of-5.'),
      (shares[1] as string).replace('.need-3.', '.need-6.'),
      // An agent credential with a short token.
      `kwagent1.svc.${randomBytes(16).toString('base64url')}`,
      // Plain random base64(url).
      b64url,
      randomBytes(48).toString('base64'),
    ];
    for (const c of cases) expect(ours(await lint(c)), c.slice(0, 40)).toEqual([]);
    // A one-line file that is not named like a PIN file; a multi-line file named like one.
    expect(ours(await lint(`${b64url}\n`, 'notes.txt'))).toEqual([]);
    expect(ours(await lint('line one\nline two\n', 'user.pin'))).toEqual([]);
  });

  it("Keywarden's own docs (examples elide the secret) are clean", async () => {
    for (const doc of ['format.md', 'split-knowledge.md']) {
      const text = readFileSync(new URL(`../../../docs/${doc}`, import.meta.url), 'utf8');
      expect(detectKeywardenSecrets(text, `docs/${doc}`), doc).toEqual([]);
    }
  });

  it('a line marked secretlint-disable-line is not reported (documentation examples made on purpose)', async () => {
    expect(ours(await lint(`${unsealKey} // secretlint-disable-line\n`, 'example.ts'))).toEqual([]);
  });
});

describe('the preset beside the rule still catches the well-known forms', () => {
  it('a PEM private key and a connection string password', async () => {
    const pem = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({
      type: 'pkcs8',
      format: 'pem',
    }) as string;
    const ms = await lint(
      `${pem}\nDATABASE_URL=postgres://app:${randomBytes(9).toString('hex')}@db.internal:5432/app\n`,
    );
    const ids = ms.map((m) => m.ruleId);
    expect(ids).toContain('@secretlint/secretlint-rule-privatekey');
    expect(ids).toContain('@secretlint/secretlint-rule-database-connection-string');
  });
});
