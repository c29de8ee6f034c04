// peercam's service worker: the app shell only, so the installed app opens
// (and shows its camera list) without the network.
//
// Cached: the page, its modules, style, manifest and icons, nothing else.
// Never cached or even seen: video (WebRTC, not HTTP), keys (IndexedDB),
// signaling (a WebSocket, which service workers do not intercept), /healthz,
// /metrics, or anything not on the list below. The shell is served
// network-first, so a server update shows on the next load; the cache is the
// fallback when offline.

const PREFIX = "peercam-shell-";
const CACHE = PREFIX + "v3";  // a new name drops the old copy on activation
const SHELL = [
  "./", "viewer.js", "viewer.css", "codec.mjs", "keys.mjs", "cameras.mjs", "zoom.mjs", "list.js",
  "player.js", "controls.js", "manifest.webmanifest", "icon-192.png", "icon-512.png",
];
const SHELL_URLS = new Set(SHELL.map((path) => new URL(path, self.registration.scope).href));

self.addEventListener("install", (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL))
    .then(() => self.skipWaiting()));
});

self.addEventListener("activate", (event) => {
  event.waitUntil(caches.keys()
    // Only this app's older shells: other caches of the origin are not ours.
    .then((names) => Promise.all(names.filter((n) => n.startsWith(PREFIX) && n !== CACHE)
      .map((n) => caches.delete(n))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  url.hash = "";
  url.search = "";
  if (!SHELL_URLS.has(url.href)) return;  // not ours: the browser fetches it as usual
  event.respondWith(fetch(request).then((response) => {
    // Only a plain same-origin 200 is kept (no redirect, no opaque or partial body).
    if (response.status === 200 && response.type === "basic" && !response.redirected) {
      const copy = response.clone();
      caches.open(CACHE).then((cache) => cache.put(url.href, copy));
    }
    return response;
  }).catch(() => caches.match(url.href).then((hit) => hit || Response.error())));
});
