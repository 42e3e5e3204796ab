import { createHash, randomBytes } from 'node:crypto';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import {
  Esys,
  ESYS_TR,
  isTpmRc,
  sealedObjectTemplate,
  storagePrimaryTemplate,
  TPM2_ALG,
  TPM2_HR,
  TPM2_PT,
  TPMA_SESSION,
  TssError,
  TssUnavailableError,
  unmarshalTpm2bPublic,
  WireReader,
} from '../src/index.js';

const tcti = process.env.KEYWARDEN_TPM_TCTI as string;

describe('@keywarden/tss2 against a TPM (swtpm)', () => {
  let esys: Esys;
  let primary: number;

  beforeAll(async () => {
    esys = await Esys.open({ tcti });
    primary = (await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'))).handle;
  });

  afterAll(async () => {
    await esys?.close();
  });

  it('TPM2_Startup on a TPM already started succeeds (ESAPI treats TPM_RC_INITIALIZE as done)', async () => {
    await esys.startup('clear');
    expect((await esys.getRandom(4)).length).toBe(4);
  });

  it('GetRandom gives the requested number of bytes, in several commands when large', async () => {
    for (const n of [0, 1, 32, 33, 100]) expect((await esys.getRandom(n)).length).toBe(n);
    const a = await esys.getRandom(32);
    const b = await esys.getRandom(32);
    expect(Buffer.from(a).equals(Buffer.from(b))).toBe(false);
  });

  it('CreatePrimary with the same template gives the same key (same name) every time', async () => {
    const again = await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'));
    const first = await esys.trGetName(primary);
    expect(Buffer.from(again.name).toString('hex')).toBe(Buffer.from(first).toString('hex'));
    expect(again.name.length).toBe(34); // SHA-256 nameAlg ‖ digest
    const pub = unmarshalTpm2bPublic(new WireReader(again.outPublic));
    expect(pub.type).toBe('ecc');
    expect(pub.unique?.[0]?.length).toBe(32);
    await esys.flushContext(again.handle);
  });

  it('Create a sealed object, Load, Unseal (salted HMAC session, parameter encryption), FlushContext', async () => {
    const secret = new Uint8Array(randomBytes(32));
    const auth = new Uint8Array(randomBytes(32));
    const session = await esys.startAuthSession({ tpmKey: primary, type: 'hmac' });
    await esys.setSessionAttributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT);
    const blob = await esys.create(primary, sealedObjectTemplate({ noDA: true }), {
      userAuth: auth,
      data: secret,
      sessions: [session],
    });
    expect(Buffer.from(blob.outPrivate).includes(Buffer.from(secret))).toBe(false);
    await esys.setSessionAttributes(session, TPMA_SESSION.CONTINUESESSION);
    const item = await esys.load(primary, blob.outPrivate, blob.outPublic, [session]);
    await esys.trSetAuth(item, auth);
    await esys.setSessionAttributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT);
    const out = await esys.unseal(item, [session]);
    expect(Buffer.from(out).equals(Buffer.from(secret))).toBe(true);
    // A wrong auth value: TPM_RC_BAD_AUTH for a noDA object (no dictionary-attack count).
    await esys.trSetAuth(item, new Uint8Array(32));
    const err = await esys.unseal(item, [session]).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TssError);
    expect((err as Error).message).toMatch(/^TPM2_Unseal: TPM_RC_BAD_AUTH \(tpm:session\(1\)\)/);
    expect(isTpmRc(err, 'TPM_RC_BAD_AUTH')).toBe(true);
    await esys.flushContext(item);
    await esys.flushContext(session);
    expect(esys.stats().liveBuffers).toBe(0);
  });

  it('PolicyPCR + PolicyAuthValue: a PCR-bound object unseals until the PCR is extended (TPM_RC_POLICY_FAIL)', async () => {
    const sel = [{ hash: TPM2_ALG.SHA256, pcrs: [16] }];
    const trial = await esys.startAuthSession({ type: 'trial', symmetric: null });
    await esys.policyPCR(trial, sel);
    await esys.policyAuthValue(trial);
    const policy = await esys.policyGetDigest(trial);
    await esys.flushContext(trial);
    expect(policy.length).toBe(32);
    const auth = new Uint8Array(randomBytes(16));
    const secret = new Uint8Array(randomBytes(32));
    const blob = await esys.create(primary, sealedObjectTemplate({ authPolicy: policy, noDA: true }), {
      userAuth: auth,
      data: secret,
    });
    const unsealOnce = async () => {
      const item = await esys.load(primary, blob.outPrivate, blob.outPublic);
      const s = await esys.startAuthSession({ tpmKey: primary, type: 'policy' });
      try {
        await esys.policyPCR(s, sel);
        await esys.policyAuthValue(s);
        await esys.trSetAuth(item, auth);
        await esys.setSessionAttributes(s, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT);
        return await esys.unseal(item, [s]);
      } finally {
        await esys.flushContext(s);
        await esys.flushContext(item);
      }
    };
    expect(Buffer.from(await unsealOnce()).equals(Buffer.from(secret))).toBe(true);
    const before = await esys.pcrRead(sel);
    await esys.pcrExtend(16, [{ hash: TPM2_ALG.SHA256, digest: createHash('sha256').update('tss2 test').digest() }]);
    const after = await esys.pcrRead(sel);
    expect(Buffer.from(after.digests[0] as Uint8Array).equals(Buffer.from(before.digests[0] as Uint8Array))).toBe(
      false,
    );
    const err = await unsealOnce().then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as Error).message).toMatch(/^TPM2_Unseal: TPM_RC_POLICY_FAIL \(tpm:session\(1\)\)/);
  });

  it('ContextSave / ContextLoad move an object out of the TPM and back', async () => {
    const auth = new Uint8Array(0);
    const secret = new Uint8Array(randomBytes(20));
    const blob = await esys.create(primary, sealedObjectTemplate(), { userAuth: auth, data: secret });
    const item = await esys.load(primary, blob.outPrivate, blob.outPublic);
    const saved = await esys.contextSave(item);
    await esys.flushContext(item);
    const back = await esys.contextLoad(saved);
    expect(Buffer.from(await esys.unseal(back)).equals(Buffer.from(secret))).toBe(true);
    await esys.flushContext(back);
  });

  it('EvictControl persists and evicts; TR_FromTPMPublic and ReadPublic find it by handle', async () => {
    const p = await esys.createPrimary(ESYS_TR.RH_OWNER, storagePrimaryTemplate('ecc'));
    const handle = 0x81000777;
    const persistent = await esys.evictControl(ESYS_TR.RH_OWNER, p.handle, handle);
    await esys.flushContext(p.handle);
    expect(await esys.handles(TPM2_HR.PERSISTENT)).toContain(handle);
    await esys.trClose(persistent);
    const tr = await esys.trFromTPMPublic(handle);
    const rp = await esys.readPublic(tr);
    expect(Buffer.from(rp.name).equals(Buffer.from(p.name))).toBe(true);
    expect(await esys.evictControl(ESYS_TR.RH_OWNER, tr, handle)).toBe(ESYS_TR.NONE);
    expect(await esys.handles(TPM2_HR.PERSISTENT)).not.toContain(handle);
  });

  it('TPM properties: manufacturer and dictionary-attack settings', async () => {
    const props = await esys.properties(TPM2_PT.MANUFACTURER, 1);
    const m = props.get(TPM2_PT.MANUFACTURER) as number;
    expect(
      Buffer.from([m >>> 24, (m >>> 16) & 0xff, (m >>> 8) & 0xff, m & 0xff])
        .toString('latin1')
        .replace(/\0+$/, ''),
    ).toBe('IBM');
    const da = await esys.properties(TPM2_PT.LOCKOUT_COUNTER, 4);
    expect(da.has(TPM2_PT.MAX_AUTH_FAIL)).toBe(true);
  });

  it('a Load of a tampered private part is a typed TPM error naming TPM2_Load', async () => {
    const blob = await esys.create(primary, sealedObjectTemplate(), { data: new Uint8Array(8).fill(1) });
    const bad = blob.outPrivate.slice();
    bad[bad.length - 1] = (bad[bad.length - 1] as number) ^ 1;
    const err = await esys.load(primary, bad, blob.outPublic).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect((err as Error).message).toMatch(/^TPM2_Load: TPM_RC_INTEGRITY \(tpm:parameter\(1\)\)/);
  });

  it('malformed input structures are refused before the TPM sees them (InvalidInputError)', async () => {
    await expect(esys.load(primary, new Uint8Array([0, 5, 1]), new Uint8Array(2))).rejects.toMatchObject({
      code: 'KW_BAD_INPUT',
    });
  });

  it('no leak: after every command above, no ESYS buffer is live and the TPM holds only the primary', async () => {
    expect(esys.stats().liveBuffers).toBe(0);
    expect(esys.stats().liveHandles).toBe(1);
    expect(await esys.transientHandles()).toHaveLength(1);
  });
});

describe('@keywarden/tss2: an unreachable TPM', () => {
  it('a TCTI on a port where nothing listens is TssUnavailableError (KW_ROOT_UNAVAILABLE), at once', async () => {
    const err = await Esys.open({ tcti: 'swtpm:host=127.0.0.1,port=1' }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(TssUnavailableError);
    expect((err as TssUnavailableError).code).toBe('KW_ROOT_UNAVAILABLE');
    expect((err as Error).message).toMatch(/^Tss2_TctiLdr_Initialize: the TPM cannot be reached/);
  });
});
