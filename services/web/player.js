// The player's controls: fullscreen, pinch / double-tap zoom with pan,
// snapshot (JPEG) and clip (MediaRecorder) downloads, and the live badge.
//
// Everything here works on the <video> on screen; the sessions behind it
// (viewer.js) may replace that element when they heal, so it is always asked
// for, never kept.

import { IDENTITY, doubleTap, panBy, transformOf, zoomAt } from "./zoom.mjs";

const DOUBLE_TAP_MS = 300;  // two taps closer than this are a double tap
const TAP_SLOP_PX = 24;     // ... and at most this far apart
const CLIP_MAX_S = 60;      // a clip stops by itself after a minute
const CLIP_TYPES = [        // what MediaRecorder is asked for, first supported wins
  "video/webm;codecs=vp8", "video/webm;codecs=vp9", "video/webm", "video/mp4;codecs=avc1",
  "video/mp4",
];

let opts = null;  // {video(), name(), onTap(), zoomBox, stage}
let view = { ...IDENTITY };
const pointers = new Map();  // pointerId -> {x, y}
let gesture = null;          // {kind: "pinch"|"pan", ...} while fingers are down
let lastTap = null;          // {t, x, y} of the last single tap
let tapTimer = 0;
const clip = { recorder: null, chunks: [], started: 0, timer: 0, type: "", stem: "" };

// ---- zoom and pan ------------------------------------------------------------

function box() {
  return opts.zoomBox.getBoundingClientRect();
}

function apply(next) {
  view = next;
  opts.zoomBox.style.transform = view.scale === 1 ? "" : transformOf(view);
  opts.zoomBox.classList.toggle("zoomed", view.scale > 1);
  window.peercam.zoom = { ...view };
}

export function resetZoom() {
  apply({ ...IDENTITY });
}

function local(ev) {
  const r = box();
  return { x: ev.clientX - r.left, y: ev.clientY - r.top, w: r.width, h: r.height };
}

function onPointerDown(ev) {
  if (!isPicture(ev.target)) return;
  pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
  if (pointers.size === 2) {
    const [a, b] = [...pointers.values()];
    gesture = { kind: "pinch", dist: Math.hypot(a.x - b.x, a.y - b.y) || 1, moved: true };
  } else if (pointers.size === 1) {
    gesture = { kind: "pan", x: ev.clientX, y: ev.clientY, sx: ev.clientX, sy: ev.clientY,
      moved: false };
  }
}

function onPointerMove(ev) {
  if (!pointers.has(ev.pointerId) || !gesture) return;
  pointers.set(ev.pointerId, { x: ev.clientX, y: ev.clientY });
  const r = box();
  if (gesture.kind === "pinch" && pointers.size >= 2) {
    const [a, b] = [...pointers.values()];
    const dist = Math.hypot(a.x - b.x, a.y - b.y) || 1;
    const mid = { x: (a.x + b.x) / 2 - r.left, y: (a.y + b.y) / 2 - r.top };
    apply(zoomAt(view, dist / gesture.dist, mid.x, mid.y, r.width, r.height));
    gesture.dist = dist;
  } else if (gesture.kind === "pan") {
    if (Math.hypot(ev.clientX - gesture.sx, ev.clientY - gesture.sy) > TAP_SLOP_PX) {
      gesture.moved = true;
    }
    if (view.scale > 1) apply(panBy(view, ev.clientX - gesture.x, ev.clientY - gesture.y,
      r.width, r.height));
    gesture.x = ev.clientX;
    gesture.y = ev.clientY;
  }
}

function onPointerUp(ev) {
  if (!pointers.delete(ev.pointerId)) return;
  if (pointers.size === 0) {
    // No click follows a drag or a pinch (the browser sees no tap), so
    // nothing needs suppressing here.
    gesture = null;
  } else if (pointers.size === 1 && gesture && gesture.kind === "pinch") {
    const [p] = [...pointers.values()];
    gesture = { kind: "pan", x: p.x, y: p.y, sx: p.x, sy: p.y, moved: true };
  }
}

function isPicture(target) {
  // Taps on the controls, the pad or the list are theirs, not the picture's.
  return opts.stage.contains(target) && !target.closest("button, input, form, section, nav, a");
}

