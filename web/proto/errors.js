// The exception tree of the web protocol modules, mirroring starmux/errors.py:
//
//   StarmuxError
//    ├── UsageError            you misused the API (a bug on our side)
//    ├── CryptoError           opaque and final: a tag, signature or key did not check
//    │    └── RelayKeyMismatch the relay's key is not the pinned one
//    ├── RemoteProtocolError   the peer sent something malformed
//    │    ├── FrameError       a relay frame that does not parse
//    │    ├── MessageError     an application message (codec APP) that does not decode
//    │    └── DeviceLogError   a device log that does not verify (kind says why:
//    │                         format, gap, fork, stale, signature, authority, rule,
//    │                         last-owner)
//    ├── PairingCodeError      a pasted or scanned pairing/link code is malformed
//    └── PairingFailed         a pairing or link attempt ended (aborted: the peer said so)
//
// Every class carries an optional `hint` for people, like the Python tree.

export class StarmuxError extends Error {
  constructor(message = '', { hint = '' } = {}) {
    super(message);
    this.name = new.target.name;
    this.hint = hint;
  }
}
export class UsageError extends StarmuxError {}
export class CryptoError extends StarmuxError {
  constructor(message = 'crypto failure', options) {
    super(message, options);
  }
}
export class RelayKeyMismatch extends CryptoError {}
export class RemoteProtocolError extends StarmuxError {}
export class FrameError extends RemoteProtocolError {}
export class MessageError extends RemoteProtocolError {}
export class DeviceLogError extends RemoteProtocolError {
  /** kind: 'format' | 'gap' | 'fork' | 'stale' | 'signature' | 'authority' | 'rule' | 'last-owner' */
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}
export class PairingCodeError extends StarmuxError {}
export class PairingFailed extends StarmuxError {
  constructor(message, { aborted = false, hint = '' } = {}) {
    super(message, { hint });
    this.aborted = aborted;
  }
}
