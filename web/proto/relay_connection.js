// One authenticated connection to the relay: the thin I/O adapter around the pure
// modules, for any WebSocket implementation with the browser's API (the page's, or
// Node's global WebSocket in the interop driver). No DOM.
//
//   const relay = await RelayConnection.open(url, keys, card, {pinnedRelayKey, WebSocketImpl, timeoutMs})
//   relay.auth                  {status, account, relayCard, relayTime}: relay auth done
//   await relay.request(kind, fields) -> reply message (request_id filled in);
//                                  throws RelayRefused (code, message, hint) on `failure`
//   relay.sendData(peer, body)  a DATA frame (peer: the destination's key)
//   await relay.next(predicate?, timeoutMs) -> the next event the predicate accepts:
//       {type: 'data', peer, body} | {type: 'presence', peer, online, at} |
//       {type: 'notice', event, subject, account, retryAfter} | {type: 'route-error', peer} |
//       {type: 'closed', code, reason}
//   relay.close()
//
// Frames that do not parse, or control bodies that do not decode, close the connection
// (the relay never sends them). Events not yet asked for wait in order; a closed
// connection answers every later `next` with its 'closed' event.

import { CONTROL } from './codec.js';
import { StarmuxError, RemoteProtocolError } from './errors.js';
import { FrameType, encodeFrame, parseFrame } from './frames.js';
import { NodeAuth } from './relay_auth.js';

const EMPTY = new Uint8Array(0);

export class RelayRefused extends StarmuxError {
  constructor(failure) {
    super(failure.message, { hint: failure.hint });
    this.code = failure.code;
  }
}

export class RelayTimeout extends StarmuxError {}

export class RelayConnection {
  #ws;
  #events = [];
  #waiters = [];
  #pending = new Map();
  #nextId = 1;
  #closed = null;

  constructor(ws) {
    this.#ws = ws;
    this.auth = null;
    ws.binaryType = 'arraybuffer';
  }

  static open(url, keys, card, { pinnedRelayKey = null, WebSocketImpl = globalThis.WebSocket, timeoutMs = 10000 } = {}) {
    const ws = new WebSocketImpl(`${url.replace(/\/+$/, '')}/v1/ws`);
    const connection = new RelayConnection(ws);
    const nodeAuth = new NodeAuth(keys, card, { pinnedRelayKey });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        reject(new RelayTimeout('the relay did not authenticate us in time'));
        ws.close();
      }, timeoutMs);
      ws.onmessage = (event) => {
        try {
          const frame = parseFrame(new Uint8Array(event.data));
          if (nodeAuth.state === 'await-challenge') {
            ws.send(nodeAuth.receiveChallenge(frame));
          } else if (nodeAuth.state === 'await-welcome') {
            connection.auth = nodeAuth.receiveWelcome(frame);
            clearTimeout(timer);
            ws.onmessage = (next) => connection.#onFrame(next.data);
            resolve(connection);
          }
        } catch (error) {
          clearTimeout(timer);
          ws.close();
          reject(error);
        }
      };
      ws.onclose = (event) => {
        clearTimeout(timer);
        connection.#onClose(event.code, event.reason);
        reject(new RelayRefused({ code: `closed-${event.code}`, message: `the relay closed the connection (${event.code} ${event.reason})`, hint: '' }));
      };
      ws.onerror = () => {};
    });
  }

  #onFrame(data) {
    let frame;
    try {
      frame = parseFrame(new Uint8Array(data));
      this.#dispatch(frame);
    } catch (error) {
      if (error instanceof RemoteProtocolError) {
        this.#ws.close();
        return;
      }
      throw error;
    }
  }

  #dispatch(frame) {
    switch (frame.type) {
      case FrameType.DATA:
        this.#push({ type: 'data', peer: frame.peer, body: frame.body });
        return;
      case FrameType.RESPONSE: {
        const reply = CONTROL.decode(frame.body);
        const waiter = this.#pending.get(reply.request_id);
        if (waiter === undefined) return;
        this.#pending.delete(reply.request_id);
        if (reply.kind === 'failure') waiter.reject(new RelayRefused(reply));
        else waiter.resolve(reply);
        return;
      }
      case FrameType.PRESENCE: {
        const presence = CONTROL.decodeAs(frame.body, 'presence');
        this.#push({ type: 'presence', peer: frame.peer, online: presence.online, at: presence.at });
        return;
      }
      case FrameType.NOTICE: {
        const notice = CONTROL.decode(frame.body);
        if (notice.kind === 'notice') {
          this.#push({ type: 'notice', event: notice.event, subject: notice.subject, account: notice.account, retryAfter: notice.retry_after });
        }
        return;
      }
      case FrameType.ERROR:
        CONTROL.decodeAs(frame.body, 'route-error');
        this.#push({ type: 'route-error', peer: frame.peer });
        return;
      default:
        throw new RemoteProtocolError(`unexpected frame type ${frame.type}`);
    }
  }

  #onClose(code, reason) {
    if (this.#closed !== null) return;
    this.#closed = { type: 'closed', code, reason };
    for (const waiter of this.#pending.values()) waiter.reject(new RelayRefused({ code: `closed-${code}`, message: `the relay connection closed (${code})`, hint: '' }));
    this.#pending.clear();
    this.#push(this.#closed);
  }

  #push(event) {
    this.#events.push(event);
    for (const waiter of [...this.#waiters]) waiter();
  }

  request(kind, fields = {}) {
    if (this.#closed !== null) return Promise.reject(new RelayRefused({ code: 'closed', message: 'the relay connection is closed', hint: '' }));
    const requestId = this.#nextId++;
    const body = CONTROL.encode(kind, { request_id: requestId, ...fields });
    return new Promise((resolve, reject) => {
      this.#pending.set(requestId, { resolve, reject });
      this.#ws.send(encodeFrame(FrameType.REQUEST, EMPTY, body));
    });
  }

  sendData(peer, body) {
    this.#ws.send(encodeFrame(FrameType.DATA, peer, body));
  }

  next(predicate = () => true, timeoutMs = 10000) {
    return new Promise((resolve, reject) => {
      const look = () => {
        const index = this.#events.findIndex((event) => event.type === 'closed' || predicate(event));
        if (index < 0) return false;
        const event = this.#events[index];
        if (event.type !== 'closed') this.#events.splice(index, 1);
        cleanup();
        resolve(event);
        return true;
      };
      const timer = setTimeout(() => {
        cleanup();
        reject(new RelayTimeout('timed out waiting for the relay'));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(timer);
        this.#waiters = this.#waiters.filter((w) => w !== look);
      };
      if (!look()) this.#waiters.push(look);
    });
  }

  close() {
    this.#ws.close();
  }
}
