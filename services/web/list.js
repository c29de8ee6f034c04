// The camera list screen: every camera this browser watches, added from a
// pairing link (pasted or scanned as a QR code), renamed in place, removed.
//
// The list (names, last seen) lives in localStorage and holds no secret. The
// online dot comes from the rendezvous, which is not trusted: it is only a
// hint; opening the camera is what proves it.

import {
  LinkError, addCamera, lastSeenText, parseCameraLink, parseCameras, removeCamera,
  renameCamera, touchCamera,
} from "./cameras.mjs";
import { cleanName, defaultViewerName, newSessionId, signalingUrl } from "./codec.mjs";

const LIST_KEY = "peercam.cameras";
const NAME_KEY = "peercam.viewerName";
const PROBE_MS = 5000;          // the whole presence check, socket included
const PROBE_EVERY_MS = 30000;   // while the list is on screen
const REMOVE_CONFIRM_MS = 3000; // a second tap on "remove" within this long removes

const state = {
  online: new Map(),   // id -> true / false (what the server said last), absent: unknown
  probing: null,
  probeTimer: 0,
  onWatch: null,
  modelName: "",       // the device model, when the browser tells it (client hints)
  modelKnown: null,    // a promise: settled once the model is known (or will not be)
};
const MODEL_WAIT_MS = 500;  // pairing waits at most this long for the model's name
let ui = null;

// ---- storage ----------------------------------------------------------------

function storageGet(key) {
  try {
    return localStorage.getItem(key);
  } catch (_) {
    return null;
  }
}

function storageSet(key, value) {
  try {
    localStorage.setItem(key, value);
  } catch (_) { /* storage off: the list lives for this page only */ }
}

let memoryList = null;  // when localStorage is off

export function cameras() {
  return memoryList || parseCameras(storageGet(LIST_KEY));
}

function save(list) {
  memoryList = null;
  storageSet(LIST_KEY, JSON.stringify(list));
  if (storageGet(LIST_KEY) === null) memoryList = list;
  window.peercam.cameras = list.map((c) => ({ ...c, online: state.online.get(c.id) ?? null }));
  render();
}

/** A camera opened from a link is on the list from then on. */
export function remember(id) {
  const list = cameras();
  if (!list.some((c) => c.id === id)) save(addCamera(list, id, "", Date.now()));
}

/** Its video played: it is online, seen now. */
export function markSeen(id) {
  state.online.set(id, true);
  save(touchCamera(cameras(), id, Date.now()));
}

/** The name the camera's owner sees for this browser in `peercam viewers list`. */
export function viewerName() {
  return cleanName(storageGet(NAME_KEY)) || defaultName();
}

/** The name to pair with: as viewerName(), once the device model had its chance. */
export async function pairingName() {
  let timer = 0;
  await Promise.race([state.modelKnown || Promise.resolve(),
    new Promise((resolve) => { timer = setTimeout(resolve, MODEL_WAIT_MS); })]);
  clearTimeout(timer);
  return viewerName();
}

function defaultName() {
  return defaultViewerName(navigator.userAgent || "", state.modelName);
}

function setViewerName(text) {
  const name = cleanName(text);
  if (!name || name === defaultName()) {
    try {
      localStorage.removeItem(NAME_KEY);
    } catch (_) { /* nothing stored */ }
  } else {
    storageSet(NAME_KEY, name);
  }
}

async function learnModel() {
  // Chromium on Android tells the model only when asked (user-agent client
  // hints); the plain user agent says "K" these days.
  const data = navigator.userAgentData;
  if (!data || !data.mobile || !data.getHighEntropyValues) return;
  try {
    const hints = await data.getHighEntropyValues(["model"]);
    state.modelName = cleanName(hints.model);
    render();
  } catch (_) { /* no model: the platform name does */ }
}

// ---- presence -----------------------------------------------------------------

function probe() {
  // One short socket: "prepare" for each camera in turn. The server answers
  // "prepared" for a camera online and "unavailable" for one that is not (it
  // answers in order, on one connection). No session is made, nothing is signed.
  if (state.probing) return state.probing;
  const ids = cameras().map((c) => c.id);
  if (!ids.length) return Promise.resolve();
  state.probing = new Promise((resolve) => {
    let ws;
    let index = -1;
    const done = () => {
      clearTimeout(timer);
      if (ws) {
        ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close(1000);
        } catch (_) { /* closing */ }
      }
      state.probing = null;
      save(cameras());
      resolve();
    };
    const next = () => {
      index += 1;
      if (index >= ids.length) {
        done();
        return;
      }
      ws.send(JSON.stringify({ type: "prepare", device_id: ids[index], session_id: newSessionId() }));
    };
    const timer = setTimeout(done, PROBE_MS);
    try {
      ws = new WebSocket(signalingUrl(location.href));
    } catch (_) {
      done();
      return;
    }
    ws.onmessage = (ev) => {
      let msg;
      try {
        msg = JSON.parse(ev.data);
      } catch (_) {
        return;
      }
      if (!msg || typeof msg !== "object") return;
      if (msg.type === "hello") {
        next();
      } else if (msg.type === "prepared" && index >= 0 && index < ids.length) {
        state.online.set(ids[index], true);
        const list = touchCamera(cameras(), ids[index], Date.now());
        storageSet(LIST_KEY, JSON.stringify(list));
        next();
      } else if (msg.type === "error" && index >= 0 && index < ids.length) {
        if (msg.code === "unavailable") state.online.set(ids[index], false);
        else state.online.delete(ids[index]);  // rate limited or refused: unknown
        next();
      }
    };
    ws.onclose = ws.onerror = done;
  });
  return state.probing;
}

