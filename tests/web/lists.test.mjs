// The camera list and the zoom geometry: pure modules, no browser needed.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  LinkError, addCamera, lastSeenText, linkParams, parseCameraLink, parseCameras, removeCamera,
  renameCamera, touchCamera,
} from "../../services/web/cameras.mjs";
import { NAME_MAX, cleanText } from "../../services/web/codec.mjs";
import { IDENTITY, clampView, doubleTap, panBy, zoomAt } from "../../services/web/zoom.mjs";

const V = JSON.parse(readFileSync(process.env.PEERCAM_VECTORS, "utf8"));
const [A, B] = V.device_ids.map((v) => v.id);
const PAGE = "https://cams.example:8443/";

test("add, rename, remove, seen", () => {
  let list = addCamera([], A, "", 1000);
  list = addCamera(list, B, "Garden", 2000);
  assert.deepEqual(list.map((c) => c.name), ["Camera " + A.slice(0, 4), "Garden"]);
  assert.equal(addCamera(list, A, "", 3000), list, "adding twice keeps one");
  list = renameCamera(list, A, "  Front door\n ");
  assert.equal(list[0].name, "Front door");
  assert.equal(renameCamera(list, A, "   "), list, "an empty name is not taken");
  list = touchCamera(list, B, 5000);
  assert.equal(list[1].lastSeen, 5000);
  list = removeCamera(list, A);
  assert.deepEqual(list.map((c) => c.id), [B]);
});

test("stored lists survive junk", () => {
  const good = JSON.stringify([{ id: A.toLowerCase(), name: "x", addedAt: 1, lastSeen: null },
    { id: "nope" }, null, { id: A }, { id: B, name: "\u0007", lastSeen: "soon" }]);
  const list = parseCameras(good);
  assert.deepEqual(list.map((c) => c.id), [A, B]);
  assert.equal(list[1].lastSeen, null);
  assert.equal(list[1].name, "Camera " + B.slice(0, 4));
  assert.deepEqual(parseCameras("{not json"), []);
  assert.deepEqual(parseCameras('{"id": 1}'), []);
});

test("links, bare IDs and what is refused", () => {
  assert.deepEqual(parseCameraLink(PAGE + "#device=" + A + "&pair=s3cr$t", PAGE),
    { id: A, pair: "s3cr$t" });
  assert.deepEqual(parseCameraLink("  " + A.toLowerCase() + " ", PAGE), { id: A, pair: null });
  assert.deepEqual(parseCameraLink("#device=" + B, PAGE), { id: B, pair: null });
  assert.throws(() => parseCameraLink("https://evil.example/#device=" + A, PAGE),
    /evil\.example.*open it there/);
  assert.throws(() => parseCameraLink(PAGE + "#device=" + A.slice(1), PAGE), LinkError);
  assert.throws(() => parseCameraLink("", PAGE), LinkError);
  assert.throws(() => parseCameraLink(PAGE + "#device=" + A + "&pair=a b", PAGE), /damaged/);
});

test("last seen in words", () => {
  assert.equal(lastSeenText(null, 0), "never seen");
  assert.equal(lastSeenText(0, 30_000), "seen just now");
  assert.equal(lastSeenText(0, 5 * 60_000), "seen 5 min ago");
  assert.equal(lastSeenText(0, 3 * 3600_000), "seen 3 h ago");
  assert.equal(lastSeenText(0, 2 * 86400_000), "seen 2 d ago");
});

