// The page's side of the code pin: ask the service worker which code runs and
// whether the server offers different code (then the keys stay locked).

const ASK_TIMEOUT_MS = 15000;

export async function controllingWorker() {
  if (!("serviceWorker" in navigator)) {
    throw new Error("this browser has no service workers (open the app over https or on localhost)");
  }
  await navigator.serviceWorker.register(new URL("../sw.js", import.meta.url), { scope: new URL("../", import.meta.url).pathname, type: "module" });
  await navigator.serviceWorker.ready;
  if (!navigator.serviceWorker.controller) {
    // The first visit ran code straight from the network; run the pinned copy instead.
    await new Promise((resolve) => navigator.serviceWorker.addEventListener("controllerchange", resolve, { once: true }));
    location.reload();
    await new Promise(() => {});
  }
  return navigator.serviceWorker.controller;
}

function ask(worker, message) {
  return new Promise((resolve, reject) => {
    const channel = new MessageChannel();
    const timer = setTimeout(() => reject(new Error("the service worker did not answer")), ASK_TIMEOUT_MS);
    channel.port1.onmessage = (event) => {
      clearTimeout(timer);
      if (event.data && event.data.error && !("pinned" in event.data)) reject(new Error(event.data.error));
      else resolve(event.data);
    };
    worker.postMessage(message, [channel.port2]);
  });
}

export const codeStatus = (worker) => ask(worker, { type: "status" });
export const trustOffered = (worker, hash) => ask(worker, { type: "trust", hash });