function schedule() {
  clearTimeout(state.probeTimer);
  state.probeTimer = 0;
  if (ui.home.hidden || document.visibilityState !== "visible") return;
  probe().then(() => {
    if (!ui.home.hidden) state.probeTimer = setTimeout(schedule, PROBE_EVERY_MS);
  });
}

// ---- the screen ---------------------------------------------------------------

function render() {
  if (!ui) return;
  const list = cameras();
  const now = Date.now();
  ui.empty.hidden = list.length > 0;
  ui.viewerName.textContent = viewerName();
  const keep = new Set(list.map((c) => c.id));
  for (const li of [...ui.list.children]) if (!keep.has(li.dataset.id)) li.remove();
  list.forEach((camera, i) => {
    let li = [...ui.list.children].find((item) => item.dataset.id === camera.id);
    if (!li) li = makeItem(camera.id);
    if (ui.list.children[i] !== li) ui.list.insertBefore(li, ui.list.children[i] || null);
    const online = state.online.get(camera.id);
    const name = li.querySelector(".cam-name");
    if (!li.classList.contains("editing")) name.textContent = camera.name;
    li.dataset.online = online === undefined ? "unknown" : String(online);
    li.querySelector(".cam-state").textContent =
      (online === true ? "online" : online === false ? "offline" : "…")
      + " · " + lastSeenText(camera.lastSeen, now);
  });
}

function el(tag, props, ...children) {
  // Properties set as such; "aria-*" ones as attributes. Text only as text.
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key.startsWith("aria-")) node.setAttribute(key, value);
    else node[key] = value;
  }
  node.append(...children);
  return node;
}

function makeItem(id) {
  const li = document.createElement("li");
  li.dataset.id = id;
  // Built node by node, never from markup: names come from links, QR codes
  // and storage, and the page's policy (Trusted Types) refuses HTML strings.
  const open = el("button", { type: "button", className: "cam-open" },
    el("span", { className: "cam-dot", "aria-hidden": "true" }),
    el("span", { className: "cam-text" },
      el("span", { className: "cam-name" }), el("span", { className: "cam-state" })));
  const rename = el("input", { className: "cam-rename-input", type: "text", maxLength: 64,
    "aria-label": "Camera name", hidden: true });
  li.append(open, rename,
    el("button", { type: "button", className: "cam-rename", "aria-label": "Rename",
      title: "Rename", textContent: "✎" }),
    el("button", { type: "button", className: "cam-remove", "aria-label": "Remove",
      title: "Remove", textContent: "✕" }));
  li.querySelector(".cam-open").addEventListener("click", () => state.onWatch(id, null));
  li.querySelector(".cam-rename").addEventListener("click", () => startRename(li));
  const input = li.querySelector(".cam-rename-input");
  input.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") finishRename(li, true);
    if (ev.key === "Escape") finishRename(li, false);
  });
  input.addEventListener("blur", () => finishRename(li, true));
  const remove = li.querySelector(".cam-remove");
  remove.addEventListener("click", () => {
    // Two taps: the first asks, the second (within a few seconds) removes.
    if (remove.dataset.armed) {
      save(removeCamera(cameras(), id));
      return;
    }
    remove.dataset.armed = "1";
    remove.textContent = "Remove?";
    remove.classList.add("armed");
    setTimeout(() => {
      delete remove.dataset.armed;
      remove.textContent = "✕";
      remove.classList.remove("armed");
    }, REMOVE_CONFIRM_MS);
  });
  return li;
}

function startRename(li) {
  const input = li.querySelector(".cam-rename-input");
  li.classList.add("editing");
  input.value = li.querySelector(".cam-name").textContent;
  input.hidden = false;
  li.querySelector(".cam-open").hidden = true;
  input.focus();
  input.select();
}

function finishRename(li, keep) {
  if (!li.classList.contains("editing")) return;
  const input = li.querySelector(".cam-rename-input");
  li.classList.remove("editing");
  input.hidden = true;
  li.querySelector(".cam-open").hidden = false;
  if (keep) save(renameCamera(cameras(), li.dataset.id, input.value));
  else render();
}

