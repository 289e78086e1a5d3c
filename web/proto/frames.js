// The relay-visible envelope, mirroring starmux/frames.py: the msgpack array
// [type, peer, body]; peer empty or a 32-byte key; body at most 65,535 bytes.
//
//   FrameType                      {CHALLENGE: 1, AUTH: 2, WELCOME: 3, DATA: 16, ...}
//   encodeFrame(type, peer, body) -> Uint8Array
//   parseFrame(bytes, {maxSize}) -> {type, peer, body}    throws FrameError only

import { FrameError, UsageError } from './errors.js';
import { pack, unpack } from './msgpack.js';

export const PEER_KEY_SIZE = 32;
export const MAX_BODY_SIZE = 65535;
export const MAX_FRAME_SIZE = MAX_BODY_SIZE + 64;

export const FrameType = Object.freeze({
  CHALLENGE: 1, // relay -> node: the one-time auth nonce and the relay's card
  AUTH: 2, // node -> relay: identity card and signature over the transcript
  WELCOME: 3, // relay -> node: authenticated; the relay's signature over both nonces
  DATA: 16, // routed, opaque end-to-end ciphertext
  ERROR: 17, // relay -> node: something about `peer` failed
  PRESENCE: 18, // relay -> controller: `peer` came online or went offline
  REQUEST: 32, // node -> relay: a control request
  RESPONSE: 33, // relay -> node: the answer to a REQUEST
  NOTICE: 34, // relay -> node: unsolicited news
});
const VALID_TYPES = new Set(Object.values(FrameType));

export function encodeFrame(type, peer, body) {
  if (!VALID_TYPES.has(type)) throw new UsageError(`unknown frame type ${type}`);
  if (!(peer instanceof Uint8Array) || (peer.length !== 0 && peer.length !== PEER_KEY_SIZE)) {
    throw new UsageError("a frame's peer is empty or a 32-byte key");
  }
  if (!(body instanceof Uint8Array) || body.length > MAX_BODY_SIZE) {
    throw new UsageError(`a frame body is at most ${MAX_BODY_SIZE} bytes`);
  }
  return pack([type, peer, body]);
}

export function parseFrame(data, { maxSize = MAX_FRAME_SIZE } = {}) {
  if (!(data instanceof Uint8Array)) throw new FrameError('a frame must be bytes');
  if (data.length > maxSize) {
    throw new FrameError(`frame of ${data.length} bytes exceeds the ${maxSize}-byte limit`);
  }
  let value;
  try {
    value = unpack(data);
  } catch {
    throw new FrameError('frame is not valid msgpack');
  }
  if (!Array.isArray(value) || value.length !== 3) throw new FrameError('a frame is a 3-element array');
  let [type, peer, body] = value;
  if (typeof type !== 'number' || !VALID_TYPES.has(type)) throw new FrameError('unknown frame type');
  // Python reads frames with raw=True and max_str_len=0: only an empty str gets through,
  // as empty bytes.
  if (peer === '') peer = new Uint8Array(0);
  if (body === '') body = new Uint8Array(0);
  if (!(peer instanceof Uint8Array) || (peer.length !== 0 && peer.length !== PEER_KEY_SIZE)) {
    throw new FrameError("a frame's peer must be empty or a 32-byte key");
  }
  if (!(body instanceof Uint8Array)) throw new FrameError("a frame's body must be bytes");
  if (body.length > MAX_BODY_SIZE) throw new FrameError('frame body too large');
  return { type, peer, body };
}
