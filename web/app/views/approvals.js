// One inbox of approvals across all machines: approve or deny (with a reason) in
// one tap; a checkpoint another device answered first shows "too late".
import { ago, h, machineText, replace } from "../dom.js";

export function approvalsView(ctx) {
  const list = h("ul", { className: "list", id: "approval-list", "aria-label": "Approvals" });
  const empty = h("p", { className: "muted" }, "Nothing waits for you.");
  const timing = h("p", { className: "meta", id: "ack-time", role: "status" });
  const el = h("div", {}, h("h1", {}, "Approvals"), empty, list, timing);

  function item(a, machineName) {
    const reason = h("input", { placeholder: "reason (optional, sent with a deny)", maxLength: 200, "aria-label": "Reason" });
    const decided = a.decided;
    return h("li", { className: "card", dataset: { checkpoint: a.id } },
      h("div", { className: "name" }, machineText(a.title, 200)),
      h("div", { className: "meta" }, `${machineText(machineName, 60)} · ${machineText(a.session || "", 40)} · raised ${ago(a.raised)}`),
      a.body ? h("p", {}, machineText(a.body, 2000)) : null,
      decided
        ? h("p", { className: decided.tooLate ? "too-late" : "decided" },
            decided.tooLate ? `Too late: decided by ${machineText(decided.by, 60)} (${decided.outcome})` : `${decided.outcome[0].toUpperCase()}${decided.outcome.slice(1)} by you`)
        : h("div", {}, reason,
            h("div", { className: "actions" },
              h("button", { type: "button", className: "primary", on: { click: () => ctx.actions.decide(a.machine, a.id, true, "") } }, "Approve"),
              h("button", { type: "button", className: "danger", on: { click: () => ctx.actions.decide(a.machine, a.id, false, reason.value) } }, "Deny"))));
  }

  function update(state) {
    const all = Object.values(state.approvals).sort((a, b) => Boolean(a.decided) - Boolean(b.decided) || (b.raised || 0) - (a.raised || 0));
    empty.hidden = all.length > 0;
    replace(list, all.map((a) => item(a, (state.machines[a.machine] || {}).name || a.machine)));
    timing.textContent = state.lastAckMs === null ? "" : `Your last answer reached its machine in ${Math.round(state.lastAckMs)} ms.`;
  }
  return { el, update };
}
