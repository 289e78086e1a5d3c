// What a machine's events mean for the screens: sessions, their output, the
// approvals inbox. Events arrive exactly once and in order (machine_channel.js);
// this turns them into store events and feeds output to whoever watches.
//
// Output stays out of the store (it can be megabytes): it is kept per session,
// bounded, and replayed to a terminal that attaches later. An event body that
// does not decode is skipped with a warning, like the CLI's cache does.

import { APP } from "../../proto/codec.js";

const MAX_OUTPUT_BYTES = 4 * 1024 * 1024; // per session kept for late watchers
const MAX_TOTAL_BYTES = 32 * 1024 * 1024; // all sessions: the oldest session's output goes first

export class SessionBook {
  constructor(store, { nameOf, me }) {
    this.store = store;
    this.nameOf = nameOf; // device key -> name shown for a decision
    this.me = me; // this device's signing key (hex)
    this.output = new Map(); // `${fp}/${session}` -> { chunks, bytes, dropped }
    this.watchers = new Map(); // same key -> Set(callback(Uint8Array))
    this.mine = new Set(); // checkpoint keys this device decided
  }

  // This machine's kept output, by session (for the engine's snapshot): copies, as
  // of now. The store writes the snapshot after an await, and output applied
  // meanwhile went into the same (live) arrays: saved ahead of the cursor saved with
  // it, it was shown twice after a reload and resync.
  snapshot(fp) {
    const out = {};
    for (const [key, kept] of this.output) {
      if (key.startsWith(`${fp}/`)) out[key.slice(fp.length + 1)] = { ...kept, chunks: [...kept.chunks] };
    }
    return out;
  }

  restore(fp, saved) {
    for (const [id, kept] of Object.entries(saved || {})) this.output.set(`${fp}/${id}`, kept);
  }

  forgetMachine(fp) {
    for (const key of [...this.output.keys()]) if (key.startsWith(`${fp}/`)) this.output.delete(key);
  }

  apply(fp, events) {
    const machine = this.store.state.machines[fp] || { sessions: {} };
    const sessions = { ...(machine.sessions || {}) };
    let changed = false;
    for (const event of events) {
      let body;
      try {
        body = APP.decode(event.body);
      } catch {
        continue;
      }
      const id = event.session;
      const at = event.at * 1000;
      const session = sessions[id] || { id, title: "", cwd: "", argv: [], status: "queued", updated: at };
      switch (body.kind) {
        case "session-created":
          sessions[id] = { ...session, title: body.title, cwd: body.cwd, argv: body.argv, command: body.argv.join(" "), created: at, updated: at };
          changed = true;
          break;
        case "session-status":
          sessions[id] = { ...session, status: body.status, exitCode: body.exit_code, detail: body.detail, updated: at };
          changed = true;
          break;
        case "output":
          this.#output(fp, id, body.data);
          break;
        case "cost":
          sessions[id] = { ...session, usd: (session.usd || 0) + body.usd };
          changed = true;
          break;
        case "checkpoint-raised":
          this.store.dispatch({
            type: "approval/raised",
            approval: { machine: fp, id: body.checkpoint, session: id, title: body.title, body: body.body, raised: at, expires: body.expires_at * 1000, decided: null },
          });
          break;
        case "checkpoint-decided":
          this.#decided(fp, body);
          break;
        default:
          break; // tasks and load: not shown by this app yet
      }
    }
    if (changed) this.store.dispatch({ type: "machine/update", fingerprint: fp, fields: { sessions } });
  }

  #decided(fp, body) {
    const key = `${fp}/${body.checkpoint}`;
    const byMe = body.by.length > 0 && toHexKey(body.by) === this.me;
    const by = body.by.length ? (byMe ? "you" : this.nameOf(body.by)) : "its default on expiry";
    this.store.dispatch({
      type: "approval/decided",
      machine: fp,
      id: body.checkpoint,
      decided: { outcome: body.decision, by, reason: body.reason, tooLate: !byMe, at: body.decided_at * 1000 },
    });
    this.mine.delete(key);
  }

  #output(fp, id, data) {
    const key = `${fp}/${id}`;
    const kept = this.output.get(key) || { chunks: [], bytes: 0, dropped: 0 };
    kept.chunks.push(data);
    kept.bytes += data.length;
    while (kept.bytes > MAX_OUTPUT_BYTES && kept.chunks.length > 1) {
      const old = kept.chunks.shift();
      kept.bytes -= old.length;
      kept.dropped += old.length;
    }
    this.output.set(key, kept);
    this.#bound(key);
    for (const watcher of this.watchers.get(key) || []) watcher(data);
  }

  #bound(current) {
    let total = 0;
    for (const kept of this.output.values()) total += kept.bytes;
    for (const [key, kept] of this.output) {
      if (total <= MAX_TOTAL_BYTES) break;
      if (key === current) continue;
      total -= kept.bytes;
      this.output.set(key, { chunks: [], bytes: 0, dropped: kept.dropped + kept.bytes });
    }
  }

  // Replay what is kept, then every new chunk; returns the detach function.
  watch(fp, id, callback) {
    const key = `${fp}/${id}`;
    const kept = this.output.get(key);
    if (kept) for (const chunk of kept.chunks) callback(chunk);
    const set = this.watchers.get(key) || new Set();
    set.add(callback);
    this.watchers.set(key, set);
    return () => set.delete(callback);
  }
}

export function toHexKey(bytes) {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}
