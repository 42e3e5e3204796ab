/**
 * XAES-256-GCM's subkey derivation (C2SP, docs/format.md §1) in raw node:crypto, for the raw
 * baselines of the benchmarks: one AES-256-ECB context, L = AES(0), K1 = dbl(L),
 * Kx = AES(M1 ⊕ K1) ‖ AES(M2 ⊕ K1). Benchmark code only; the library's own is src/_xaes.ts of
 * @keywarden/core, checked against the C2SP vectors.
 */
import { createCipheriv } from 'node:crypto';

const ZERO_BLOCK = new Uint8Array(16);

export function rawXaesSubkey(key: Uint8Array, nonce: Uint8Array): Uint8Array {
  const ecb = createCipheriv('aes-256-ecb', key, null).setAutoPadding(false);
  const l = ecb.update(ZERO_BLOCK);
  const m = new Uint8Array(32);
  const carry = 0x87 & -(l[0]! >>> 7);
  for (let i = 0; i < 16; i++) {
    const k1 = ((l[i]! << 1) | (i < 15 ? l[i + 1]! >>> 7 : 0)) & 0xff;
    m[i] = k1;
    m[16 + i] = k1;
  }
  m[15]! ^= carry;
  m[31]! ^= carry;
  m[1]! ^= 1;
  m[17]! ^= 2;
  m[2]! ^= 0x58;
  m[18]! ^= 0x58;
  for (let i = 0; i < 12; i++) {
    m[4 + i]! ^= nonce[i]!;
    m[20 + i]! ^= nonce[i]!;
  }
  const kx = ecb.update(m);
  ecb.final();
  l.fill(0);
  return kx;
}
