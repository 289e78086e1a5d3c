// Machines of the account: online, last seen, running sessions; pairing a new one.
import { ago, h, machineText, replace } from "../dom.js";
import { codeInput } from "../qrinput.js";

export function machinesView(ctx) {
  const list = h("ul", { className: "list", id: "machine-list", "aria-label": "Machines" });
  const empty = h("p", { className: "muted" }, "No machines yet. On a machine, run “starmux daemon start” and scan the QR it shows.");
  const pairPanel = h("section", { className: "card", id: "pair-panel", hidden: true, "aria-labelledby": "pair-title" },
    h("h2", { id: "pair-title" }, "Pair a machine"),
    codeInput({
      label: "Pairing code (from “starmux daemon start”)",
      placeholder: "starmux://pair/v1?…",
      busyText: "Pairing: check that the machine shows the same comparison code…",
      onCode: async (code) => {
        await ctx.actions.pairMachine(code);
        pairPanel.hidden = true;
      },
    }));
  const el = h("div", {},
    h("div", { className: "row" },
      h("h1", { className: "grow" }, "Machines"),
      h("button", { type: "button", className: "primary", id: "pair-button", on: { click: () => { pairPanel.hidden = !pairPanel.hidden; } } }, "Pair a machine")),
    pairPanel, empty, list);

  function update(state) {
    const machines = Object.entries(state.machines).sort(([, a], [, b]) => String(a.name).localeCompare(String(b.name)));
    empty.hidden = machines.length > 0;
    const owner = state.device && state.device.role === "owner";
    replace(list, machines.map(([fp, m]) => {
      const sessions = Object.values(m.sessions || {});
      const running = sessions.filter((s) => s.status === "running" || s.status === "waiting_approval").length;
      return h("li", { className: "card", dataset: { machine: fp } },
        h("div", { className: "name" }, h("span", { className: m.online ? "dot-on" : "dot-off", "aria-hidden": "true" }, "● "), machineText(m.name, 80)),
        h("div", { className: "meta" }, m.online ? (m.live ? "online" : "online · syncing…") : `offline · last seen ${ago(m.lastSeen)}`, ` · ${running} running`),
        h("div", { className: "meta mono", title: "machine fingerprint" }, fp),
        h("div", { className: "actions" },
          h("button", { type: "button", on: { click: () => ctx.actions.show("sessions", { machine: fp }) } }, "Sessions"),
          owner ? h("button", { type: "button", className: "danger", on: { click: () => ctx.actions.revoke(fp, m.name) } }, "Revoke") : null));
    }));
  }
  return { el, update };
}
