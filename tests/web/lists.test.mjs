// The camera list and the zoom geometry: pure modules, no browser needed.
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { test } from "node:test";

import {
  LinkError, addCamera, lastSeenText, parseCameraLink, parseCameras, removeCamera,
  renameCamera, touchCamera,
} from "../../services/web/cameras.mjs";
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
