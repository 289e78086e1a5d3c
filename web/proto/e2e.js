// The end-to-end envelope, mirroring starmux/e2e.py: the first byte of every DATA body.
//
//   Kind, wrap(kind, payload) -> body, unwrap(body) -> [kind, payload]
//   (unwrap throws RemoteProtocolError for an unknown kind; callers ignore those)

import { RemoteProtocolError } from './errors.js';

export const Kind = Object.freeze({
  PAIR_HANDSHAKE: 0x01, // Noise_XXpsk3 handshake messages
  PAIR_TRANSPORT: 0x02, // encrypted pairing messages after the handshake
  PAIR_ABORT: 0x03, // "pairing failed on my side"; no content
  PAIR_CANCEL: 0x04, // "my person cancelled"; no content
  SESSION_HANDSHAKE: 0x10, // Noise_KK handshake messages (every reconnect)
  SESSION_TRANSPORT: 0x11, // encrypted application messages
  SESSION_RESET: 0x12, // "my channel failed; handshake again"; no content
  DEVICE_LOG: 0x13, // the account's signed device log, in clear
});
const KINDS = new Set(Object.values(Kind));

export function wrap(kind, payload = new Uint8Array(0)) {
  const out = new Uint8Array(payload.length + 1);
  out[0] = kind;
  out.set(payload, 1);
  return out;
}

export function unwrap(body) {
  if (body.length === 0 || !KINDS.has(body[0])) throw new RemoteProtocolError('unknown end-to-end message kind');
  return [body[0], body.slice(1)];
}