// ---- adding: paste or scan ------------------------------------------------------

const scan = { stream: null, video: null, timer: 0 };

function openAdd(prefill) {
  ui.addLink.value = prefill || "";
  ui.addName.value = "";
  ui.addViewerName.value = viewerName();
  ui.addError.textContent = "";
  ui.addSheet.hidden = false;
  ui.addLink.focus();
}

function closeAdd() {
  stopScan();
  ui.addSheet.hidden = true;
}

function onAdd(ev) {
  ev.preventDefault();
  if (!ui.addLink.value.trim() && cleanName(ui.addViewerName.value)) {
    // Only this device's name changed (Rename at the bottom of the list).
    setViewerName(ui.addViewerName.value);
    closeAdd();
    render();
    return;
  }
  let link;
  try {
    link = parseCameraLink(ui.addLink.value, location.href);
    save(addCamera(cameras(), link.id, ui.addName.value, Date.now()));
  } catch (err) {
    if (!(err instanceof LinkError)) throw err;
    ui.addError.textContent = err.message;
    return;
  }
  setViewerName(ui.addViewerName.value);
  closeAdd();
  // Is the new one online? Asked at once (after a check already under way).
  (state.probing || Promise.resolve()).then(schedule);
  // A pairing link pairs now (the secret is used once, then dropped); a bare
  // ID of a camera already paired is only listed.
  if (link.pair !== null) state.onWatch(link.id, link.pair);
}

async function startScan() {
  // QR codes through the camera, where the browser can read them
  // (BarcodeDetector); elsewhere the paste box is the way in.
  ui.addError.textContent = "";
  if (!("BarcodeDetector" in window) || !navigator.mediaDevices) {
    ui.addError.textContent = "This browser cannot read QR codes: paste the link instead.";
    return;
  }
  let detector;
  try {
    const formats = await BarcodeDetector.getSupportedFormats();
    if (!formats.includes("qr_code")) throw new Error("no qr_code");
    detector = new BarcodeDetector({ formats: ["qr_code"] });
    scan.stream = await navigator.mediaDevices.getUserMedia(
      { video: { facingMode: "environment" }, audio: false });
  } catch (_) {
    ui.addError.textContent = "Cannot scan here (no camera, or no QR reader): paste the link.";
    stopScan();
    return;
  }
  // Made on demand: the player's tests count the page's <video> elements.
  scan.video = document.createElement("video");
  scan.video.className = "scan-video";
  scan.video.muted = true;
  scan.video.playsInline = true;
  scan.video.srcObject = scan.stream;
  ui.scanBox.replaceChildren(scan.video);
  ui.scanBox.hidden = false;
  await scan.video.play().catch(() => {});
  const look = async () => {
    if (!scan.stream) return;
    try {
      const codes = await detector.detect(scan.video);
      const found = codes.find((c) => c.rawValue);
      if (found) {
        ui.addLink.value = found.rawValue;
        stopScan();
        return;
      }
    } catch (_) { /* a frame that was not ready */ }
    scan.timer = setTimeout(look, 250);
  };
  look();
}

function stopScan() {
  clearTimeout(scan.timer);
  if (scan.stream) for (const track of scan.stream.getTracks()) track.stop();
  scan.stream = null;
  if (scan.video) scan.video.remove();
  scan.video = null;
  if (ui) ui.scanBox.hidden = true;
}

function editViewerName() {
  openAdd("");
  ui.addViewerName.focus();
  ui.addViewerName.select();
}

// ---- wiring ---------------------------------------------------------------------

export function showList(visible) {
  ui.home.hidden = !visible;
  if (!visible) {
    closeAdd();
    clearTimeout(state.probeTimer);
    state.probeTimer = 0;
    return;
  }
  render();
  schedule();
}

export function initList(onWatch) {
  const $ = (id) => document.getElementById(id);
  state.onWatch = onWatch;
  ui = {
    home: $("home"), list: $("camera-list"), empty: $("list-empty"),
    viewerName: $("viewer-name"), addSheet: $("add-sheet"), addForm: $("add-form"),
    addLink: $("add-link"), addName: $("add-name"), addViewerName: $("add-viewer-name"),
    addError: $("add-error"), scanBox: $("scan-box"),
  };
  $("add-open").addEventListener("click", () => openAdd(""));
  $("add-cancel").addEventListener("click", closeAdd);
  $("add-scan").addEventListener("click", startScan);
  $("viewer-name-edit").addEventListener("click", editViewerName);
  ui.addForm.addEventListener("submit", onAdd);
  document.addEventListener("visibilitychange", () => {
    if (!ui.home.hidden) schedule();
  });
  window.peercam.cameras = cameras().map((c) => ({ ...c, online: null }));
  state.modelKnown = learnModel();
}
