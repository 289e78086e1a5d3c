// One machine's live channel from this device: Noise_KK on every (re)connect,
// resync from the cursor, then live pages; commands wait in an outbox until the
// machine acks them. The browser's mirror of client/live.py's MachineChannel:
//
//   handshake (KK) ──▶ syncing (sync-request pages until more=false) ──▶ live
//        ▲                                                               │
//        └──── SESSION_RESET / decrypt failure / relay reconnect ◀───────┘
//
// Invariants: events reach the host exactly once and in seq order (the cursor
// moves only past applied events; nextInOrder drops replays and stops at gaps);
// a command id is reused on every resend, so the machine runs it at most once;
// the device log goes to the machine in clear before each handshake (a machine
// that missed this device's `add` could not finish KK otherwise).

import { Kind, unwrap, wrap } from "../../proto/e2e.js";
import { CryptoError, RemoteProtocolError } from "../../proto/errors.js";
import { finish, initiate, resetBody } from "../../proto/live_channel.js";
import { AckPacer, NO_EPOCH } from "./live_window.js";
import { Action, cursorFor, Follower, nextInOrder } from "./resync.js";

const SYNC_PAGE = 1000;

export class MachineChannel {
  constructor(key, card, host) {
    this.key = key;
    this.card = card;
    this.host = host; // { send(peer, body), keys, relayKey, deviceLog(), apply(machine, events, wiped), changed(machine), liveWindow() }
    this.online = false;
    this.handshake = null;
    this.channel = null;
    this.follow = new Follower();
    this.pacer = new AckPacer(); // live-acks: the machine's pushes stay within a window
    this.cursor = { epoch: "", seq: 0 };
    this.outbox = new Map(); // command id -> { kind, fields }
    this.acks = new Map(); // command id -> [resolve]
  }

  get live() {
    return this.follow.live;
  }

  #offLive() {
    this.follow.channelLost();
    this.pacer.reset();
    this.host.changed(this);
  }

  startHandshake() {
    this.channel = null;
    this.#offLive();
    const log = this.host.deviceLog();
    if (log) this.host.send(this.key, wrap(Kind.DEVICE_LOG, log.encode()));
    const [hs, body] = initiate(this.host.keys, this.card, { relayKey: this.host.relayKey });
    this.handshake = hs;
    this.host.send(this.key, body);
  }

  presence(online) {
    this.online = online;
    if (online && this.handshake === null && this.channel === null) {
      this.startHandshake();
    } else {
      const hadChannel = this.channel !== null;
      this.channel = null;
      this.#offLive();
      if (!online) this.handshake = null;
      else if (hadChannel) this.startHandshake();
    }
  }

  linkLost() {
    this.online = false;
    this.handshake = null;
    this.channel = null;
    this.#offLive();
  }

  receive(body) {
    let kind;
    let payload;
    try {
      [kind, payload] = unwrap(body);
    } catch {
      return;
    }
    if (kind === Kind.SESSION_TRANSPORT && this.channel !== null) {
      let message;
      try {
        message = this.channel.open(payload);
      } catch (error) {
        if (error instanceof CryptoError) {
          this.host.send(this.key, resetBody());
          this.startHandshake();
          return;
        }
        if (error instanceof RemoteProtocolError) {
          // It decrypted, so the machine sent it: a resync would get the same answer.
          this.channel = null;
          this.#offLive();
          this.host.warn(this, `sent an invalid message (${error.message}); not syncing it now`);
          return;
        }
        throw error;
      }
      this.#message(message);
      return;
    }
    if (kind === Kind.SESSION_HANDSHAKE && this.handshake !== null) {
      try {
        this.channel = finish(this.handshake, payload);
      } catch (error) {
        if (!(error instanceof CryptoError)) throw error;
        this.host.warn(this, "the handshake failed");
        return;
      } finally {
        this.handshake = null;
      }
      const log = this.host.deviceLog();
      if (log) this.#send("device-log-sync", { entries: log.encode() });
      this.#requestSync();
    } else if (kind === Kind.SESSION_RESET) {
      this.startHandshake();
    }
  }

  #message(message) {
    if (message.kind === "event-page") {
      const { cursor, wiped } = cursorFor(this.cursor, message);
      const inOrder = nextInOrder(cursor.seq, message.events);
      this.cursor = inOrder.events.length
        ? { epoch: cursor.epoch, seq: Number(inOrder.events[inOrder.events.length - 1].seq) }
        : cursor;
      if (inOrder.events.length || wiped) this.host.apply(this, inOrder.events, wiped);
      const action = this.follow.page(message, inOrder.gap);
      if (action === Action.REQUEST_SYNC) this.#requestSync();
      else if (action === Action.GO_LIVE) {
        this.host.changed(this);
        this.#flush();
      }
      if (!inOrder.gap && this.follow.live) this.#acknowledge(message);
    } else if (message.kind === "command-ack") {
      this.outbox.delete(message.command_id);
      const waiters = this.acks.get(message.command_id) || [];
      this.acks.delete(message.command_id);
      for (const resolve of waiters) resolve(message);
    } else if (message.kind === "device-log-sync") {
      this.host.deviceLogOffered(this, message.entries);
    }
  }

  #acknowledge(page) {
    this.pacer.applied(page);
    const window = this.host.liveWindow();
    if (!this.pacer.due(window)) return;
    this.#sendAck(this.pacer.epoch, this.pacer.seq, window);
  }

  // A live-ack: everything through `seq` of `epoch` applied, `window` from now on.
  #sendAck(epoch, seq, window) {
    this.#send("live-ack", { epoch, seq, window_pages: window.pages, window_bytes: window.bytes });
    this.pacer.sent(window);
  }

  #requestSync() {
    // On a new channel the window goes first: without one a machine answers in 48 KiB
    // pages, and many machines answering at once would pass what the relay holds for
    // this browser. A live-ack for the cursor (or for no epoch yet) acknowledges nothing.
    if (this.pacer.window === null) {
      this.#sendAck(this.cursor.epoch || NO_EPOCH, this.cursor.seq, this.host.liveWindow());
    }
    this.follow.requested();
    this.#send("sync-request", { epoch: this.cursor.epoch, after_seq: this.cursor.seq, limit: SYNC_PAGE });
  }

  #send(kind, fields) {
    if (this.channel === null) return;
    this.host.send(this.key, this.channel.seal(kind, fields));
  }

  #flush() {
    for (const [id, { body }] of this.outbox) this.#send("command", { command_id: id, body });
  }

  // Queue a command (APP-encoded body); sent now if live, else when live again.
  submit(commandId, body) {
    this.outbox.set(commandId, { body });
    const acked = new Promise((resolve) => {
      const waiters = this.acks.get(commandId) || [];
      waiters.push(resolve);
      this.acks.set(commandId, waiters);
    });
    if (this.live) this.#send("command", { command_id: commandId, body });
    return acked;
  }

  // A channel message that is stale unless sent now (e.g. viewing): dropped when not live.
  message(kind, fields) {
    if (this.live) this.#send(kind, fields);
  }

  sendDeviceLog(log) {
    this.#send("device-log-sync", { entries: log.encode() });
  }
}
