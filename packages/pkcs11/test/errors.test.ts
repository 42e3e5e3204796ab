import { KeywardenError } from '@keywarden/core';
import { createRequire } from 'node:module';
import { describe, expect, it } from 'vitest';
import {
  ckrKind,
  ckrName,
  Pkcs11DeviceError,
  Pkcs11LockoutError,
  Pkcs11UnavailableError,
  Pkcs11UnsealError,
  pkcs11Error,
} from '../src/index.js';

const pkcs11js = createRequire(import.meta.url)('pkcs11js') as Record<string, unknown>;
const CODES = ['KW_ROOT_DEVICE', 'KW_ROOT_UNAVAILABLE', 'KW_ROOT_LOCKOUT', 'KW_UNSEAL'];

describe('CKR codes as typed errors', () => {
  it('every CKR code pkcs11js knows maps to a core error with a stable code, naming the function and the CKR name', () => {
    const names = Object.keys(pkcs11js).filter((k) => k.startsWith('CKR_') && k !== 'CKR_OK');
    expect(names.length).toBeGreaterThan(80);
    for (const name of names) {
      const code = pkcs11js[name] as number;
      expect(ckrName(code)).toMatch(/^CKR_/);
      const err = pkcs11Error('C_Encrypt', ckrName(code));
      expect(KeywardenError.isInstance(err)).toBe(true);
      expect(CODES).toContain(err.code);
      expect(err.fn).toBe('C_Encrypt');
      expect(err.message).toMatch(/^pkcs11: C_Encrypt: CKR_/);
    }
  });

  it('the codes the issue names land in the right class', () => {
    expect(pkcs11Error('C_Login', 'CKR_PIN_INCORRECT')).toBeInstanceOf(Pkcs11UnsealError);
    expect(pkcs11Error('C_Login', 'CKR_PIN_LOCKED')).toBeInstanceOf(Pkcs11LockoutError);
    expect(pkcs11Error('C_OpenSession', 'CKR_TOKEN_NOT_PRESENT')).toBeInstanceOf(Pkcs11UnavailableError);
    expect(pkcs11Error('C_Encrypt', 'CKR_SESSION_HANDLE_INVALID')).toBeInstanceOf(Pkcs11UnavailableError);
    expect(pkcs11Error('C_EncryptInit', 'CKR_KEY_HANDLE_INVALID')).toBeInstanceOf(Pkcs11DeviceError);
    expect(pkcs11Error('C_EncryptInit', 'CKR_MECHANISM_INVALID')).toBeInstanceOf(Pkcs11DeviceError);
    expect(pkcs11Error('C_Login', 'CKR_PIN_INCORRECT').message).toBe(
      'pkcs11: C_Login: CKR_PIN_INCORRECT (wrong user PIN)',
    );
    expect(pkcs11Error('C_Encrypt', 'CKR_MECHANISM_INVALID').ckr).toBe('CKR_MECHANISM_INVALID');
    expect(ckrKind('CKR_DEVICE_REMOVED')).toBe('unavailable');
    expect(ckrName(0x80000001)).toBe('CKR_VENDOR_DEFINED+0x1');
    expect(ckrName(0x7777)).toBe('CKR_0x7777');
  });
});
