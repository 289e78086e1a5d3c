// The Devices screen's notifications card: turn pushes on or off for this device,
// choose the kinds and when a reminder comes. It opens with the choices this device
// last saved on its machines (app/notifications.js keeps them), not with defaults.
import { h, machineText } from "../dom.js";
import { KINDS } from "../notifications.js";

const percentOf = (fraction) => Math.round(fraction * 100);

export function notificationsCard(ctx) {
  const status = h("p", { className: "meta", id: "notify-status", role: "status" });
  const boxes = KINDS.map(([kind, label]) =>
    h("label", { className: "check" }, h("input", { type: "checkbox", name: "notify-kind", value: kind, checked: true }), ` ${label}`));
  const reminder = h("input", { id: "notify-reminder", type: "number", min: "1", max: "99", value: "80", inputMode: "numeric" });
  const summary = (results) =>
    results.map((r) => `${machineText(r.name || "machine", 60)}: ${r.ok ? "yes" : machineText(r.error, 120)}`).join(" · ");
  const state = h("p", { className: "meta", id: "notify-state" });
  const showState = (on) => {
    state.textContent = on ? "Pushes are on for this device." : "Pushes are off for this device.";
  };
  const run = (busy, done, failed, work) => async () => {
    status.textContent = busy;
    try {
      status.textContent = `${done} ${summary(await work())}`;
    } catch (exc) {
      status.textContent = `${failed}: ${exc.message}`;
    }
  };
  const enable = h("button", { type: "button", className: "primary", id: "notify-enable", on: { click: run("Turning on…", "Notifications on.", "Not turned on", async () => {
    const results = await ctx.actions.enablePush();
    showState(true);
    return results;
  }) } }, "Turn on notifications");
  const disable = h("button", { type: "button", id: "notify-disable", on: { click: run("Turning off…", "Notifications off.", "Not turned off", async () => {
    const results = await ctx.actions.disablePush();
    showState(false);
    return results;
  }) } }, "Turn off notifications");
  const save = h("button", { type: "button", id: "notify-save", on: { click: async () => {
    const kinds = boxes.map((b) => b.firstChild).filter((i) => i.checked).map((i) => i.value);
    const percent = Number(reminder.value);
    if (!Number.isInteger(percent) || percent < 1 || percent > 99) {
      status.textContent = "Not saved: the reminder comes at 1 to 99 % of a checkpoint's time";
      return;
    }
    await run("Saving…", "Saved.", "Not saved", () => ctx.actions.saveNotifySettings(kinds, percent / 100))();
  } } }, "Save choices");
  ctx.actions.notifySettings().then((saved) => {
    for (const box of boxes) box.firstChild.checked = saved.kinds.includes(box.firstChild.value);
    reminder.value = String(percentOf(saved.reminder_fraction));
    showState(saved.push);
  });
  return h("section", { className: "card", "aria-labelledby": "notify-title" },
    h("h2", { id: "notify-title" }, "Notifications"),
    h("p", { className: "muted" }, "Machines encrypt each notification to this device: the relay and the push service see only its size. Approve and Deny show on the notification in Chrome, Edge and Android; elsewhere a tap opens the approval here."),
    state,
    h("fieldset", {}, h("legend", {}, "Notify me when"), ...boxes),
    h("label", { htmlFor: "notify-reminder" }, "Remind me at this % of a checkpoint's time"), reminder,
    h("div", { className: "actions" }, enable, save, disable), status);
}