function onClick(ev) {
  // A tap toggles the statistics (after a moment, in case a second tap
  // follows); a double tap goes fullscreen, and in fullscreen zooms in on
  // the tapped point (or back out).
  if (!isPicture(ev.target)) return;
  const now = performance.now();
  // Ours by timing, or the browser's word for it (a mobile browser may fold
  // two taps into one click whose detail counts 2).
  const near = lastTap && now - lastTap.t < DOUBLE_TAP_MS
    && Math.hypot(ev.clientX - lastTap.x, ev.clientY - lastTap.y) < TAP_SLOP_PX * 2;
  if (near || ev.detail === 2) {
    clearTimeout(tapTimer);
    lastTap = null;
    onDoubleTap(ev);
    return;
  }
  lastTap = { t: now, x: ev.clientX, y: ev.clientY };
  clearTimeout(tapTimer);
  tapTimer = setTimeout(() => {
    lastTap = null;
    opts.onTap();
  }, DOUBLE_TAP_MS);
}

function onDoubleTap(ev) {
  if (!isFullscreen()) {
    toggleFullscreen();
    return;
  }
  const p = local(ev);
  apply(doubleTap(view, p.x, p.y, p.w, p.h));
}

function onWheel(ev) {
  // Desktop: the wheel zooms around the pointer.
  if (!isPicture(ev.target)) return;
  ev.preventDefault();
  const p = local(ev);
  apply(zoomAt(view, Math.exp(-ev.deltaY / 300), p.x, p.y, p.w, p.h));
}

// ---- fullscreen -------------------------------------------------------------

function isFullscreen() {
  return Boolean(document.fullscreenElement || document.webkitFullscreenElement);
}

export async function toggleFullscreen() {
  try {
    if (isFullscreen()) {
      await (document.exitFullscreen || document.webkitExitFullscreen).call(document);
      return;
    }
    const el = document.documentElement;
    const request = el.requestFullscreen || el.webkitRequestFullscreen;
    if (request) {
      await request.call(el, { navigationUI: "hide" });
      // Phones: a camera picture is wider than tall; where allowed, turn it.
      if (screen.orientation && screen.orientation.lock) {
        screen.orientation.lock("landscape").catch(() => {});
      }
    } else {
      // iPhone Safari: only a <video> goes fullscreen, in the system player.
      const video = opts.video();
      if (video && video.webkitEnterFullscreen) video.webkitEnterFullscreen();
    }
  } catch (err) {
    console.info("peercam: fullscreen refused:", (err && err.message) || err);
  }
}

function onFullscreenChange() {
  const on = isFullscreen();
  document.body.classList.toggle("fullscreen", on);
  window.peercam.fullscreen = on;
  const button = document.getElementById("btn-fullscreen");
  button.setAttribute("aria-pressed", String(on));
  button.title = on ? "Leave fullscreen (F)" : "Fullscreen (F, or double-tap)";
  if (!on) resetZoom();
}

// ---- snapshot and clip --------------------------------------------------------

function fileStem() {
  const d = new Date();
  const pad = (n) => String(n).padStart(2, "0");
  const name = (opts.name() || "camera").replace(/[^\p{L}\p{N}_-]+/gu, "-").replace(/^-+|-+$/g, "");
  return "peercam-" + (name || "camera") + "-" + d.getFullYear() + pad(d.getMonth() + 1)
    + pad(d.getDate()) + "-" + pad(d.getHours()) + pad(d.getMinutes()) + pad(d.getSeconds());
}

function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  a.hidden = true;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
}

function flash(text) {
  const toast = document.getElementById("toast");
  toast.textContent = text;
  toast.hidden = false;
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => { toast.hidden = true; }, 2500);
}

export async function snapshot() {
  // The frame on screen at full resolution (not the zoomed view), as JPEG.
  const video = opts.video();
  if (!video || !video.videoWidth) {
    flash("No picture yet.");
    return;
  }
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.92));
  if (!blob) {
    flash("The snapshot failed.");
    return;
  }
  download(blob, fileStem() + ".jpg");
  window.peercam.snapshots = (window.peercam.snapshots || 0) + 1;
  flash("Snapshot saved");
}

