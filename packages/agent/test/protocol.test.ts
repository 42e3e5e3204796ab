/**
 * The protocol's pieces, in-process: line framing, request parsing, version negotiation, errors
 * rebuilt by code. The same rules against a real server: server.test.ts and protocol-spec.test.ts.
 */
import {
  AgentError,
  AgentProtocolError,
  AgentVersionError,
  DecryptionError,
  KeystoreSealedError,
  KeywardenError,
  ShareError,
} from '@keywarden/core';
import { describe, expect, it } from 'vitest';
import {
  errorFromWire,
  errorToWire,
  LineBuffer,
  LineTooLongError,
  negotiateVersion,
  PROTOCOL_VERSION,
  parseRequest,
  ProtocolError,
} from '../src/protocol.js';

describe('agent protocol pieces', () => {
  it('LineBuffer splits lines across chunks and refuses a line over its bound', () => {
    const lb = new LineBuffer(8);
    expect(lb.push(Buffer.from('ab')).map(String)).toEqual([]);
    expect(lb.push(Buffer.from('c\nde\nf')).map(String)).toEqual(['abc', 'de']);
    expect(lb.pending).toBe(true);
    expect(lb.push(Buffer.from('\n')).map(String)).toEqual(['f']);
    expect(() => lb.push(Buffer.from('123456789'))).toThrow(LineTooLongError);
    expect(lb.pending).toBe(false);
    expect(lb.push(Buffer.from('12345678\n')).map(String)).toEqual(['12345678']);
  });

  it('parseRequest refuses what is not a request without echoing it', () => {
    const share = 'kwshare1.unseal-key.ss_AAAAAAAAAAAAAAAA.1-of-2.need-2.x.00000000';
    for (const line of [`{"op":"unseal","args":{"share":"${share}"}}`, `[${JSON.stringify(share)}]`, `${share}`]) {
      try {
        parseRequest(Buffer.from(line));
        expect.unreachable();
      } catch (err) {
        expect(err).toBeInstanceOf(ProtocolError);
        expect(KeywardenError.isInstance(err, 'KW_AGENT_PROTOCOL')).toBe(true);
        expect((err as Error).message).not.toContain('kwshare1');
      }
    }
    expect(parseRequest(Buffer.from('{"id":3,"op":"seal"}'))).toEqual({ id: 3, op: 'seal', args: {} });
  });

  it('errors cross as {code, message} and come back as the same KeywardenError subclass', () => {
    const sealed = errorFromWire(errorToWire(new KeystoreSealedError('keystore: sealed; x')));
    expect(sealed).toBeInstanceOf(KeystoreSealedError);
    expect(KeywardenError.isInstance(sealed, 'KW_KEYSTORE_SEALED')).toBe(true);
    expect(sealed.message).toBe('keystore: sealed; x');
    const dec = errorFromWire(errorToWire(new DecryptionError('data key')));
    expect(dec).toBeInstanceOf(DecryptionError);
    expect(dec.message).toBe('data key: decryption failed (wrong key or context, or the data was modified)');
    expect(errorFromWire(errorToWire(new ShareError('share: a\nb')))).toMatchObject({
      code: 'KW_SHARE',
      message: 'share: a b',
    });
    // Anything else is not described to the client (the agent logs it).
    expect(errorToWire(new Error('SQLITE_IOERR at /secret/path'))).toEqual({
      code: 'KW_AGENT_INTERNAL',
      message: "agent: internal error (see the agent's log)",
    });
    expect(errorFromWire({ code: 'KW_AGENT_PROTOCOL', message: 'agent: nope' })).toBeInstanceOf(AgentProtocolError);
    expect(errorFromWire({ code: 'KW_AGENT_VERSION', message: 'agent: v' })).toBeInstanceOf(AgentVersionError);
    // The internal code, and codes this client does not know (a newer agent), are AgentErrors.
    expect(errorFromWire({ code: 'KW_AGENT_INTERNAL', message: 'agent: x' })).toBeInstanceOf(AgentError);
    expect(errorFromWire({ code: 'KW_FROM_THE_FUTURE', message: 'x: y' })).toBeInstanceOf(AgentError);
    expect(errorFromWire('garbage').message).toBe('agent: malformed error response');
  });

  it('hello: the newest common version is chosen; none in common is an AgentVersionError naming both sides', () => {
    const hello = (versions: unknown) =>
      parseRequest(Buffer.from(JSON.stringify({ id: 1, op: 'hello', args: { versions } })));
    expect(negotiateVersion(hello([1]))).toEqual({ protocol: PROTOCOL_VERSION, server: 'keywarden-agent' });
    expect(negotiateVersion(hello([1, 2, 3])).protocol).toBe(1);
    expect(() => negotiateVersion(hello([2, 3]))).toThrow(
      'agent: protocol version mismatch: the client speaks versions 2, 3, this agent speaks version 1; use matching releases of @keywarden/agent',
    );
    try {
      negotiateVersion(hello([2]));
      expect.unreachable();
    } catch (err) {
      expect(AgentVersionError.isInstance(err)).toBe(true);
    }
    for (const bad of [undefined, [], [0], ['1'], [1.5], Array(17).fill(1)]) {
      expect(() => negotiateVersion(hello(bad))).toThrow(ProtocolError);
    }
  });
});
