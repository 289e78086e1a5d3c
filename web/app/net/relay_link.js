// One WebSocket to the relay: authentication, requests, routed DATA, and the
// relay's unsolicited frames. A thin adapter like the Python node's link
// (starmux/node/link.py): bytes move here, every rule lives in web/proto/.
//
// Invariants: nothing but the auth answer is sent before WELCOME; a frame that
// does not parse closes the connection (the relay would do the same to us); a
// request waits for the RESPONSE with its own request_id and no longer than
// REQUEST_TIMEOUT_MS; every pending request fails when the socket closes.

import { CONTROL } from "../../proto/codec.js";
import { encodeFrame, FrameType, parseFrame } from "../../proto/frames.js";
import { NodeAuth } from "../../proto/relay_auth.js";

const AUTH_TIMEOUT_MS = 15000;
const REQUEST_TIMEOUT_MS = 20000;
const NO_PEER = new Uint8Array(0);

export class RelayRefused extends Error {
  constructor(code, message) {
    super(message || code);
    this.code = code;
  }
}

export class LinkClosed extends Error {}

export function socketUrl(relayUrl) {
  return relayUrl.replace(/\/+$/, "") + "/v1/ws";
}

export class RelayLink {
  #socket = null;
  #pending = new Map();
  #nextRequest = 1;
  #handlers;

  // handlers: { data(peer, body), presence(peer, msg), notice(msg), error(peer, msg), closed(code, reason) }
  constructor({ url, keys, card, pinnedRelayKey = null, handlers = {} }) {
    this.url = url;
    this.keys = keys;
    this.card = card;
    this.pinnedRelayKey = pinnedRelayKey;
    this.#handlers = handlers;
    this.auth = null; // { status, account, relayCard }
  }

  get relayKey() {
    return this.auth ? this.auth.relayCard.signPublic : null;
  }

  connect() {
    return new Promise((resolve, reject) => {
      let socket;
      try {
        socket = new WebSocket(socketUrl(this.url));
      } catch (exc) {
        reject(new LinkClosed(`cannot reach the relay at ${this.url}: ${exc.message}`));
        return;
      }
      socket.binaryType = "arraybuffer";
      this.#socket = socket;
      const auth = new NodeAuth(this.keys, this.card, { pinnedRelayKey: this.pinnedRelayKey });
      let settled = false;
      const timer = setTimeout(() => fail(new LinkClosed("the relay did not authenticate us in time")), AUTH_TIMEOUT_MS);
      const fail = (error) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        socket.close(1000);
        reject(error);
      };
      socket.onmessage = (event) => {
        let frame;
        try {
          frame = parseFrame(new Uint8Array(event.data));
        } catch (exc) {
          if (!settled) fail(exc);
          else socket.close(4014);
          return;
        }
        if (!settled) {
          try {
            if (auth.state === "await-challenge") {
              socket.send(auth.receiveChallenge(frame));
            } else {
              this.auth = auth.receiveWelcome(frame);
              settled = true;
              clearTimeout(timer);
              resolve(this.auth);
            }
          } catch (exc) {
            fail(exc);
          }
          return;
        }
        this.#receive(frame);
      };
      socket.onclose = (event) => {
        fail(new LinkClosed(`the relay closed the connection (${event.code}${event.reason ? `: ${event.reason}` : ""})`));
        for (const [, waiter] of this.#pending) waiter.reject(new LinkClosed("the relay connection closed"));
        this.#pending.clear();
        if (this.#socket === socket) this.#socket = null;
        this.#handlers.closed?.(event.code, event.reason);
      };
      socket.onerror = () => {}; // onclose follows and says what happened
    });
  }

  #receive(frame) {
    switch (frame.type) {
      case FrameType.DATA:
        this.#handlers.data?.(frame.peer, frame.body);
        return;
      case FrameType.RESPONSE: {
        let message;
        try {
          message = CONTROL.decode(frame.body);
        } catch {
          this.#socket?.close(4014);
          return;
        }
        const waiter = this.#pending.get(message.request_id);
        if (!waiter) return;
        this.#pending.delete(message.request_id);
        if (message.kind === "failure") waiter.reject(new RelayRefused(message.code, message.message));
        else waiter.resolve(message);
        return;
      }
      case FrameType.PRESENCE:
        this.#decoded(frame, "presence", (m) => this.#handlers.presence?.(frame.peer, m));
        return;
      case FrameType.NOTICE:
        this.#decoded(frame, "notice", (m) => this.#handlers.notice?.(m));
        return;
      case FrameType.ERROR:
        this.#decoded(frame, "route-error", (m) => this.#handlers.error?.(frame.peer, m));
        return;
      default:
        this.#socket?.close(4014);
    }
  }

  #decoded(frame, kind, then) {
    let message;
    try {
      message = CONTROL.decodeAs(frame.body, kind);
    } catch {
      this.#socket?.close(4014);
      return;
    }
    then(message);
  }

  request(kind, fields = {}, expect = null) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== WebSocket.OPEN || !this.auth) {
      return Promise.reject(new LinkClosed("not connected to the relay"));
    }
    const id = this.#nextRequest++;
    const body = CONTROL.encode(kind, { request_id: id, ...fields });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        reject(new LinkClosed(`the relay did not answer ${kind}`));
      }, REQUEST_TIMEOUT_MS);
      this.#pending.set(id, {
        resolve: (m) => {
          clearTimeout(timer);
          if (expect && m.kind !== expect) reject(new RelayRefused("unexpected", `expected ${expect}, got ${m.kind}`));
          else resolve(m);
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
      });
      socket.send(encodeFrame(FrameType.REQUEST, NO_PEER, body));
    });
  }

  sendData(peer, body) {
    const socket = this.#socket;
    if (!socket || socket.readyState !== WebSocket.OPEN) throw new LinkClosed("not connected to the relay");
    socket.send(encodeFrame(FrameType.DATA, peer, body));
  }

  get open() {
    return Boolean(this.#socket && this.#socket.readyState === WebSocket.OPEN && this.auth);
  }

  close() {
    this.#socket?.close(1000);
  }
}
