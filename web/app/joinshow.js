// "Show a code for an owner to add": this browser (no camera needed) shows its own
// join code, as text and as a QR drawn on a canvas by the vendored qrcode-generator
// (a pinned npm package, never a hand-written encoder), and says where the link
// stands while an owner runs `starmux devices add CODE`.

import qrcode from "../vendor/node_modules/qrcode-generator/dist/qrcode.mjs";
import { h } from "./dom.js";

const MODULE_PX = 4;
const QUIET_MODULES = 4; // the QR standard's quiet zone
// Where the link stands: status texts the flow reports, in order (progress steps).
const STEPS = ["asking the relay for a code", "waiting for an owner", "an owner device opened", "compare the codes", "waiting for"];

/** Draw `text` as a QR code on a new canvas (dark on light whatever the theme). */
export function qrCanvas(text) {
  const qr = qrcode(0, "M"); // 0: the smallest version that holds the text
  qr.addData(text, "Byte");
  qr.make();
  const modules = qr.getModuleCount();
  const side = (modules + 2 * QUIET_MODULES) * MODULE_PX;
  const canvas = h("canvas", { width: side, height: side, className: "qr", role: "img", "aria-label": "QR code of the join code above" });
  const ink = canvas.getContext("2d");
  ink.fillStyle = "#fff";
  ink.fillRect(0, 0, side, side);
  ink.fillStyle = "#000";
  for (let row = 0; row < modules; row++) {
    for (let col = 0; col < modules; col++) {
      if (qr.isDark(row, col)) ink.fillRect((col + QUIET_MODULES) * MODULE_PX, (row + QUIET_MODULES) * MODULE_PX, MODULE_PX, MODULE_PX);
    }
  }
  return canvas;
}

// A card: a button that starts showing; then the code, its QR, the command to run,
// the progress and the expiry. onShow(callbacks) runs the whole link.
export function showCodeCard({ onShow }) {
  const codeText = h("pre", { id: "join-code", className: "mono", hidden: true });
  const qrSlot = h("div", { id: "join-qr" });
  const command = h("p", { className: "muted", hidden: true });
  const progress = h("progress", { id: "join-progress", max: STEPS.length, value: 0, hidden: true });
  const status = h("p", { className: "meta", role: "status", id: "join-status" });
  const expiry = h("p", { className: "meta", id: "join-expiry" });
  let timer = null;
  const stopTimer = () => timer && (clearInterval(timer), (timer = null));
  const button = h("button", { type: "button", className: "primary", id: "join-show" }, "Show a code");
  const callbacks = {
    show(text, expiresAt) {
      codeText.textContent = text;
      codeText.hidden = false;
      qrSlot.replaceChildren(qrCanvas(text));
      command.textContent = "On a device that is an owner, run “starmux devices add CODE” with this code (or scan the QR).";
      command.hidden = false;
      const tick = () => {
        const left = Math.max(0, Math.round(expiresAt - Date.now() / 1000));
        expiry.textContent = left > 0 ? `The code expires in ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")}.` : "The code has expired.";
      };
      stopTimer();
      tick();
      timer = setInterval(tick, 1000);
    },
    status(text) {
      const step = STEPS.findIndex((start) => text.startsWith(start));
      if (step >= 0) progress.value = step + 1;
      status.textContent = `${text[0].toUpperCase()}${text.slice(1)}…`;
    },
  };
  button.addEventListener("click", async () => {
    button.disabled = true;
    progress.hidden = false;
    progress.value = 0;
    callbacks.status("asking the relay for a code");
    try {
      await onShow(callbacks);
      status.textContent = "Linked.";
    } catch (exc) {
      status.textContent = exc.message || String(exc);
      codeText.hidden = true;
      qrSlot.replaceChildren();
      expiry.textContent = "";
    } finally {
      stopTimer();
      button.disabled = false;
    }
  });
  return h("div", {}, h("div", { className: "actions" }, button), progress, status, codeText, qrSlot, command, expiry);
}
