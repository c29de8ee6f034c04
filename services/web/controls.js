// The session's data channels: pan/tilt (a head on the camera's RS-485) and
// quality (which layer the camera sends). Both are opened on every session
// before the offer; what they show follows the session on screen.

import { cleanText } from "./codec.mjs";

const PTZ_REPEAT_MS = 300;   // a held move is repeated this often (camera deadman: 1 s)
const PTZ_NOTICE_MS = 3000;  // how long a pan/tilt error stays on the pad

let current = null;  // {live(), pending()}: the sessions, as viewer.js has them
let peercam = null;  // window.peercam: what tests and the overlay read
let ui = null;       // the pad's and the quality bar's elements

// ---- pan/tilt ------------------------------------------------------------
//
// docs/protocol.md, "Pan/tilt data channel". While a button or key is held,
// the same move is repeated every PTZ_REPEAT_MS (the camera stops a move that
// is not repeated within a second, so a vanished page cannot leave the head
// turning); releasing it, losing focus or hiding the page sends stop.

const PTZ_SPEED = 32;      // Pelco-D 1..63
const PTZ_DIRECTIONS = {   // [pan, tilt, zoom]
  left: [-1, 0, 0], right: [1, 0, 0], up: [0, 1, 0], down: [0, -1, 0],
  "zoom-in": [0, 0, 1], "zoom-out": [0, 0, -1],
};
const PTZ_KEYS = {         // KeyboardEvent.code (layout-independent for WASD)
  ArrowLeft: "left", ArrowRight: "right", ArrowUp: "up", ArrowDown: "down",
  KeyA: "left", KeyD: "right", KeyW: "up", KeyS: "down",
  NumpadAdd: "zoom-in", NumpadSubtract: "zoom-out",
};
const PTZ_ZOOM_KEYS = { "+": "zoom-in", "=": "zoom-in", "-": "zoom-out", "_": "zoom-out" };

const ptzHeld = new Map(); // what is held ("key:KeyW", "button:left") -> direction name
let ptzVector = [0, 0, 0];
let ptzRepeat = 0;
let ptzNoticeTimer = 0;
let ptzSetMode = false;

// ---- quality: which layer the camera sends (docs/protocol.md, "Quality data channel")

export function openQualityChannel(att, pc) {
  let channel;
  try {
    channel = pc.createDataChannel("quality", { ordered: true });
  } catch (_) {
    return; // no SCTP here: the page plays what the camera picks
  }
  att.qualityChannel = channel;
  att.quality = null;
  channel.onopen = () => {
    if (peercam.qualityWanted) sendQuality(att, peercam.qualityWanted);
  };
  channel.onmessage = (ev) => onQualityMessage(att, ev.data);
}

function channelMessage(att, data) {
  // A data channel message as an object, or null (closed session, not JSON, not an object).
  if (att.closed || typeof data !== "string") return null;
  try {
    const msg = JSON.parse(data);
    return msg && typeof msg === "object" ? msg : null;
  } catch (_) {
    return null;
  }
}

function onQualityMessage(att, data) {
  const msg = channelMessage(att, data);
  if (!msg) return;
  if (msg.type === "quality" && typeof msg.layer === "string") {
    // Shown as text only; bounded, as any string from the network.
    const layers = Array.isArray(msg.layers)
      ? msg.layers.filter((x) => typeof x === "string").slice(0, 8).map((x) => cleanText(x, 16))
      : [];
    att.quality = { mode: cleanText(msg.mode || "auto", 16), layer: cleanText(msg.layer, 16),
      layers };
    if (att === current.live()) showQuality(att);
  } else if (msg.type === "error" && typeof msg.error === "string") {
    peercam.qualityLastError = cleanText(msg.error, 120);
  }
}

function sendQuality(att, mode) {
  const channel = att && att.qualityChannel;
  if (!channel || channel.readyState !== "open") return;
  try {
    channel.send(JSON.stringify({ quality: mode }));
  } catch (_) { /* closing: the next session sends it */ }
}

