// The controller's side of resync (starmux/resync.py's Follower), as a table.
//
// Events are applied exactly once and in order (nextInOrder); a gap or `more`
// means "request again from the cursor"; the first complete answer means live.
// The table is the whole truth: an event not in it is our bug and throws; every
// page a machine sends is in it, so a peer can never make it throw.

export const Action = Object.freeze({ NOTHING: "nothing", REQUEST_SYNC: "request-sync", GO_LIVE: "go-live" });

const T = {
  "idle/last": ["idle", Action.NOTHING],
  "idle/pushed": ["idle", Action.NOTHING],
  "idle/incomplete": ["idle", Action.NOTHING],
  "idle/requested": ["syncing", Action.NOTHING],
  "syncing/requested": ["syncing", Action.NOTHING],
  "live/requested": ["syncing", Action.NOTHING],
  "syncing/last": ["live", Action.GO_LIVE],
  "syncing/pushed": ["syncing", Action.NOTHING],
  "syncing/incomplete": ["syncing", Action.REQUEST_SYNC],
  "live/last": ["live", Action.NOTHING],
  "live/pushed": ["live", Action.NOTHING],
  "live/incomplete": ["syncing", Action.REQUEST_SYNC],
  "idle/channel-lost": ["idle", Action.NOTHING],
  "syncing/channel-lost": ["idle", Action.NOTHING],
  "live/channel-lost": ["idle", Action.NOTHING],
};

export function pageKind(page, gap) {
  if (gap || page.more) return "incomplete";
  return page.live ? "pushed" : "last";
}

export class Follower {
  state = "idle";

  get live() {
    return this.state === "live";
  }

  #go(event) {
    const step = T[`${this.state}/${event}`];
    if (!step) throw new Error(`a follower cannot take ${event} when ${this.state}`);
    [this.state] = step;
    return step[1];
  }

  channelLost() {
    return this.#go("channel-lost");
  }

  requested() {
    return this.#go("requested");
  }

  page(page, gap) {
    return this.#go(pageKind(page, gap));
  }
}

// The events of a page that follow `cursorSeq` without a gap, in order.
export function nextInOrder(cursorSeq, events) {
  const applied = [];
  let seq = cursorSeq;
  for (const event of events) {
    const at = Number(event.seq);
    if (at <= seq) continue;
    if (at !== seq + 1) return { events: applied, gap: true };
    applied.push(event);
    seq = at;
  }
  return { events: applied, gap: false };
}

// The cursor a page applies against, and whether the machine's log was wiped.
export function cursorFor(cursor, page) {
  if (page.epoch === cursor.epoch) return { cursor, wiped: false };
  return { cursor: { epoch: page.epoch, seq: 0 }, wiped: Boolean(cursor.epoch) };
}