export function toggleClip() {
  if (clip.recorder) {
    stopClip();
    return;
  }
  const video = opts.video();
  const stream = video && video.srcObject;
  if (!stream || !window.MediaRecorder || !video.videoWidth) {
    flash(window.MediaRecorder ? "No picture yet." : "This browser cannot record clips.");
    return;
  }
  clip.type = CLIP_TYPES.find((t) => MediaRecorder.isTypeSupported(t)) || "";
  let recorder;
  try {
    recorder = new MediaRecorder(stream, clip.type ? { mimeType: clip.type } : undefined);
  } catch (err) {
    flash("Cannot record: " + ((err && err.message) || err));
    return;
  }
  clip.recorder = recorder;
  clip.chunks = [];
  clip.started = performance.now();
  clip.stem = fileStem();  // named when it starts, whatever is on screen when it ends
  recorder.ondataavailable = (ev) => {
    if (ev.data && ev.data.size) clip.chunks.push(ev.data);
  };
  // Also when the track ends (the session healed onto a new one): keep what we have.
  recorder.onstop = () => saveClip(recorder);
  recorder.start(1000);
  window.peercam.recording = true;
  renderClip();
  clip.timer = setInterval(() => {
    if (performance.now() - clip.started >= CLIP_MAX_S * 1000) stopClip();
    else renderClip();
  }, 250);
}

function stopClip() {
  const recorder = clip.recorder;
  if (recorder && recorder.state !== "inactive") recorder.stop();
}

function saveClip(recorder) {
  if (clip.recorder !== recorder) return;
  clearInterval(clip.timer);
  const type = (recorder.mimeType || clip.type || "video/webm").split(";")[0];
  const blob = new Blob(clip.chunks, { type });
  clip.recorder = null;
  clip.chunks = [];
  window.peercam.recording = false;
  renderClip();
  if (!blob.size) {
    flash("The clip is empty.");
    return;
  }
  download(blob, clip.stem + (type === "video/mp4" ? ".mp4" : ".webm"));
  window.peercam.clips = (window.peercam.clips || 0) + 1;
  flash("Clip saved");
}

function renderClip() {
  const button = document.getElementById("btn-clip");
  const on = Boolean(clip.recorder);
  button.setAttribute("aria-pressed", String(on));
  button.classList.toggle("recording", on);
  const secs = on ? Math.floor((performance.now() - clip.started) / 1000) : 0;
  document.getElementById("clip-time").textContent = on
    ? "0:" + String(secs).padStart(2, "0") : "";
  button.title = on ? "Stop and save the clip" : "Record a clip (up to " + CLIP_MAX_S + " s)";
}

// ---- the live badge ---------------------------------------------------------------

export function pathOf(p) {
  // Relayed when either end of the selected pair is a TURN relay.
  if (!p.localCandidateType) return null;
  return p.localCandidateType === "relay" || p.remoteCandidateType === "relay"
    ? "relayed" : "direct";
}

export function renderBadge(p, showing) {
  const badge = document.getElementById("badge");
  const path = pathOf(p);
  badge.hidden = !showing;
  if (!showing) return;
  const live = p.state === "connected";
  badge.classList.toggle("stale", !live);
  badge.querySelector(".badge-live").textContent = live ? "LIVE" : "…";
  badge.querySelector(".badge-path").textContent = path || "";
  badge.querySelector(".badge-latency").textContent =
    p.latencyMs === null || p.latencyMs === undefined ? "" : "~" + p.latencyMs + " ms";
  p.path = path;
}

// ---- wiring ---------------------------------------------------------------------

export function initPlayer(options) {
  opts = options;
  const stage = opts.stage;
  stage.addEventListener("pointerdown", onPointerDown);
  stage.addEventListener("pointermove", onPointerMove);
  stage.addEventListener("pointerup", onPointerUp);
  stage.addEventListener("pointercancel", onPointerUp);
  stage.addEventListener("click", onClick);
  stage.addEventListener("wheel", onWheel, { passive: false });
  document.getElementById("btn-fullscreen").addEventListener("click", toggleFullscreen);
  document.getElementById("btn-snapshot").addEventListener("click", snapshot);
  document.getElementById("btn-clip").addEventListener("click", toggleClip);
  document.addEventListener("fullscreenchange", onFullscreenChange);
  document.addEventListener("webkitfullscreenchange", onFullscreenChange);
  window.peercam.fullscreen = false;
  window.peercam.recording = false;
  resetZoom();
}

export function stopPlayer() {
  // Leaving the camera: a clip in progress is saved, the zoom starts over.
  stopClip();
  resetZoom();
}