export function showQuality(att) {
  const q = att.quality;
  if (q && peercam.layer && q.layer !== peercam.layer) peercam.layerSwitches += 1;
  peercam.layer = q ? q.layer : null;
  peercam.qualityMode = q ? q.mode : null;
  peercam.layers = q ? q.layers : [];
  if (!ui) return;
  ui.quality.hidden = !q;
  ui.qualityLayer.textContent = q ? q.layer : "–";
  for (const button of ui.quality.querySelectorAll("[data-quality]")) {
    const mode = button.dataset.quality;
    button.setAttribute("aria-pressed", String(!!q && q.mode === mode));
    // A layer the camera does not send cannot be pinned.
    button.disabled = !!q && mode !== "auto" && !q.layers.includes(mode);
  }
}

function onQualityClick(ev) {
  const button = ev.target.closest("[data-quality]");
  if (!button) return;
  ev.stopPropagation(); // not a tap on the stage (that toggles the overlay)
  const mode = button.dataset.quality;
  peercam.qualityWanted = mode === "auto" ? null : mode;
  sendQuality(current.live(), mode);
  if (current.pending()) sendQuality(current.pending(), mode);
}

export function openPtzChannel(att, pc) {
  let channel;
  try {
    channel = pc.createDataChannel("ptz", { ordered: true });
  } catch (_) {
    return; // no SCTP here: the page still plays, without the pad
  }
  att.ptz = channel;
  channel.onmessage = (ev) => onPtzMessage(att, ev.data);
  channel.onclose = () => {
    att.ptzAvailable = false;
    if (current.live() === att) setPtzAvailable(false);
  };
}

export function closePtzChannel(att) {
  const channel = att.ptz;
  if (!channel) return;
  channel.onmessage = channel.onclose = null;
  att.ptz = null;
  if (att !== current.live()) return;  // a session that never took the screen held nothing
  // The camera stops the head when the session ends; forget what was held.
  ptzHeld.clear();
  ptzVector = [0, 0, 0];
  clearInterval(ptzRepeat);
  ptzRepeat = 0;
  setPtzAvailable(null);
}

function onPtzMessage(att, data) {
  const msg = channelMessage(att, data);
  if (!msg) return;
  if (msg.type === "ptz") {
    att.ptzAvailable = msg.available === true;
    if (att === current.live()) setPtzAvailable(att.ptzAvailable);
  } else if (msg.type === "ack" && typeof msg.op === "string") {
    peercam.ptzAcks += 1;
    peercam.ptzLastAck = msg.op;
  } else if (msg.type === "error" && typeof msg.error === "string") {
    peercam.ptzLastError = cleanText(msg.error, 120);
    ptzNotice(peercam.ptzLastError);
  }
}

export function setPtzAvailable(available) {
  peercam.ptzAvailable = available;
  if (!ui) return;
  ui.ptz.hidden = available !== true;
  if (available !== true) ptzReleaseAll(false);
}

function ptzNotice(text) {
  // Discreet: one line on the pad, cleared after a few seconds. Text only
  // (the message comes from the camera, but never as markup).
  ui.ptzStatus.textContent = text;
  clearTimeout(ptzNoticeTimer);
  ptzNoticeTimer = setTimeout(() => { ui.ptzStatus.textContent = ""; }, PTZ_NOTICE_MS);
}

function ptzSend(msg) {
  const att = current.live();
  const channel = att && att.ptz;
  if (!channel || channel.readyState !== "open" || peercam.ptzAvailable !== true) return;
  try {
    channel.send(JSON.stringify(msg));
    peercam.ptzSent += 1;
  } catch (_) { /* closing: the camera stops the head itself */ }
}

function ptzMove() {
  const [pan, tilt, zoom] = ptzVector;
  ptzSend({ op: "move", pan, tilt, zoom, speed: PTZ_SPEED });
}

