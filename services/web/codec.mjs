// Pure encodings shared by the viewer and its Node tests: no DOM, no I/O.
//
// Everything here has a Python twin (services/signaling.py for device IDs,
// services/signatures.py for base64url and the signed statements); the tests
// in tests/web run this module against vectors the Python code generates, so
// the two cannot drift apart.

// Device IDs: Crockford base32, 26 data characters + 1 check symbol (mod 37).
export const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
export const CHECK_SYMBOLS = CROCKFORD + "*~$=U";
const DEVICE_RE = /^[0-9A-HJKMNP-TV-Z]{26}[0-9A-HJKMNP-TV-Z*~$=U]$/;

// What is signed (docs/protocol.md, Statements).
export const STATEMENT = Object.freeze({
  offer: "peercam/offer/v1",
  answer: "peercam/answer/v1",
  candidate: "peercam/candidate/v1",
  pair: "peercam/pair/v1",
  paired: "peercam/paired/v1",
});

export const utf8 = new TextEncoder();

/** A statement line holds a newline: one statement could pass for another. */
export class StatementError extends Error {}

export function encodeDeviceId(value) {
  // value: the 130-bit BigInt. 26 base32 digits, big-endian, then mod-37 check.
  let body = "";
  for (let i = 25; i >= 0; i--) body += CROCKFORD[Number((value >> BigInt(5 * i)) & 31n)];
  const raw = body + CHECK_SYMBOLS[Number(value % 37n)];
  return raw.match(/.{1,4}/g).join("-");
}

export function normalizeDeviceId(text) {
  // The canonical XXXX-...-XXC form, or null (typos are caught by the check symbol).
  if (typeof text !== "string") return null;  // stored or relayed junk: not an ID
  const raw = text.replace(/[\s-]/g, "").toUpperCase();
  if (!DEVICE_RE.test(raw)) return null;
  let value = 0n;
  for (const ch of raw.slice(0, 26)) value = value * 32n + BigInt(CROCKFORD.indexOf(ch));
  const canonical = encodeDeviceId(value);
  return canonical.replace(/-/g, "") === raw ? canonical : null;
}

export function deviceIdFromDigest(digest) {
  // First 130 bits of a digest, big-endian (docs/protocol.md, Encodings).
  let value = 0n;
  for (const b of digest.subarray(0, 17)) value = (value << 8n) | BigInt(b);
  return encodeDeviceId(value >> 6n);  // 136 bits read, keep the top 130
}

export async function deviceIdOfKey(der) {
  // The device ID a public key (SPKI DER bytes) stands for: SHA-256, then 130 bits.
  return deviceIdFromDigest(new Uint8Array(await crypto.subtle.digest("SHA-256", der)));
}

