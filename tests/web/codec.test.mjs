// The viewer's pure encodings against vectors from the Python implementation.
// Run by tests/web/test_node.py (PEERCAM_VECTORS names the JSON it wrote).
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  StatementError, answerStatement, b64url, candidateStatement, cleanName, defaultViewerName,
  deviceIdFromDigest, deviceIdOfKey, isValidName, newSessionId, normalizeDeviceId,
  offerStatement, pairStatement, pairedStatement, sha256Hex, signalingUrl, unb64url,
} from "../../services/web/codec.mjs";

const V = JSON.parse(readFileSync(process.env.PEERCAM_VECTORS, "utf8"));
const hex = (s) => Uint8Array.from(s.match(/../g) || [], (h) => parseInt(h, 16));

test("device IDs from digests match Python's", () => {
  assert.ok(V.device_ids.length > 10);
  for (const v of V.device_ids) assert.equal(deviceIdFromDigest(hex(v.digest)), v.id, v.digest);
});

test("the device ID of a public key matches the camera's own", async () => {
  for (const v of V.keys) assert.equal(await deviceIdOfKey(unb64url(v.key)), v.id);
});

test("normalizing typed IDs agrees with Python, typos included", () => {
  let refused = 0;
  for (const v of V.normalize) {
    assert.equal(normalizeDeviceId(v.text), v.id, JSON.stringify(v.text));
    if (v.id === null) refused += 1;
  }
  assert.ok(refused > 5, "the vectors include bad IDs");
});

test("base64url both ways, and what Python refuses is refused", () => {
  for (const v of V.b64url) {
    assert.equal(b64url(hex(v.hex)), v.text);
    assert.deepEqual(Array.from(unb64url(v.text)), Array.from(hex(v.hex)));
  }
  for (const text of V.bad_b64url) assert.equal(unb64url(text), null, text);
});

test("SDP hashes", async () => {
  for (const v of V.sdp_hashes) assert.equal(await sha256Hex(v.text), v.hex);
});

const MAKERS = {
  offer: offerStatement, answer: answerStatement, candidate: candidateStatement,
  pair: pairStatement, paired: pairedStatement,
};

test("every signed statement is byte for byte Python's", async () => {
  const kinds = new Set();
  for (const v of V.statements) {
    const bytes = await MAKERS[v.kind](...v.args);
    assert.equal(b64url(bytes), v.b64, v.kind + " " + JSON.stringify(v.args.slice(-1)));
    kinds.add(v.kind);
  }
  assert.deepEqual([...kinds].sort(), Object.keys(MAKERS).sort());
});

test("a field with a newline is refused, as in Python", () => {
  assert.ok(V.refused.length >= 2);
  for (const [kind, args] of V.refused) {
    assert.throws(() => MAKERS[kind](...args), StatementError);
  }
});

test("viewer names: what the server refuses is never sent as is", () => {
  for (const v of V.viewer_names) {
    const cleaned = cleanName(v.name);
    if (!v.ok) assert.ok(!isValidName(v.name), JSON.stringify(v.name));
    if (v.ok && v.name === v.name.trim()) assert.ok(isValidName(v.name), v.name);
    // Never more than 64 code points, never half a surrogate pair.
    assert.ok(Array.from(cleaned).length <= 64);
    assert.doesNotThrow(() => encodeURIComponent(cleaned));
  }
});

test("default viewer names tell phones apart", () => {
  const pixel = "Mozilla/5.0 (Linux; Android 10; K) AppleWebKit/537.36 (KHTML, like Gecko) "
    + "Chrome/131.0.0.0 Mobile Safari/537.36";
  const iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 "
    + "(KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
  assert.equal(defaultViewerName(pixel, "Pixel 7"), "Pixel 7 — Chrome");
  assert.equal(defaultViewerName(pixel, ""), "Chrome on Android");
  assert.equal(defaultViewerName(iphone, null), "Safari on iPhone");
  assert.equal(defaultViewerName("", ""), "Browser");
  for (const name of [defaultViewerName(pixel, "Pixel 7"), defaultViewerName(iphone)]) {
    assert.ok(V.viewer_names.length && isValidName(name));
  }
});

test("session IDs: 24 URL-safe symbols, fresh each time", () => {
  const ids = new Set(Array.from({ length: 200 }, () => newSessionId()));
  assert.equal(ids.size, 200);
  for (const id of ids) assert.match(id, /^[A-Za-z0-9_-]{24}$/);
});

test("the signaling socket follows the page's scheme, host and path", () => {
  assert.equal(signalingUrl("http://127.0.0.1:8080/#device=X&pair=S"),
    "ws://127.0.0.1:8080/ws/viewer");
  assert.equal(signalingUrl("https://cam.example.net/peercam/?x=1#device=X"),
    "wss://cam.example.net/peercam/ws/viewer");
});
