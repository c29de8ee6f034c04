// Signatures both ways: the camera's (made by Python) checked here, and the
// viewer's (made here) written out for tests/web/test_node.py to check in Python.
import assert from "node:assert/strict";
import { readFileSync, writeFileSync } from "node:fs";
import { test } from "node:test";

import { b64url, offerStatement, unb64url } from "../../services/web/codec.mjs";
import { pairingProof, publicKeyText, sign, verifiedBy } from "../../services/web/keys.mjs";

const V = JSON.parse(readFileSync(process.env.PEERCAM_VECTORS, "utf8"));
const S = V.signed;

test("a camera's signature made in Python verifies, and only for its own ID", async () => {
  const message = unb64url(S.message);
  assert.equal(await verifiedBy(S.device_id, S.device_key, message, S.signature), true);
  assert.equal(await verifiedBy(S.other_id, S.device_key, message, S.signature), false);
  const tampered = Uint8Array.from(message);
  tampered[tampered.length - 1] ^= 1;
  assert.equal(await verifiedBy(S.device_id, S.device_key, tampered, S.signature), false);
  assert.equal(await verifiedBy(S.device_id, S.device_key, message, S.signature.slice(1)), false);
  assert.equal(await verifiedBy(S.device_id, "not-a-key", message, S.signature), false);
});

test("the pairing proof is Python's HMAC", async () => {
  assert.equal(await pairingProof(S.secret, unb64url(S.message)), S.proof);
});

test("the viewer's signature is written for Python to verify", async () => {
  const pair = await crypto.subtle.generateKey(
    { name: "ECDSA", namedCurve: "P-256" }, false, ["sign", "verify"]);
  const key = await publicKeyText(pair.publicKey);
  const [device, session] = [V.device_ids[0].id, "S".repeat(20)];
  const sdp = "v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n";
  const message = await offerStatement(device, session, 1733500000123, key, sdp);
  const signature = await sign(pair.privateKey, message);
  writeFileSync(process.env.PEERCAM_WEB_OUT, JSON.stringify({
    viewer_key: key, device_id: device, session_id: session, timestamp: 1733500000123, sdp,
    message: b64url(message), signature,
  }));
});
