// Reading a code three ways: paste it, scan a QR with the camera, or pick an image
// of the QR. Decoding: the browser's BarcodeDetector where it exists, else jsQR
// (vendored). Nothing decoded is trusted: the text goes to the protocol parser.

import { h } from "./dom.js";

const JSQR_URL = new URL("../vendor/node_modules/jsqr/dist/jsQR.js", import.meta.url);
const MAX_CODE_CHARS = 4096;
let jsqrLoading = null;

function loadJsQR() {
  if (globalThis.jsQR) return Promise.resolve(globalThis.jsQR);
  if (!jsqrLoading) {
    jsqrLoading = new Promise((resolve, reject) => {
      const script = document.createElement("script");
      script.src = JSQR_URL.href;
      script.onload = () => (globalThis.jsQR ? resolve(globalThis.jsQR) : reject(new Error("jsQR did not load")));
      script.onerror = () => reject(new Error("the QR decoder could not be loaded"));
      document.head.append(script);
    });
  }
  return jsqrLoading;
}

async function detector() {
  if ("BarcodeDetector" in globalThis) {
    try {
      const formats = await globalThis.BarcodeDetector.getSupportedFormats();
      if (formats.includes("qr_code")) {
        const native = new globalThis.BarcodeDetector({ formats: ["qr_code"] });
        return async (source) => {
          const found = await native.detect(source);
          return found.length ? found[0].rawValue : null;
        };
      }
    } catch {
      // fall through to jsQR
    }
  }
  const jsQR = await loadJsQR();
  const canvas = document.createElement("canvas");
  const context = canvas.getContext("2d", { willReadFrequently: true });
  return async (source) => {
    const width = source.videoWidth || source.width;
    const height = source.videoHeight || source.height;
    if (!width || !height) return null;
    canvas.width = width;
    canvas.height = height;
    context.drawImage(source, 0, 0, width, height);
    const found = jsQR(context.getImageData(0, 0, width, height).data, width, height);
    return found ? found.data : null;
  };
}

export async function decodeImageFile(file) {
  const bitmap = await createImageBitmap(file);
  try {
    return await (await detector())(bitmap);
  } finally {
    bitmap.close();
  }
}

// A form part: textarea + camera + upload. onCode(text) gets the code from any of them.
export function codeInput({ label, placeholder, onCode, busyText = "Working…" }) {
  const id = `code-${Math.random().toString(36).slice(2, 8)}`;
  const status = h("p", { className: "meta", role: "status" });
  const area = h("textarea", { id, placeholder, spellcheck: false, autocomplete: "off", maxLength: MAX_CODE_CHARS });
  const video = h("video", { className: "scanner", hidden: true, playsInline: true, muted: true, "aria-label": "camera" });
  let stream = null;

  const stop = () => {
    if (stream) for (const track of stream.getTracks()) track.stop();
    stream = null;
    video.hidden = true;
  };
  const submit = async (text) => {
    stop();
    const code = String(text || "").trim();
    if (!code) {
      status.textContent = "No code yet: paste it, scan it or pick an image of it.";
      return;
    }
    status.textContent = busyText;
    try {
      await onCode(code);
      status.textContent = "";
    } catch (exc) {
      status.textContent = exc.message || String(exc);
    }
  };
  const scan = async () => {
    try {
      stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
    } catch (exc) {
      status.textContent = `No camera (${exc.name || exc}): pick an image of the QR or paste the code instead.`;
      return;
    }
    video.srcObject = stream;
    video.hidden = false;
    await video.play();
    status.textContent = "Point the camera at the QR code…";
    const decode = await detector();
    const tick = async () => {
      if (!stream) return;
      const text = await decode(video).catch(() => null);
      if (text) await submit(text);
      else requestAnimationFrame(tick);
    };
    requestAnimationFrame(tick);
  };
  const upload = h("input", {
    type: "file",
    accept: "image/*",
    "aria-label": "QR image",
    on: {
      change: async () => {
        const file = upload.files[0];
        if (!file) return;
        status.textContent = "Reading the image…";
        const text = await decodeImageFile(file).catch(() => null);
        upload.value = "";
        if (!text) status.textContent = "No QR code found in that image.";
        else await submit(text);
      },
    },
  });
  return h(
    "div",
    {},
    h("label", { htmlFor: id }, label),
    area,
    video,
    h(
      "div",
      { className: "actions" },
      h("button", { type: "button", className: "primary", on: { click: () => submit(area.value) } }, "Use this code"),
      h("button", { type: "button", on: { click: scan } }, "Scan QR"),
      h("label", { className: "button file" }, "Pick QR image", upload),
    ),
    status,
  );
}
