import { describe, expect, it } from 'vitest';
import {
  marshalPcrSelection,
  marshalSensitiveCreate,
  marshalTpmtPublic,
  sealedObjectTemplate,
  storagePrimaryTemplate,
  TPM2_ALG,
  unmarshalPcrSelection,
  unmarshalTpm2bPublic,
  marshalTpm2bPublic,
  WireReader,
} from '../src/index.js';

const hex = (b: Uint8Array) => Buffer.from(b).toString('hex');

// TCG TPM 2.0 Library Part 2 wire layouts, written out by hand.
describe('TPM wire format', () => {
  it('the ECC storage template is the TPMT_PUBLIC tpm2_createprimary -G ecc sends', () => {
    expect(hex(marshalTpmtPublic(storagePrimaryTemplate('ecc')))).toBe(
      [
        '0023', // type ECC
        '000b', // nameAlg SHA-256
        '00030072', // fixedTPM fixedParent sensitiveDataOrigin userWithAuth restricted decrypt
        '0000', // authPolicy (empty)
        '0006',
        '0080',
        '0043', // symmetric AES-128-CFB
        '0010', // scheme NULL
        '0003', // curve NIST P-256
        '0010', // kdf NULL
        '0000',
        '0000', // unique x, y (empty)
      ].join(''),
    );
  });

  it('the RSA storage template: 2048 bits, default exponent', () => {
    expect(hex(marshalTpmtPublic(storagePrimaryTemplate('rsa')))).toBe(
      ['0001', '000b', '00030072', '0000', '0006', '0080', '0043', '0010', '0800', '00000000', '0000'].join(''),
    );
  });

  it('a sealed data object: keyedhash, NULL scheme; userWithAuth unless a policy is given; noDA on request', () => {
    expect(hex(marshalTpmtPublic(sealedObjectTemplate({ noDA: true })))).toBe('0008000b0000045200000010' + '0000');
    const policy = new Uint8Array(32).fill(0xab);
    const withPolicy = marshalTpmtPublic(sealedObjectTemplate({ authPolicy: policy }));
    expect(hex(withPolicy.subarray(4, 8))).toBe('00000012'); // fixedTPM fixedParent, no userWithAuth
    expect(hex(withPolicy.subarray(8, 10))).toBe('0020');
  });

  it('TPM2B_PUBLIC round-trips, and trailing bytes inside it are refused', () => {
    for (const t of [
      storagePrimaryTemplate('ecc'),
      storagePrimaryTemplate('rsa'),
      sealedObjectTemplate({ noDA: true }),
    ]) {
      const wire = marshalTpm2bPublic(t);
      const back = unmarshalTpm2bPublic(new WireReader(wire));
      expect(hex(marshalTpm2bPublic(back))).toBe(hex(wire));
    }
    const wire = marshalTpm2bPublic(sealedObjectTemplate());
    const longer = new Uint8Array(wire.length + 1);
    longer.set(wire);
    longer[1] = (longer[1] as number) + 1; // size covers one more byte
    expect(() => unmarshalTpm2bPublic(new WireReader(longer))).toThrow(RangeError);
  });

  it('TPML_PCR_SELECTION: count, then hash, sizeofSelect 3 and the bitmap', () => {
    const wire = marshalPcrSelection([{ hash: TPM2_ALG.SHA256, pcrs: [0, 7, 16] }]);
    expect(hex(wire)).toBe('00000001' + '000b' + '03' + '810001');
    expect(unmarshalPcrSelection(new WireReader(wire))).toEqual([{ hash: TPM2_ALG.SHA256, pcrs: [0, 7, 16] }]);
    expect(() => marshalPcrSelection([{ hash: TPM2_ALG.SHA256, pcrs: [24] }])).toThrow(RangeError);
  });

  it('TPM2B_SENSITIVE_CREATE: size, then userAuth and data as TPM2Bs', () => {
    expect(hex(marshalSensitiveCreate(Uint8Array.of(1, 2), Uint8Array.of(9)))).toBe('0007' + '00020102' + '000109');
  });
});
