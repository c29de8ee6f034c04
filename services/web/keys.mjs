// The viewer's key and the signatures it makes and checks (WebCrypto only).
//
// The key pair is ECDSA P-256, made non-extractable and kept in IndexedDB:
// script on this page can sign with it, never copy it out. Signing, checking
// a camera's signature and the pairing proof have no DOM and run under Node
// too, where tests/web checks them against signatures made by the Python code.

import { b64url, deviceIdOfKey, unb64url, utf8 } from "./codec.mjs";

const ECDSA = { name: "ECDSA", namedCurve: "P-256" };
const ECDSA_SHA256 = { name: "ECDSA", hash: "SHA-256" };
const KEY_DB = { name: "peercam", store: "keys", viewerKey: "viewer" };

export async function verifiedBy(deviceId, deviceKey, message, signature) {
  // True only if deviceKey is the key deviceId was derived from AND it
  // signed message. Anything malformed is simply "not verified".
  try {
    const der = unb64url(deviceKey);
    const sig = unb64url(signature);
    if (!der || der.length > 200 || !sig || sig.length !== 64) return false;
    if (await deviceIdOfKey(der) !== deviceId) return false;
    const key = await crypto.subtle.importKey("spki", der, ECDSA, false, ["verify"]);
    return await crypto.subtle.verify(ECDSA_SHA256, key, sig, message);
  } catch (_) {
    return false;
  }
}

export async function sign(privateKey, message) {
  // WebCrypto ECDSA gives IEEE P1363 r||s, the form the protocol uses.
  return b64url(await crypto.subtle.sign(ECDSA_SHA256, privateKey, message));
}

export async function pairingProof(secret, message) {
  // HMAC-SHA256 keyed with the secret's ASCII bytes: proves we know the
  // secret without sending it (the server only ever sees this MAC).
  const key = await crypto.subtle.importKey(
    "raw", utf8.encode(secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return b64url(await crypto.subtle.sign("HMAC", key, message));
}

export function generateViewerKey() {
  // Non-extractable: script on this page can sign with it, never copy it out.
  return crypto.subtle.generateKey(ECDSA, false, ["sign", "verify"]);
}

export async function publicKeyText(publicKey) {
  // What the camera's ACL lists: base64url SPKI DER.
  return b64url(await crypto.subtle.exportKey("spki", publicKey));
}

export async function loadViewerKey() {
  let db = null;
  try {
    db = await openKeyDb();
    const stored = await keyDbRequest(db, "readonly", (s) => s.get(KEY_DB.viewerKey));
    if (isKeyPair(stored)) return stored;
    const fresh = await generateViewerKey();
    // Get-or-put in one transaction: two tabs on first use end up with one key.
    return await keyDbGetOrPut(db, fresh);
  } catch (err) {
    // No IndexedDB (some private modes): a key for this page only. Pairing
    // then lasts until reload, which beats not working at all.
    console.warn("peercam: cannot store the viewer key, it will not survive a reload:",
      (err && err.name) || err);
    return generateViewerKey();
  } finally {
    if (db) db.close();
  }
}

function isKeyPair(value) {
  return Boolean(value && value.privateKey instanceof CryptoKey
    && value.publicKey instanceof CryptoKey);
}

function openKeyDb() {
  return new Promise((resolve, reject) => {
    const req = indexedDB.open(KEY_DB.name, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(KEY_DB.store);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(req.error);
    req.onblocked = () => reject(new Error("key store blocked"));
  });
}

function keyDbRequest(db, mode, makeRequest) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(KEY_DB.store, mode);
    const req = makeRequest(tx.objectStore(KEY_DB.store));
    tx.oncomplete = () => resolve(req.result);
    tx.onerror = tx.onabort = () => reject(tx.error);
  });
}

function keyDbGetOrPut(db, fresh) {
  return new Promise((resolve, reject) => {
    const tx = db.transaction(KEY_DB.store, "readwrite");
    const store = tx.objectStore(KEY_DB.store);
    let result = fresh;
    const get = store.get(KEY_DB.viewerKey);
    get.onsuccess = () => {
      if (isKeyPair(get.result)) result = get.result;
      else store.put(fresh, KEY_DB.viewerKey);
    };
    tx.oncomplete = () => resolve(result);
    tx.onerror = tx.onabort = () => reject(tx.error);
  });
}
