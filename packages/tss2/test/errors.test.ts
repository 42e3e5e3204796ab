import { describe, expect, it } from 'vitest';
import { decodeRc, TssError, TssLockoutError, TssUnavailableError, tssError } from '../src/index.js';

// The texts are what libtss2-rc's Tss2_RC_Decode returns for these codes.
describe('TSS2_RC decoding', () => {
  it('a format-one TPM code names its base code and keeps the session number in the layer text', () => {
    const e = tssError('TPM2_Unseal', decodeRc(0x99d, 'tpm:session(1):a policy check failed'));
    expect(e).toBeInstanceOf(TssError);
    expect(e.message).toBe('TPM2_Unseal: TPM_RC_POLICY_FAIL (tpm:session(1)): a policy check failed');
    expect(e).toMatchObject({ code: 'KW_ROOT_DEVICE', command: 'TPM2_Unseal', rc: 0x99d, layer: 0, base: 0x9d });
  });

  it('a parameter error and a handle error', () => {
    expect(decodeRc(0x1df, 'tpm:parameter(1):integrity check failed').name).toBe('TPM_RC_INTEGRITY');
    expect(decodeRc(0x18b, 'tpm:handle(1):the handle is not correct for the use').name).toBe('TPM_RC_HANDLE');
  });

  it('TPM_RC_LOCKOUT is a TssLockoutError (KW_ROOT_LOCKOUT)', () => {
    const e = tssError(
      'TPM2_Unseal',
      decodeRc(
        0x921,
        'tpm:warn(2.0):authorizations for objects subject to DA protection are not allowed at this time because the TPM is in DA lockout mode',
      ),
    );
    expect(e).toBeInstanceOf(TssLockoutError);
    expect(e.code).toBe('KW_ROOT_LOCKOUT');
    expect(e.message).toMatch(/^TPM2_Unseal: TPM_RC_LOCKOUT \(tpm:warn\(2\.0\)\)/);
  });

  it('TPM_RC_OBJECT_MEMORY (0x902, the leak symptom on swtpm) is named', () => {
    expect(decodeRc(0x902, 'tpm:warn(2.0):out of memory for object contexts').name).toBe('TPM_RC_OBJECT_MEMORY');
  });

  it('TCTI I/O errors and lost connections are TssUnavailableError (KW_ROOT_UNAVAILABLE)', () => {
    const io = tssError('TPM2_Load', decodeRc(0xa000a, 'tcti:IO failure'));
    expect(io).toBeInstanceOf(TssUnavailableError);
    expect(io.message).toBe('TPM2_Load: TSS2_TCTI_RC_IO_ERROR (tcti): IO failure');
    expect(tssError('TPM2_Load', decodeRc(0xa0008, 'tcti:no connection')).code).toBe('KW_ROOT_UNAVAILABLE');
  });

  it('an ESAPI-layer code is named with its layer', () => {
    const e = tssError('TPM2_EvictControl', decodeRc(0x70018, 'esapi:The ESYS_TR resource object is bad'));
    expect(e.message).toBe('TPM2_EvictControl: TSS2_ESAPI_RC_BAD_TR (esapi): The ESYS_TR resource object is bad');
  });
});