function ptzUpdate(sendStop) {
  const sum = [0, 0, 0];
  for (const name of ptzHeld.values()) {
    PTZ_DIRECTIONS[name].forEach((d, i) => { sum[i] += d; });
  }
  const next = sum.map((x) => Math.max(-1, Math.min(1, x)));
  const changed = next.some((x, i) => x !== ptzVector[i]);
  ptzVector = next;
  for (const button of ui.ptz.querySelectorAll("[data-ptz]")) {
    button.classList.toggle("held", [...ptzHeld.values()].includes(button.dataset.ptz));
  }
  if (!changed) return;
  clearInterval(ptzRepeat);
  ptzRepeat = 0;
  if (next.some((x) => x !== 0)) {
    ptzMove();
    ptzRepeat = setInterval(ptzMove, PTZ_REPEAT_MS);
  } else if (sendStop) {
    ptzSend({ op: "stop" });
  }
}

function ptzHold(source, name) {
  ptzHeld.set(source, name);
  ptzUpdate(true);
}

function ptzRelease(source) {
  if (ptzHeld.delete(source)) ptzUpdate(true);
}

function ptzReleaseAll(sendStop) {
  if (ptzHeld.size === 0 && ptzVector.every((x) => x === 0)) return;
  ptzHeld.clear();
  ptzUpdate(sendStop);
}

function ptzStop() {
  ptzHeld.clear();
  ptzUpdate(false);
  ptzSend({ op: "stop" });
}

function ptzPreset(number, set) {
  ptzSend({ op: "preset", action: set ? "set" : "goto", preset: number });
  if (ptzSetMode) toggleSetMode(false);
}

function toggleSetMode(on) {
  ptzSetMode = on;
  ui.ptzSet.setAttribute("aria-pressed", String(on));
}

export function ptzKeyDown(ev) {
  // True when the key was for the head (then it does nothing else).
  if (peercam.ptzAvailable !== true) return false;
  const name = PTZ_KEYS[ev.code] || PTZ_ZOOM_KEYS[ev.key];
  if (name) {
    ev.preventDefault();
    if (!ev.repeat) ptzHold("key:" + ev.code, name);
    return true;
  }
  const digit = /^(?:Digit|Numpad)([1-9])$/.exec(ev.code);
  if (digit) {
    ev.preventDefault();
    if (!ev.repeat) ptzPreset(Number(digit[1]), ev.shiftKey || ptzSetMode);
    return true;
  }
  if (ev.key === "Escape" || ev.code === "Space") {
    ev.preventDefault();
    ptzStop();
    return true;
  }
  return false;
}

function ptzKeyUp(ev) {
  ptzRelease("key:" + ev.code);
}

export function initControls(sessions) {
  // sessions: {live(), pending()}. Wires the pad, the keys and the quality bar.
  current = sessions;
  peercam = window.peercam;
  const $ = (id) => document.getElementById(id);
  ui = {
    ptz: $("ptz"), ptzStatus: $("ptz-status"), ptzSet: $("ptz-set"),
    quality: $("quality"), qualityLayer: $("quality-layer"),
  };
  ui.quality.addEventListener("click", onQualityClick);
  for (const button of ui.ptz.querySelectorAll("[data-ptz]")) {
    const source = "button:" + button.dataset.ptz;
    button.addEventListener("pointerdown", (ev) => {
      if (ev.button !== 0) return;
      ev.preventDefault();
      // Capture: the release is seen even if the finger slides off the button.
      try { button.setPointerCapture(ev.pointerId); } catch (_) { /* synthetic */ }
      ptzHold(source, button.dataset.ptz);
    });
    for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
      button.addEventListener(type, () => ptzRelease(source));
    }
    // A long press on a phone must not open a context menu instead.
    button.addEventListener("contextmenu", (ev) => ev.preventDefault());
  }
  for (const button of ui.ptz.querySelectorAll("[data-preset]")) {
    button.addEventListener("click", (ev) => {
      ptzPreset(Number(button.dataset.preset), ev.shiftKey || ptzSetMode);
    });
  }
  document.getElementById("ptz-stop").addEventListener("click", ptzStop);
  ui.ptzSet.addEventListener("click", () => toggleSetMode(!ptzSetMode));
  document.addEventListener("keyup", ptzKeyUp);
  // Losing the keyboard or the page means the keys are no longer "held".
  window.addEventListener("blur", () => ptzReleaseAll(true));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState !== "visible") ptzReleaseAll(true);
  });
}