export function b64url(buffer) {
  let bin = "";
  for (const b of new Uint8Array(buffer)) bin += String.fromCharCode(b);
  return btoa(bin).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

export function unb64url(text) {
  // Strict: base64url without padding, else null (the server picks the bytes).
  if (typeof text !== "string" || !/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    return null;
  }
  const bin = atob(text.replace(/-/g, "+").replace(/_/g, "/")
    + "=".repeat((4 - (text.length % 4)) % 4));
  return Uint8Array.from(bin, (c) => c.charCodeAt(0));
}

export function statement(...lines) {
  // Lines joined by "\n", no trailing newline, UTF-8.
  const text = lines.map(String);
  if (text.some((line) => /[\r\n]/.test(line))) {
    throw new StatementError("A signed field contains a newline.");
  }
  return utf8.encode(text.join("\n"));
}

export async function sha256Hex(text) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", utf8.encode(text)));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

export async function offerStatement(device, session, timestamp, viewerKey, sdp) {
  return statement(STATEMENT.offer, device, session, timestamp, viewerKey, await sha256Hex(sdp));
}

export function candidateStatement(device, session, offerHash, seq, line, mid, index) {
  // An absent sdpMid / sdpMLineIndex is an empty line; "" is end-of-candidates.
  return statement(STATEMENT.candidate, device, session, offerHash, seq,
    mid === null ? "" : mid, index === null ? "" : index, line);
}

export async function answerStatement(device, session, offerSdp, answerSdp) {
  return statement(STATEMENT.answer, device, session,
    await sha256Hex(offerSdp), await sha256Hex(answerSdp));
}

export function pairStatement(device, session, timestamp, viewerKey, name) {
  return statement(STATEMENT.pair, device, session, timestamp, viewerKey, name);
}

export function pairedStatement(device, session, viewerKey, name) {
  return statement(STATEMENT.paired, device, session, viewerKey, name);
}

// Viewer names: what the camera owner sees in `peercam viewers list`.
// The server takes 1-64 characters without control characters.
export const NAME_MAX = 64;

export function cleanName(text) {
  // The name as it will be sent, or "" if nothing usable is left.
  return cleanText(text, NAME_MAX);
}

export function cleanText(text, max) {
  // At most `max` code points without control characters or lone surrogates,
  // trimmed. Cut by code points, as the server counts them: a cut through a
  // surrogate pair would leave half an emoji that UTF-8 cannot carry. Also
  // what is shown of a string the untrusted server relays (error codes, bye
  // reasons): it goes to the page as text, never as markup, and this bounds it.
  // Only strings (and numbers) count: String() of a stored {"toString": 1} throws.
  const value = typeof text === "string" || typeof text === "number" ? String(text) : "";
  const chars = Array.from(value.replace(/[\u0000-\u001f\u007f-\u009f]/g, "")
    .replace(/[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g, "")
    .trim());
  return chars.slice(0, max).join("").trim();
}

export function isValidName(text) {
  // What the server takes: 1-64 characters, no control characters.
  return typeof text === "string" && text !== "" && cleanName(text) === text;
}

export function browserName(ua) {
  return /Edg(e|A|iOS)?\//.test(ua) ? "Edge"
    : /OPR\/|Opera/.test(ua) ? "Opera"
    : /SamsungBrowser\//.test(ua) ? "Samsung Internet"
    : /Firefox\/|FxiOS\//.test(ua) ? "Firefox"
    : /Chrome\/|CriOS\/|Chromium\//.test(ua) ? "Chrome"
    : /Safari\//.test(ua) ? "Safari"
    : "Browser";
}

export function platformName(ua) {
  return /Android/.test(ua) ? "Android"
    : /iPhone|iPod/.test(ua) ? "iPhone"
    : /iPad/.test(ua) ? "iPad"
    : /CrOS/.test(ua) ? "ChromeOS"
    : /Windows/.test(ua) ? "Windows"
    : /Macintosh|Mac OS X/.test(ua) ? "macOS"
    : /Linux/.test(ua) ? "Linux"
    : "";
}

export function defaultViewerName(ua, model) {
  // "Pixel 7 — Chrome" when the browser tells the model (client hints),
  // else "Chrome on Android": enough to tell phones apart, nothing more.
  const browser = browserName(ua || "");
  const device = cleanName(model);
  if (device) return cleanName(device + " — " + browser) || browser;
  const platform = platformName(ua || "");
  return cleanName(platform ? browser + " on " + platform : browser) || "Browser";
}

const SESSION_ALPHABET =
  "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

/** A fresh session ID: 24 symbols of a 64-symbol alphabet, 144 random bits. */
export function newSessionId() {
  // 256 % 64 == 0, so masking the byte keeps the choice unbiased.
  const bytes = crypto.getRandomValues(new Uint8Array(24));
  return Array.from(bytes, (b) => SESSION_ALPHABET[b & 63]).join("");
}

/** The rendezvous' viewer socket for the page at `pageHref`. */
export function signalingUrl(pageHref) {
  // Resolved against the page, so /ws/viewer when served at "/", and it
  // still works behind a reverse proxy that mounts the viewer under a path.
  const url = new URL("ws/viewer", pageHref);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  url.hash = "";
  url.search = "";
  return url.href;
}
