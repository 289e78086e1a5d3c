// This device's connection to the relay, as the app uses it: web/proto's
// RelayConnection (authentication, framing, requests: the adapter the interop
// driver uses too) plus a pump that hands every event to the engine's handlers
// as it arrives, and a bound on how long a request may wait.
//
// Invariants: one pump per connection, ending with the connection's 'closed'
// event (handed to `closed` exactly once); a request fails after
// REQUEST_TIMEOUT_MS instead of waiting for a relay that stopped answering.

import { RelayConnection, RelayRefused } from "../../proto/relay_connection.js";

const AUTH_TIMEOUT_MS = 15000;
const REQUEST_TIMEOUT_MS = 20000;
const FOREVER_MS = 2 ** 31 - 1; // setTimeout's largest delay

export { RelayRefused };

export class LinkClosed extends Error {
  constructor(message, code = 0) {
    super(message);
    this.code = code; // the WebSocket close code, when the relay closed it
  }
}

export class RelayLink {
  #connection = null;
  #handlers;
  #closed = false;

  // handlers: { data(peer, body), presence(peer, {online, at}), notice(event),
  //             error(peer), closed(code, reason) }
  constructor({ url, keys, card, pinnedRelayKey = null, handlers = {} }) {
    this.url = url;
    this.keys = keys;
    this.card = card;
    this.pinnedRelayKey = pinnedRelayKey;
    this.#handlers = handlers;
    this.auth = null; // { status, account, relayCard, relayTime }
  }

  get relayKey() {
    return this.auth ? this.auth.relayCard.signPublic : null;
  }

  get open() {
    return this.#connection !== null && !this.#closed;
  }

  async connect() {
    try {
      this.#connection = await RelayConnection.open(this.url, this.keys, this.card, {
        pinnedRelayKey: this.pinnedRelayKey,
        timeoutMs: AUTH_TIMEOUT_MS,
      });
    } catch (error) {
      this.#closed = true;
      if (error instanceof RelayRefused && error.code.startsWith("closed-")) {
        const code = Number(error.code.slice(7));
        throw new LinkClosed(`cannot reach the relay at ${this.url} (${code})`, code);
      }
      throw error;
    }
    this.auth = this.#connection.auth;
    this.#pump();
    return this.auth;
  }

  async #pump() {
    const connection = this.#connection;
    for (;;) {
      let event;
      try {
        event = await connection.next(() => true, FOREVER_MS);
      } catch {
        continue; // the wait ran out (after 24 days): wait again
      }
      switch (event.type) {
        case "data":
          this.#handlers.data?.(event.peer, event.body);
          break;
        case "presence":
          this.#handlers.presence?.(event.peer, event);
          break;
        case "notice":
          this.#handlers.notice?.(event);
          break;
        case "route-error":
          this.#handlers.error?.(event.peer);
          break;
        case "closed":
          this.#closed = true;
          this.#handlers.closed?.(event.code, event.reason);
          return;
        default:
          break;
      }
    }
  }

  async request(kind, fields = {}, expect = null) {
    if (!this.open) throw new LinkClosed("not connected to the relay");
    let timer;
    const timeout = new Promise((_, reject) => {
      timer = setTimeout(() => reject(new LinkClosed(`the relay did not answer ${kind}`)), REQUEST_TIMEOUT_MS);
    });
    try {
      const reply = await Promise.race([this.#connection.request(kind, fields), timeout]);
      if (expect && reply.kind !== expect) throw new LinkClosed(`the relay answered ${reply.kind}, not ${expect}`);
      return reply;
    } finally {
      clearTimeout(timer);
    }
  }

  sendData(peer, body) {
    if (!this.open) throw new LinkClosed("not connected to the relay");
    this.#connection.sendData(peer, body);
  }

  close() {
    this.#connection?.close();
  }
}
