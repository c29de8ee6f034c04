// The camera list: pure functions over plain records, no DOM, no storage.
//
// A record is {id, name, addedAt, lastSeen}: id the canonical device ID,
// name what the person calls it, times in ms since the epoch (lastSeen null
// until the camera was seen online). The list holds no secret: the viewer key
// stays in IndexedDB (non-extractable), a pairing secret is used once and
// dropped. viewer.js keeps the list in localStorage as JSON.

import { cleanName, normalizeDeviceId } from "./codec.mjs";

export const MAX_CAMERAS = 64;
export const MAX_LINK = 2048;  // a pairing link is ~120 characters
// A pairing secret: printable ASCII, no space (what `peercam pair` makes is base64url).
export const PAIR_RE = /^[\x21-\x7e]{1,128}$/;

/** A link, QR code or ID the list cannot take; the message says why. */
export class LinkError extends Error {}

export function defaultCameraName(id) {
  return "Camera " + id.slice(0, 4);
}

export function parseCameras(text) {
  // Whatever was stored, as a clean list: bad entries are dropped, not fatal.
  let raw;
  try {
    raw = JSON.parse(text || "[]");
  } catch (_) {
    return [];
  }
  if (!Array.isArray(raw)) return [];
  const seen = new Set();
  const out = [];
  for (const item of raw) {
    if (!item || typeof item !== "object") continue;
    const id = normalizeDeviceId(item.id);
    if (!id || seen.has(id)) continue;
    seen.add(id);
    out.push({
      id,
      name: cleanName(item.name) || defaultCameraName(id),
      addedAt: Number.isFinite(item.addedAt) ? item.addedAt : 0,
      lastSeen: Number.isFinite(item.lastSeen) ? item.lastSeen : null,
    });
    if (out.length >= MAX_CAMERAS) break;
  }
  return out;
}

export function addCamera(list, id, name, now) {
  // Adding a camera already listed keeps it (and renames it if a name is given).
  const existing = list.find((c) => c.id === id);
  if (existing) return name ? renameCamera(list, id, name) : list;
  if (list.length >= MAX_CAMERAS) {
    throw new LinkError("The list is full (" + MAX_CAMERAS + " cameras): remove one first.");
  }
  return [...list, { id, name: cleanName(name) || defaultCameraName(id), addedAt: now,
    lastSeen: null }];
}

export function renameCamera(list, id, name) {
  const clean = cleanName(name);
  if (!clean) return list;
  return list.map((c) => (c.id === id ? { ...c, name: clean } : c));
}

export function removeCamera(list, id) {
  return list.filter((c) => c.id !== id);
}

export function touchCamera(list, id, now) {
  // Seen online now (a probe said so, or its video played).
  return list.map((c) => (c.id === id ? { ...c, lastSeen: now } : c));
}

export function parseCameraLink(text, pageHref) {
  // What the person pasted or the QR code held: a viewer link
  // (https://server/#device=ID[&pair=SECRET]) or a bare device ID.
  // Returns {id, pair}; pair is null for a camera already paired.
  const value = String(text || "").trim();
  if (!value) throw new LinkError("Paste a pairing link or a device ID.");
  if (value.length > MAX_LINK) {
    throw new LinkError("That is too long for a pairing link (at most " + MAX_LINK
      + " characters).");
  }
  const bare = normalizeDeviceId(value);
  if (bare) return { id: bare, pair: null };
  let url;
  try {
    url = new URL(value, pageHref);
  } catch (_) {
    throw new LinkError("That is neither a link nor a device ID.");
  }
  const page = new URL(pageHref);
  if (url.origin !== page.origin) {
    // The camera list lives on this server: a link for another one would
    // send its pairing request there, so it is opened there instead.
    throw new LinkError("That link is for " + url.origin + ", not this server ("
      + page.origin + "): open it there.");
  }
  const params = linkParams(url.hash);
  const id = normalizeDeviceId(params.get("device"));
  if (!id) throw new LinkError("The link does not hold a valid device ID.");
  const pair = params.get("pair");
  if (pair !== null && !PAIR_RE.test(pair)) {
    throw new LinkError("The pairing link is damaged (the pair= part is not valid).");
  }
  return { id, pair };
}

export function linkParams(hash) {
  // The fields of a link's fragment (#device=ID&pair=SECRET). Other fields
  // are ignored (newer links may add some); a field given twice is refused:
  // which of the two counts would be a guess, and a link that shows one
  // camera's ID while pairing with another must not pass.
  const text = String(hash || "").replace(/^#/, "");
  if (text.length > MAX_LINK) throw new LinkError("The link is too long.");
  const params = new URLSearchParams(text);
  for (const key of ["device", "pair"]) {
    if (params.getAll(key).length > 1) {
      throw new LinkError("The link is damaged (it holds " + key + "= twice).");
    }
  }
  return params;
}

export function lastSeenText(lastSeen, now) {
  // "never", "just now", "5 min ago", "3 h ago", "2 d ago".
  if (lastSeen === null || lastSeen === undefined) return "never seen";
  const s = Math.max(0, Math.round((now - lastSeen) / 1000));
  if (s < 60) return "seen just now";
  if (s < 3600) return "seen " + Math.floor(s / 60) + " min ago";
  if (s < 86400) return "seen " + Math.floor(s / 3600) + " h ago";
  return "seen " + Math.floor(s / 86400) + " d ago";
}