test("zoom keeps the pinched point still and never shows an edge", () => {
  const w = 390, h = 300;
  const v = zoomAt(IDENTITY, 2, 100, 80, w, h);
  assert.equal(v.scale, 2);
  // The point under the fingers stays there: screen = centre + t + (q - centre) * scale.
  assert.ok(Math.abs(w / 2 + v.x + (100 - w / 2) * 2 - 100) < 1e-9);
  assert.ok(Math.abs(h / 2 + v.y + (80 - h / 2) * 2 - 80) < 1e-9);
  const far = panBy(v, 10_000, -10_000, w, h);
  assert.deepEqual(far, { scale: 2, x: w / 2, y: -h / 2 });
  assert.deepEqual(clampView({ scale: 0.2, x: 50, y: 50 }, w, h), { scale: 1, x: 0, y: 0 });
  assert.equal(clampView({ scale: 50, x: 0, y: 0 }, w, h).scale, 6);
  const tapped = doubleTap(IDENTITY, w / 2, h / 2, w, h);
  assert.equal(tapped.scale, 2.5);
  assert.deepEqual(doubleTap(tapped, 0, 0, w, h), { ...IDENTITY });
});

test("links: duplicate fields, long input and non-ASCII are refused, extra fields ignored", () => {
  assert.throws(() => parseCameraLink(PAGE + "#device=" + A + "&device=" + B, PAGE), /device= twice/);
  assert.throws(() => parseCameraLink(PAGE + "#device=" + A + "&pair=x&pair=y", PAGE), /pair= twice/);
  assert.deepEqual(parseCameraLink(PAGE + "#v=2&device=" + A + "&pair=s&x=%3Cb%3E", PAGE),
    { id: A, pair: "s" });
  assert.throws(() => parseCameraLink(PAGE + "#device=" + A + "&x=" + "a".repeat(3000), PAGE),
    /too long/);
  assert.throws(() => parseCameraLink(PAGE + "#device=" + A + "&pair=s\u00e9cret", PAGE),
    /damaged/);
  assert.throws(() => parseCameraLink("https://cams.ex\u00e4mple:8443/#device=" + A, PAGE),
    /xn--/, "an IDN look-alike host is another origin, shown as punycode");
  assert.throws(() => parseCameraLink("//evil.example/#device=" + A, PAGE), /evil\.example/);
  assert.throws(() => parseCameraLink("javascript:alert(1)//#device=" + A, PAGE), /not this server/);
  assert.throws(() => linkParams("#device=a&device=b"), LinkError);
  assert.equal(linkParams("#device=" + A).get("device"), A);
});

test("stored lists: hostile and oversized entries are dropped or cut, never fatal", () => {
  const long = "\u{1F600}".repeat(100);  // 100 code points, 200 UTF-16 units
  const stored = JSON.stringify([
    { id: A, name: long, addedAt: "x", lastSeen: 1e308 * 10 },
    { id: { toString: 1 } }, [A], "A", 7, { id: B, name: { html: "<img>", toString: 1 } },
    { id: B, name: "dup" },
  ]);
  const list = parseCameras(stored);
  assert.deepEqual(list.map((c) => c.id), [A, B]);
  assert.equal(Array.from(list[0].name).length, NAME_MAX);
  assert.equal(list[0].name, "\u{1F600}".repeat(NAME_MAX), "cut by code points");
  assert.equal(list[0].addedAt, 0);
  assert.equal(list[1].name, "Camera " + B.slice(0, 4), "a name that is not text: the default");
  const many = JSON.stringify(Array.from({ length: 200 }, () => ({ id: A })));
  assert.equal(parseCameras(many).length, 1);
  assert.deepEqual(parseCameras('"just a string"'), []);
  assert.deepEqual(parseCameras("null"), []);
});

test("relayed text is bounded, control-free and whole code points", () => {
  assert.equal(cleanText("<img src=x onerror=alert(1)>", 120), "<img src=x onerror=alert(1)>");
  assert.equal(cleanText("a\u0000b\u001bc\u2028d", 120), "abc\u2028d");
  assert.equal(cleanText("x".repeat(500), 120).length, 120);
  assert.equal(cleanText("\u{1F600}\u{1F600}", 1), "\u{1F600}");
  assert.equal(cleanText("\ud800x", 5), "x", "a lone surrogate is dropped");
  assert.equal(cleanText(null, 5), "");
});
