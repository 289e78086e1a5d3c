// Domain-separated, length-prefixed encoding of everything signed or hashed, mirroring
// starmux/transcript.py.
//
//   transcript(domain: string, ...fields: Uint8Array) -> Uint8Array
//   signedTime(seconds) -> 8 bytes: integer milliseconds, big-endian (CryptoError if
//   NaN, infinite or out of range)

import { concat, i64be, u32be, utf8 } from './bytes.js';
import { CryptoError, UsageError } from './errors.js';

export function transcript(domain, ...fields) {
  if (!domain.startsWith('starmux/')) throw new UsageError("transcript domains start with 'starmux/'");
  const domainBytes = utf8(domain);
  const parts = [u32be(domainBytes.length), domainBytes];
  for (const field of fields) {
    if (!(field instanceof Uint8Array)) throw new UsageError('transcript fields are bytes');
    parts.push(u32be(field.length), field);
  }
  return concat(...parts);
}

/** Python's round(): to the nearest integer, ties to even. */
function roundHalfEven(x) {
  const floor = Math.floor(x);
  const diff = x - floor;
  if (diff > 0.5) return floor + 1;
  if (diff < 0.5) return floor;
  return floor % 2 === 0 ? floor : floor + 1;
}

export function signedTime(seconds) {
  const millis = seconds * 1000;
  if (!Number.isFinite(millis) || millis < -(2 ** 63) || millis >= 2 ** 63) throw new CryptoError();
  const rounded = roundHalfEven(millis);
  return i64be(Number.isSafeInteger(rounded) ? rounded : BigInt(rounded));
}
