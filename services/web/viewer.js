// peercam web viewer.
//
// It never gives up on its own, and never reloads. Two planes:
//
// - Signaling: one WebSocket to the rendezvous (docs/protocol.md), shared by
//   the page's sessions and reopened in the background after a capped,
//   jittered backoff. Losing it never closes a working peer connection.
// - Media: a session = one receive-only RTCPeerConnection + one session_id,
//   with its own <video>. Only the media plane ends a session that shows
//   video (connection failed or closed, DTLS closed, no new frame for
//   stallMs); a bye relayed by the server is advice. Healing is
//   make-before-break: the replacement starts at once, plays behind the old
//   picture, and takes the screen at its first frame; then the old one is
//   closed. Every session asks for fresh ice_servers (TURN credentials are
//   short-lived).
//
// The rendezvous is NOT trusted. This page holds a viewer key (ECDSA P-256,
// non-extractable, kept in IndexedDB) and signs every offer with it; the
// camera only answers keys in its own ACL. Every answer is checked against the
// device ID before it is used: the ID is the hash of the camera's key, so a
// server cannot substitute its own answer (and its own DTLS fingerprint).
//
// The only global is window.peercam, a live view of the state for tests.

import {
  StatementError, answerStatement, candidateStatement, cleanText, normalizeDeviceId,
  newSessionId, offerStatement, pairStatement, pairedStatement, sha256Hex, signalingUrl,
} from "./codec.mjs";
import { LinkError, PAIR_RE, linkParams } from "./cameras.mjs";
import { loadViewerKey, pairingProof, publicKeyText, sign, verifiedBy } from "./keys.mjs";
import { cameras, initList, markSeen, pairingName, remember, showList } from "./list.js";
import {
  closePtzChannel, initControls, openPtzChannel, openQualityChannel, ptzKeyDown,
  setPtzAvailable, showQuality,
} from "./controls.js";
import { initPlayer, renderBadge, stopPlayer, toggleFullscreen } from "./player.js";

// Timers are named here so they can be read and tuned in one place.
const TIMING = {
  helloMs: 10000,          // server must greet us this soon after the socket opens
  prepareMs: 5000,         // server must hand out ICE servers this soon (or the socket is stuck)
  pairMs: 20000,           // camera must answer a pairing request this soon
  iceGatherMs: 2000,       // non-trickle fallback: send what we have after this long
  answerMs: 20000,         // camera must answer (server also times out: error "timeout")
  firstFrameMs: 10000,     // after the answer, a frame must be decoded this soon
  stallMs: 1500,           // no new frame for this long on screen: heal (make-before-break)
  stallHiddenMs: 5000,     // ... while the page is hidden (only stats tell, throttled)
  watchdogMs: 250,         // how often the stall is checked
  backoffBaseMs: 250,      // retries of a session (camera offline, server said no)
  backoffCapMs: 2500,      // a camera back online is watched again within seconds
  slowCapMs: 10000,        // refusals a retry alone will not fix (clocks, forged answer)
  sigBaseMs: 250,          // signaling socket reconnects
  sigFastCapMs: 2000,      // ... while connecting fails fast (a restarting server refuses)
  sigCapMs: 10000,         // ... while it hangs (network gone)
  sigFastFailMs: 2000,     // a socket that fails sooner than this failed fast
  signalWaitMs: 15000,     // a new session waits this long for the signaling socket
  statsMs: 1000,
};

// Trickled "candidate" messages per session, end-of-candidates included
// (seq 0..31; services/signaling.py MAX_CANDIDATES).
const MAX_CANDIDATES = 32;
const PAIRED_PREFIX = "peercam.paired.";   // localStorage: this device accepted our key
// A pairing secret is ASCII (it keys the HMAC as ASCII bytes); PAIR_RE bounds its size.
// What is shown of a reason the untrusted server relays (a bye's cause).
const RELAYED_MAX = 120;

// Error codes from the server, in plain words (protocol.md, Errors).
const ERROR_WORDS = {
  "unavailable": "The camera is offline (or the ID is unknown). Waiting for it to come online.",
  "timeout": "The camera did not answer in time.",
  "conflict": "The camera already has a session with this ID.",
  "rate-limited": "The server asked us to slow down.",
  "bad-message": "The server refused a message from this page.",
  "too-large": "The server refused a message from this page as too large.",
  "unknown-session": "The server no longer knows this session.",
};

const WORDS = {
  insecure: "This page needs a secure connection (https:// or localhost) to keep your "
    + "viewer key safe. Use peercam demo --tls, or put the rendezvous behind TLS.",
  forgedAnswer: "The answer was not signed by this camera — the server may be compromised.",
  forgedPaired: "The pairing reply was not signed by this camera — the server may be compromised.",
  notPaired: "This browser is not paired with this camera. Ask the camera's owner for "
    + "a pairing link (peercam pair on the camera) and open it here.",
  stale: "The camera refused the request because the clocks disagree. "
    + "Check this device's date and time.",
  badSecret: "The pairing link is damaged (the pair= part is not valid). "
    + "Make a new one with peercam pair.",
};

// A thrown value that means "this session was torn down; stop quietly".
const SUPERSEDED = Object.freeze({ superseded: true });

const peercam = {
  state: "idle",
  gaveUp: null,            // error code of a refusal only the person can fix: no more retries
  ttffMs: null,
  framesDecoded: 0,
  localCandidateType: null,
  remoteCandidateType: null,
  remoteAddress: null,     // the selected pair's remote address (IPv4 or IPv6)
  rttMs: null,
  fps: null,
  bitrateKbps: null,
  latencyMs: null,         // estimate: half the RTT + the jitter buffer's hold (the badge)
  path: null,              // "direct" or "relayed" (a TURN relay on either end), the badge
  reconnects: 0,           // sessions that replaced one on screen (heals), on this page
  lastCause: null,         // why the last heal started: "stall 1.5 s", "ICE failed", ...
  lastAdvice: null,        // the last bye the server relayed for a session showing video
  sessions: 0,             // sessions started for this device (first one included)
  maxFrameGapMs: 0,        // longest gap between frames on screen, after the first frame
  signaling: "idle",       // the rendezvous socket: connecting, connected, reconnecting, closed
  signalingReconnects: 0,  // times it came back (hello again) without a page reload
  watchesSent: 0,          // "tell me when the camera registers" requests (camera offline)
  onlineHints: 0,          // "it registered" hints from the server that started a session
  sessionId: null,
  lastError: null,
  paired: null,            // true: the camera took our key; false: it refused it; null: unknown
  viewerKey: null,         // our public key, base64url SPKI (what the camera's ACL lists)
  timeline: {},            // ms from startedAt: key, signaling, offerMade, prepared, offer, firstCandidateSent, gathered,
                           // endOfCandidates, answer, verified, iceConnected, connected, firstFrame
  startedAtEpochMs: null,  // that clock's start, ms since the epoch (performance.timeOrigin based)
  trickle: null,           // the shown session trickles its ICE candidates (false: the fallback)
  candidatesSent: 0,       // trickled candidate messages, end-of-candidates not counted
  ptzAvailable: null,      // the camera's "ptz" hello: true (a head), false (none), null (not yet)
  ptzSent: 0,              // control messages sent on the shown session's channel
  ptzAcks: 0,              // ... and acknowledged (the frame is on the RS-485 line)
  ptzLastAck: null,        // op of the last ack
  ptzLastError: null,      // text of the last error reply (rate limited, not authorized...)
  layer: null,             // the layer the camera says the shown session gets: "high", "low"
  qualityMode: null,       // the mode it confirmed: "auto", "high", "low"
  layers: [],              // the layers the camera sends
  layerSwitches: 0,        // moves to another layer reported while shown
  qualityWanted: null,     // what the person picked (sent on every new session); null: auto
  qualityLastError: null,  // text of the camera's last refusal on the quality channel
  serviceWorker: null,     // the app shell's worker registered (true), refused (false)
  cameras: [],             // the camera list: {id, name, addedAt, lastSeen, online}
};
window.peercam = peercam;

// Where the time to first frame goes, for the overlay-less benchmark.
function setStart(att) {
  // The clock of ttffMs and the timeline; its wall-clock time lets a benchmark
  // join the timeline to the camera's log.
  att.startedAt = performance.now();
  setFigure(att, "startedAtEpochMs", performance.timeOrigin + att.startedAt);
}

function mark(att, name) {
  // att.figures.timeline is window.peercam.timeline while att is shown.
  const timeline = att.figures.timeline;
  if (att.startedAt !== null && !(name in timeline)) {
    timeline[name] = Math.round(performance.now() - att.startedAt);
  }
}

let ui = null;          // DOM elements, found once
let deviceId = null;    // normalized ID being watched
let pairSecret = null;  // from the fragment; only ever used as an HMAC key, never sent
let live = null;        // the session on screen (it has shown a frame), or null
let pending = null;     // the session being set up (first one, or a heal), or null
let lastShownAt = null; // when the last frame on screen was shown (frame gaps)
let failures = 0;       // consecutive failures, drives the backoff
let retryTimer = 0;
let retryAt = 0;
let stopped = false;    // page hidden for good (pagehide)
let extra = {};         // overlay-only details of the shown session: path, codec, size
let keyPromise = null;  // the viewer key, loaded once per page
let trickleRefused = false; // the server refused "candidate": offer non-trickle from now on
let watching = false;   // the camera is offline: the server tells us when it registers
let watchRefused = false;  // an older server does not know "watch": the retry timer alone

// ---- small helpers -------------------------------------------------------

class ViewerError extends Error {
  // state "error" + slow: a problem a retry alone will not fix (forged
  // answer, clocks); we still retry, at the longest backoff, in case it heals.
  // final: only the person can fix it (not paired, pairing link used up):
  // no retry at all, the notice says what to do.
  constructor(message, code, opts) {
    super(message);
    this.code = code || null;
    this.state = (opts && opts.state) || "reconnecting";
    this.slow = Boolean(opts && opts.slow);
    this.final = Boolean(opts && opts.final);
  }
}

function backoffDelay() {
  // Full jitter (uniform in [0, min(cap, base * 2^n)]): many viewers that
  // lost the same server do not come back in lockstep.
  const ceiling = Math.min(TIMING.backoffCapMs, TIMING.backoffBaseMs * 2 ** Math.min(failures, 20));
  failures += 1;
  return Math.random() * ceiling;
}

function slowDelay() {
  // For refusals: the longest backoff, jittered in its upper half so the
  // camera is not asked again and again while nobody changes anything.
  failures += 1;
  return TIMING.slowCapMs * (0.5 + Math.random() / 2);
}

function setTimer(att, ms, fn) {
  // One set per session; clearTimeout also clears intervals (HTML spec:
  // they share one list of timers), so teardown needs one loop.
  const id = setTimeout(() => {
    att.timers.delete(id);
    if (!att.closed) fn();
  }, ms);
  att.timers.add(id);
  return id;
}

function clearTimer(att, id) {
  if (id) {
    clearTimeout(id);
    att.timers.delete(id);
  }
}

// ---- keys and signatures -------------------------------------------------

function verifyByDevice(deviceKey, message, signature) {
  // Only the camera whose ID we watch: its key hashes to deviceId.
  return verifiedBy(deviceId, deviceKey, message, signature);
}

function viewerKey() {
  // Loaded once; a failure is not cached, so the next session tries again.
  if (!keyPromise) {
    keyPromise = loadViewerKey().then(async (pair) => {
      const text = await publicKeyText(pair.publicKey);
      peercam.viewerKey = text;
      return { pair, text };
    });
    keyPromise.catch(() => { keyPromise = null; });
  }
  return keyPromise;
}

// Whether this device accepted our key, remembered per device ID. Only a
// hint for the UI: the camera's ACL decides.
function storedPaired(id) {
  try {
    return localStorage.getItem(PAIRED_PREFIX + id) === "1";
  } catch (_) {
    return false;
  }
}

function setPaired(value) {
  peercam.paired = value;
  try {
    if (value) localStorage.setItem(PAIRED_PREFIX + deviceId, "1");
    else localStorage.removeItem(PAIRED_PREFIX + deviceId);
  } catch (_) { /* storage off: the flag lives for this page only */ }
}

function forgetPairSecret() {
  // Paired: the secret has done its job. Drop it from memory and from the
  // address bar / history (keep device=), without a hashchange.
  pairSecret = null;
  // Cut the pair= part out of the raw fragment rather than re-serializing:
  // URLSearchParams would percent-encode a "$" or "*" check symbol.
  const hash = location.hash.replace(/^#/, "").split("&")
    .filter((part) => part.split("=")[0] !== "pair").join("&");
  history.replaceState(history.state, "", location.pathname + location.search
    + (hash ? "#" + hash : ""));
}

// ---- sessions: make-before-break -----------------------------------------
//
// `live` is the session on screen (it has shown a frame); `pending` is the
// one being set up. When the live one's media plane fails (peer connection
// failed or closed, DTLS closed by the camera, no new frame for stallMs), a
// new session starts at once while the old picture stays up; the new one's
// <video> sits behind it and comes to the front at its first decoded frame,
// and only then is the old connection closed. Whichever session shows a
// frame first wins: if the old one recovers first, the new one is dropped.

function newSession() {
  const att = {
    sessionId: newSessionId(),
    sigGen: 0,             // the signaling socket this session speaks on (sig.gen)
    pc: null,
    ptz: null,             // the "ptz" data channel (pan/tilt), made before the offer
    ptzAvailable: null,    // the camera's "ptz" hello on this session's channel
    trickle: null,         // trickle ICE state (newTrickle), made before the peer connection
    video: null,           // this session's <video> element
    closed: false,
    phase: "signaling",    // "pair" while pairing, "offer" once the offer is out
    sessionLive: false,    // pair/offer sent and neither bye nor error came back
    answered: false,
    startedAt: null,       // performance.now() as connect starts (after pairing, if it pairs)
    firstFrameAt: null,
    lastFrameAt: 0,        // last sign of a new frame (frame callback or framesDecoded)
    frameCallbacks: false, // frame callbacks run for its video (then stats are not needed)
    trouble: null,         // live only: why it is being replaced, or null while healthy
    advice: null,          // a bye the server relayed for it after it showed video
    timers: new Set(),
    waiters: new Map(),    // message type -> {resolve, reject, timer}
    prev: null,            // previous stats sample, for rates
    extra: {},             // overlay-only details: path protocol, codec, resolution
    figures: null,
  };
  att.figures = {
    sessionId: att.sessionId, ttffMs: null, framesDecoded: 0, localCandidateType: null,
    remoteCandidateType: null, remoteAddress: null, rttMs: null, fps: null,
    bitrateKbps: null, timeline: {}, trickle: null, candidatesSent: 0, latencyMs: null,
    startedAtEpochMs: null,
  };
  return att;
}

function shown() {
  // The session whose figures the overlay and window.peercam describe.
  return live || pending;
}

function setFigure(att, name, value) {
  att.figures[name] = value;
  if (att === shown()) peercam[name] = value;
}

function showFigures(att) {
  Object.assign(peercam, att.figures);
  extra = att.extra;
  peercam.ptzSent = 0;
  peercam.ptzAcks = 0;
  peercam.ptzLastAck = null;
  peercam.ptzLastError = null;
}

function resetStats() {
  // Figures describe the shown session only; a new device starts blank.
  showFigures(newSession());
  peercam.sessionId = null;
}

function sessionById(id) {
  if (typeof id !== "string") return null;
  if (live && live.sessionId === id) return live;
  if (pending && pending.sessionId === id) return pending;
  return null;
}

function start() {
  // Watch deviceId: the signaling socket and a first session.
  peercam.gaveUp = null;
  if (stopped || !deviceId) return;
  sigConnect();
  startSession();
}

function startSession() {
  clearTimeout(retryTimer);
  retryTimer = 0;
  if (stopped || !deviceId || peercam.gaveUp || pending) return;
  const att = newSession();
  pending = att;
  peercam.sessions += 1;
  if (live) {
    // Behind the picture on screen until it has a frame of its own.
    att.video = makeVideo();
    ui.video.after(att.video);
  } else {
    att.video = ui.video;
    showFigures(att);
    // An unresolved refusal stays on screen (in red) while we try again.
    setState(peercam.state === "error" ? "error"
      : peercam.sessions > 1 ? "reconnecting" : "connecting");
  }
  connect(att).catch((err) => fail(att, err));
}

function makeVideo() {
  const video = document.createElement("video");
  video.className = "feed back";
  video.autoplay = true;
  video.muted = true;
  video.playsInline = true;
  video.setAttribute("playsinline", "");
  return video;
}

async function connect(att) {
  // Nothing waits for a step it does not need: the signaling socket opens,
  // the viewer key loads (a stored CryptoKey, from IndexedDB) and the peer
  // connection makes its offer at the same time. The offer is signed as soon
  // as the key and the offer are there, while the server mints ICE servers;
  // once they are in, the offer is applied (gathering starts with them) and
  // sent in the same step: applying it and the camera's answer overlap.
  // TTFF counts from here for a paired page, from after pairing otherwise.
  if (!pairSecret) setStart(att);
  const key = viewerKey();
  const signaling = signalingReady(att);
  key.then(() => mark(att, "key"), () => {});
  signaling.then(() => mark(att, "signaling"), () => {});
  if (pairSecret) {
    const [me] = await Promise.all([key, signaling]);
    alive(att);
    await pair(att, me);
    setStart(att);
  }
  att.trickle = newTrickle(!trickleRefused);
  setFigure(att, "trickle", att.trickle.enabled);
  const pc = createPeer(att);
  const made = pc.createOffer().then((offer) => {
    mark(att, "offerMade");
    return offer;
  });
  const iceServers = signaling.then(() => {
    alive(att);
    return prepare(att);
  });
  // The exact string we send is what the camera's answer statement hashes.
  let sdp;
  let me;
  let applied;
  if (att.trickle.enabled) {
    // Trickling, the offer as made is what we sign and send: applying it
    // changes nothing in it, and the candidates gathered after follow it.
    const signing = Promise.all([key, made]).then(([k, offer]) => signOffer(att, k, offer.sdp));
    const [k, servers, offer, signature] = await Promise.all([key, iceServers, made, signing]);
    alive(att);
    me = k;
    sdp = offer.sdp;
    useIceServers(pc, servers);
    applied = pc.setLocalDescription(offer);
    applied.catch(() => {});  // awaited below, before the answer is applied
    sendOffer(att, me, sdp, signature);
  } else {
    // Fallback: one complete offer, as before trickle ICE (protocol.md).
    const [k, servers, offer] = await Promise.all([key, iceServers, made]);
    alive(att);
    me = k;
    useIceServers(pc, servers);
    await pc.setLocalDescription(offer);
    alive(att);
    await iceGatheringDone(att, pc);
    alive(att);
    sdp = pc.localDescription.sdp;
    sendOffer(att, me, sdp, await signOffer(att, me, sdp));
    applied = Promise.resolve();
  }
  const answered = expect(att, "answer", TIMING.answerMs,
    "The camera did not answer in time.");
  await startTrickle(att, me, sdp);
  const answer = await answered;
  mark(att, "answer");
  // Checked BEFORE setRemoteDescription: the answer carries the DTLS
  // fingerprint we will accept, so an unsigned one could be anyone's.
  const genuine = await verifyByDevice(answer.device_key,
    await answerStatement(deviceId, att.sessionId, sdp, answer.sdp), answer.signature);
  alive(att);
  if (!genuine) throw new ViewerError(WORDS.forgedAnswer, null, { state: "error" });
  mark(att, "verified");
  // The camera answered a signed offer: our key is in its ACL.
  setPaired(true);
  await applied;
  alive(att);
  await applyAnswer(att, pc, answer.sdp);
  alive(att);
  att.answered = true;
  setTimer(att, TIMING.firstFrameMs, () => {
    if (att.firstFrameAt === null) {
      fail(att, new ViewerError("No video arrived from the camera."));
    }
  });
}

// ---- the camera's answer: its reflexive candidates first -------------------
//
// Chromium checks one candidate pair every ~50 ms while nothing works, the
// highest-priority one first: the camera's host candidate, which only a viewer
// on the camera's LAN can reach. The pair through both NATs (our host to the
// camera's server-reflexive address) was checked ~50 ms later, in every
// direct NAT-lab trial. The camera checks our server-reflexive candidate first
// (it opens its NAT as it answers), so the answer is applied with only the
// camera's server-reflexive candidates in it (checked at once, through the
// hole the camera just opened) and the others are added right after, in the
// answer's order. (Adding every candidate with addIceCandidate instead, one
// after the other, cost ~10-30 ms per call on a busy machine: all of the gain.)
// Priorities are unchanged: on a LAN where both work, the host pair still
// wins. When the camera's public address is ours (the same LAN, most likely),
// the answer is applied as it came.

function answerCandidates(sdp) {
  // The answer's sections, and the candidates of its BUNDLE transport (of
  // every m-section without BUNDLE) in the answer's order.
  const sections = sdp.split(/\r\n(?=m=)/);
  const bundle = /^a=group:BUNDLE ([^\s]+)/m.exec(sdp);
  const candidates = [];
  const seen = new Set();
  sections.forEach((section, index) => {
    const mid = (/^a=mid:(\S+)/m.exec(section) || [])[1];
    if (index === 0 || (bundle && mid !== bundle[1])) return;
    for (const line of section.split("\r\n")) {
      if (!line.startsWith("a=candidate:")) continue;
      const key = candidateKey(line);
      if (seen.has(key)) continue;
      seen.add(key);
      candidates.push({ candidate: line.slice(2), sdpMid: mid === undefined ? null : mid,
        sdpMLineIndex: index - 1 });
    }
  });
  return { sections, candidates };
}

function candidateAddress(line) {
  // [type, address] of an a=candidate line (or of its value).
  const fields = line.replace(/^a=/, "").split(" ");
  return [fields[7] || "", (fields[4] || "").toLowerCase()];
}

function reflexiveFirst(candidates, localSdp) {
  // The camera's candidates to add after the answer (the server-reflexive ones
  // stay in it), or null: apply the answer as it came.
  const ours = new Set();
  for (const line of (localSdp || "").match(/^a=candidate:.*$/gm) || []) {
    const [type, address] = candidateAddress(line);
    if (type === "srflx") ours.add(address);
  }
  let reflexive = 0;
  const later = [];
  for (const c of candidates) {
    const [type, address] = candidateAddress(c.candidate);
    // TCP ones (RFC 6544) after the answer: a browser connects only to a passive one.
    if (c.candidate.split(" ")[2].toLowerCase() === "tcp") { later.push(c); continue; }
    if (type === "srflx" && ours.has(address)) return null;  // the same public address
    if (type === "srflx") reflexive += 1;
    else later.push(c);
  }
  return reflexive && later.length ? later : null;
}

function withoutCandidates(sections, later) {
  // The answer without the candidates added later (nor a=end-of-candidates).
  const keys = new Set(later.map((c) => candidateKey(c.candidate)));
  return sections.map((section) => section.split("\r\n").filter((line) =>
    !(line.startsWith("a=candidate:") && keys.has(candidateKey(line)))
    && line !== "a=end-of-candidates").join("\r\n")).join("\r\n");
}

async function applyAnswer(att, pc, sdp) {
  const split = answerCandidates(sdp);
  const later = reflexiveFirst(split.candidates,
    pc.localDescription ? pc.localDescription.sdp : "");
  if (later === null) {
    await pc.setRemoteDescription({ type: "answer", sdp });
    return;
  }
  await pc.setRemoteDescription({ type: "answer", sdp: withoutCandidates(split.sections, later) });
  alive(att);
  // All at once: the browser applies them in order, after the first check.
  await Promise.all(later.map((candidate) => pc.addIceCandidate(candidate).catch((err) => {
    console.warn("peercam: the camera's candidate was not taken:", candidate.candidate, err);
  })));
  mark(att, "candidatesAdded");
}

async function pair(att, me) {
  // Pairing link: prove knowledge of the secret (HMAC, never the secret
  // itself) and have the camera add our key to its ACL, before any offer.
  att.phase = "pair";
  const name = await pairingName();
  const timestamp = Date.now();
  const text = pairStatement(deviceId, att.sessionId, timestamp, me.text, name);
  const [signature, proof] = await Promise.all([
    sign(me.pair.privateKey, text), pairingProof(pairSecret, text)]);
  alive(att);
  send(att, {
    type: "pair", device_id: deviceId, session_id: att.sessionId,
    viewer_key: me.text, name, timestamp, signature, proof,
  });
  att.sessionLive = true;
  const reply = await expect(att, "paired", TIMING.pairMs,
    "The camera did not answer the pairing request in time.");
  att.sessionLive = false;
  const genuine = await verifyByDevice(reply.device_key,
    pairedStatement(deviceId, att.sessionId, me.text, name), reply.signature);
  alive(att);
  if (!genuine) throw new ViewerError(WORDS.forgedPaired, null, { state: "error" });
  setPaired(true);
  forgetPairSecret();
  // The offer is a new session; the pairing one is finished.
  att.sessionId = newSessionId();
  setFigure(att, "sessionId", att.sessionId);
  att.phase = "signaling";
}

async function prepare(att) {
  // The server mints TURN credentials per session; hello only has STUN.
  send(att, { type: "prepare", device_id: deviceId, session_id: att.sessionId });
  const prepared = await expect(att, "prepared", TIMING.prepareMs,
    "The server did not respond in time.", { serverOnly: true });
  mark(att, "prepared");
  return prepared.ice_servers;
}

async function signOffer(att, me, sdp) {
  // The offer statement's signature and the timestamp it covers.
  const timestamp = Date.now();
  const text = await offerStatement(deviceId, att.sessionId, timestamp, me.text, sdp);
  return { timestamp, signature: await sign(me.pair.privateKey, text) };
}

function sendOffer(att, me, sdp, signed) {
  alive(att);
  mark(att, "offer");
  att.phase = "offer";
  send(att, {
    type: "offer", device_id: deviceId, session_id: att.sessionId,
    sdp, viewer_key: me.text, timestamp: signed.timestamp, signature: signed.signature,
  });
  att.sessionLive = true;
}

function alive(att) {
  if (att.closed) throw SUPERSEDED;
}

// ---- trickle ICE ---------------------------------------------------------
//
// The offer leaves as soon as setLocalDescription resolves, with the
// candidates it has (usually none); each candidate gathered after it follows
// as a "candidate" message signed with the viewer key and bound to the
// offer's hash, then end-of-candidates (protocol.md). Chromium takes ~130 ms
// to call gathering complete even with host candidates only: a non-trickle
// offer waited for that. The rendezvous sees the offer's ICE ufrag and pwd,
// so the camera only takes candidates signed by us (security.md).

function newTrickle(enabled) {
  return {
    enabled,
    me: null,           // our key, once the offer is out
    offerHash: null,    // SHA-256 of the offer as sent; null until it is sent
    offerKeys: null,    // candidates already in that offer (not sent again)
    bundleMid: null,    // the offer's BUNDLE tag: the one transport the camera uses
    queue: [],          // gathered and not yet handed to the chain
    seq: 0,
    ended: false,       // end-of-candidates queued
    chain: Promise.resolve(),  // sign and send one at a time, in seq order
  };
}

function candidateKey(line) {
  // foundation component transport priority address port "typ" type: the
  // event's line adds extensions (ufrag) that the SDP's a=candidate lacks.
  return line.replace(/^a=/, "").split(" ").slice(0, 8).join(" ");
}

async function startTrickle(att, me, sdp) {
  const t = att.trickle;
  if (!t.enabled) return;
  const hash = await sha256Hex(sdp);
  alive(att);
  t.me = me;
  t.offerKeys = new Set((sdp.match(/^a=candidate:.*$/gm) || []).map(candidateKey));
  const bundle = /^a=group:BUNDLE ([^\s]+)/m.exec(sdp);
  t.bundleMid = bundle ? bundle[1] : null;
  t.offerHash = hash;
  pumpCandidates(att);
}

function onLocalCandidate(att, candidate) {
  const t = att.trickle;
  if (att.closed || !t || !t.enabled || t.ended) return;
  if (!candidate) {
    // null: gathering is complete. (A "" candidate, which some browsers
    // send per m-section, is not the end of all of them: wait for null.)
    t.ended = true;
    t.queue.push(null);
  } else if (candidate.candidate) {
    t.queue.push({ line: candidate.candidate, mid: candidate.sdpMid,
      index: candidate.sdpMLineIndex });
  }
  pumpCandidates(att);
}

function wantCandidate(t, item) {
  const fields = item.line.split(" ");
  const mid = typeof item.mid === "string" && item.mid ? item.mid : null;
  const index = Number.isInteger(item.index) ? item.index : null;
  if (mid === null && index === null) return false;  // the camera could not place it
  // The camera (aiortc) always accepts the offer's BUNDLE group, so only the
  // tagged m-section's transport carries media (BUNDLE, RFC 9143).
  if (t.bundleMid !== null && mid !== null && mid !== t.bundleMid) return false;
  // A browser's TCP candidates (RFC 6544) are active ones: it connects to the
  // camera's passive candidate by itself, and nothing of the camera's pairs with them.
  if ((fields[2] || "").toLowerCase() === "tcp") return false;
  return !t.offerKeys.has(candidateKey(item.line));
}

function pumpCandidates(att) {
  const t = att.trickle;
  if (t.offerHash === null) return;  // before the offer the server knows no session
  while (t.queue.length) {
    const item = t.queue.shift();
    if (item !== null && !wantCandidate(t, item)) continue;
    // The last seq is kept for end-of-candidates; a (rare) surplus is dropped,
    // and connectivity checks still find those addresses as peer-reflexive.
    if (item !== null && t.seq >= MAX_CANDIDATES - 1) {
      console.warn("peercam: more than " + (MAX_CANDIDATES - 1) + " candidates, not sending:",
        item.line);
      continue;
    }
    const seq = t.seq;
    t.seq += 1;
    t.chain = t.chain.then(() => sendCandidate(att, item, seq))
      .catch((err) => {
        // Candidates only matter while negotiating; a session with media
        // does not need the rest of them.
        if (!att.answered) fail(att, err);
      });
  }
}

async function sendCandidate(att, item, seq) {
  if (att.closed) return;
  const t = att.trickle;
  const line = item ? item.line : "";
  const mid = item && typeof item.mid === "string" && item.mid ? item.mid : null;
  const index = item && Number.isInteger(item.index) ? item.index : null;
  const text = candidateStatement(deviceId, att.sessionId, t.offerHash, seq, line, mid, index);
  const signature = await sign(t.me.pair.privateKey, text);
  if (att.closed || (att.answered && !sigCanSend(att))) return;
  const msg = {
    type: "candidate", device_id: deviceId, session_id: att.sessionId,
    seq, candidate: line, signature,
  };
  if (mid !== null) msg.sdp_mid = mid;
  if (index !== null) msg.sdp_mline_index = index;
  send(att, msg);
  if (item) {
    setFigure(att, "candidatesSent", att.figures.candidatesSent + 1);
    mark(att, "firstCandidateSent");
  } else {
    mark(att, "endOfCandidates");
  }
}

function onGatheringState(att, pc) {
  if (att.closed || pc.iceGatheringState !== "complete") return;
  mark(att, "gathered");
  onLocalCandidate(att, null);  // in case a browser skips the null candidate
}

function fail(att, err) {
  // The pending session did not make it (or a refusal came): drop it and,
  // unless only the person can fix this, try again after a short backoff.
  if (att.closed || err === SUPERSEDED) return;
  const message = err instanceof ViewerError || err instanceof StatementError ? err.message
    : "Browser error: " + ((err && err.message) || String(err));
  if (att === live) {
    // Never tear down the picture on screen for an error: heal around it.
    heal(att, message);
    return;
  }
  peercam.lastError = message;
  teardown(att);
  if (att === pending) pending = null;
  const refusal = err instanceof ViewerError ? err : null;
  if (refusal && refusal.final) {
    giveUp(refusal.code);
    return;
  }
  if (refusal && refusal.code === "unavailable") {
    // Offline (or restarting, or moving networks): ask to be told when it
    // registers, and keep the retry timer as the fallback.
    watching = true;
    sendWatch();
  }
  if (live && !live.trouble) {
    // The old session came back while this one was being set up: keep it.
    render();
    return;
  }
  scheduleRetry(refusal ? refusal.state : "reconnecting", Boolean(refusal && refusal.slow));
}

function giveUp(code) {
  // Asking again cannot help: stop, and leave the instructions on screen.
  // Opening a (new) pairing link or reloading the page starts over.
  peercam.gaveUp = code;
  clearTimeout(retryTimer);
  retryTimer = 0;
  for (const att of [pending, live]) if (att) teardown(att);
  pending = null;
  live = null;
  sigClose();
  setState("error");
}

function heal(att, cause) {
  // The live session's media plane says it is gone or stuck. Start its
  // replacement now; the old picture stays up until the new one has a frame.
  if (att !== live || att.closed || peercam.gaveUp) return;
  if (att.trouble === null) {
    if (/^not authorized/.test(att.advice || "")) {
      // The camera said so (through the relay) and the media ended: a
      // revoked viewer. Asking again would only be refused.
      const refusal = byeError(att, att.advice);
      peercam.lastError = refusal.message;
      peercam.lastCause = cause;
      giveUp(refusal.code);
      return;
    }
    att.trouble = cause;
    peercam.lastCause = att.advice ? att.advice + ": " + cause : cause;
    console.info("peercam: healing session " + att.sessionId + " (" + peercam.lastCause + ")");
    failures = 0;
  }
  setState("reconnecting");
  if (!pending && !retryTimer) startSession();
}

function recovered(att) {
  // Frames again on the live session before its replacement showed one:
  // the old one wins, the new one goes.
  att.trouble = null;
  clearTimeout(retryTimer);
  retryTimer = 0;
  if (pending) {
    teardown(pending);
    pending = null;
  }
  setState("connected");
}

function promote(att) {
  // The pending session showed its first frame: it takes the screen.
  const old = live;
  pending = null;
  watching = false;
  live = att;
  clearTimeout(retryTimer);
  retryTimer = 0;
  if (old) {
    peercam.reconnects += 1;
    // The camera said it was going (through the relay) and is back: say so.
    if (/offline|shutting down|restart/.test(old.advice || "")) {
      peercam.lastCause = "camera restarted";
    }
    else if (!old.trouble) peercam.lastCause = "replaced";
    att.video.id = "video";
    att.video.classList.remove("back");
    old.video.removeAttribute("id");
    ui.video = att.video;
    teardown(old);
  }
  showFigures(att);
  setPtzAvailable(att.ptzAvailable);
  showQuality(att);
  peercam.lastError = null;
  setState("connected");
}

function scheduleRetry(state, slow) {
  if (stopped || pending || retryTimer) return;
  const delay = slow ? slowDelay() : backoffDelay();
  retryAt = performance.now() + delay;
  retryTimer = setTimeout(startSession, delay);
  setState(state);
}

function teardown(att) {
  if (att.closed) return;
  att.closed = true;
  closePtzChannel(att);
  if (att.qualityChannel) {
    att.qualityChannel.onopen = att.qualityChannel.onmessage = null;
    att.qualityChannel = null;
  }
  for (const id of att.timers) clearTimeout(id);
  att.timers.clear();
  for (const w of att.waiters.values()) w.reject(SUPERSEDED);
  att.waiters.clear();
  // Tell the camera at once rather than when it notices the media stopped.
  if (att.sessionLive && sigCanSend(att)) {
    try {
      sig.ws.send(JSON.stringify({ type: "bye", session_id: att.sessionId }));
    } catch (_) { /* the socket is going away anyway */ }
  }
  att.sessionLive = false;
  const pc = att.pc;
  if (pc) {
    pc.ontrack = pc.onconnectionstatechange = pc.oniceconnectionstatechange = null;
    pc.onicegatheringstatechange = pc.onicecandidate = null;
    pc.close();
  }
  const video = att.video;
  if (video && video !== ui.video) {
    video.srcObject = null;
    video.remove();
  }
}

// ---- signaling -----------------------------------------------------------
//
// One WebSocket per page, shared by its sessions (a viewer connection may
// carry several; protocol.md). It only carries signaling: a session whose
// media flows does not need it, so losing it never closes a peer
// connection. It is reopened in the background after a capped, jittered
// backoff: at most sigFastCapMs while connecting fails fast (a restarting
// server refuses at once), sigCapMs when it hangs.

const sig = {
  ws: null,
  gen: 0,          // one per socket; a session speaks on the one it started on
  ready: false,    // hello seen on this socket
  everReady: false,
  startedAt: 0,
  failures: 0,
  timer: 0,        // reconnect timer
  helloTimer: 0,
  retryAt: 0,
};

function sigConnect() {
  clearTimeout(sig.timer);
  sig.timer = 0;
  if (stopped || !deviceId || peercam.gaveUp || sig.ws) return;
  sig.gen += 1;
  sig.ready = false;
  sig.startedAt = performance.now();
  const gen = sig.gen;
  let ws;
  try {
    ws = new WebSocket(signalingUrl(location.href));
  } catch (err) {
    console.warn("peercam: cannot open the signaling socket:", err);
    sigSchedule(true);
    return;
  }
  sig.ws = ws;
  peercam.signaling = "connecting";
  ws.onmessage = (ev) => {
    if (sig.gen === gen) onSignal(ev.data);
  };
  ws.onclose = () => {
    if (sig.gen === gen) sigDropped();
  };
  sig.helloTimer = setTimeout(() => {
    if (sig.gen === gen && !sig.ready) sigDropped();
  }, TIMING.helloMs);
}

function sigRelease() {
  clearTimeout(sig.helloTimer);
  sig.helloTimer = 0;
  const ws = sig.ws;
  sig.ws = null;
  sig.ready = false;
  if (ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    try {
      ws.close(1000);
    } catch (_) { /* already closing */ }
  }
}

function sigClose() {
  // On purpose (page hidden, other device, gave up): no reconnect.
  clearTimeout(sig.timer);
  sig.timer = 0;
  sigRelease();
  sig.failures = 0;
  peercam.signaling = "closed";
}

function sigDropped() {
  const fast = performance.now() - sig.startedAt < TIMING.sigFastFailMs;
  const wasReady = sig.ready;
  sigRelease();
  if (wasReady) sig.failures = 0;
  for (const att of [pending, live]) {
    if (!att || att.closed || att.sigGen === 0) continue;
    if (att.firstFrameAt === null && !att.answered) {
      // Still negotiating: that cannot finish on a socket that is gone.
      fail(att, new ViewerError("Lost the connection to the server."));
    }
    // Otherwise the media needs no signaling: keep it.
  }
  if (live && !live.trouble && wasReady) {
    peercam.lastCause = "signaling lost (media kept)";
    console.info("peercam: signaling lost; the video goes on, reconnecting in the background");
  }
  sigSchedule(fast);
}

function sigStuck(gen) {
  // The socket is open on paper but the server's replies stopped coming: a
  // TCP connection that outlived an outage of our own network retransmits on
  // a backoff of tens of seconds and, with the server long gone from its other
  // end, never closes by itself. Open a new one now (the media is untouched).
  if (gen !== sig.gen || !sig.ws) return;
  console.info("peercam: the server stopped answering on this socket; opening a new one");
  sig.ready = false;
  sig.failures = 0;
  sigDropped();
}

function sigSchedule(fast) {
  if (stopped || !deviceId || peercam.gaveUp) return;
  const cap = fast ? TIMING.sigFastCapMs : TIMING.sigCapMs;
  const ceiling = Math.min(cap, TIMING.sigBaseMs * 2 ** Math.min(sig.failures, 20));
  sig.failures += 1;
  // Jittered in the upper half: viewers that lost the same server spread out.
  const delay = ceiling * (0.5 + Math.random() / 2);
  sig.retryAt = performance.now() + delay;
  sig.timer = setTimeout(sigConnect, delay);
  peercam.signaling = "reconnecting";
  render();
}

function sigReady() {
  clearTimeout(sig.helloTimer);
  sig.helloTimer = 0;
  if (sig.everReady) peercam.signalingReconnects += 1;
  sig.ready = true;
  sig.everReady = true;
  sig.failures = 0;
  peercam.signaling = "connected";
  // A restarted server forgot our watch: ask again.
  if (watching) sendWatch();
  const att = pending;
  if (att && !att.closed && att.waiters.has("signaling")) {
    att.sigGen = sig.gen;
    deliver(att, "signaling", null);
  }
  render();
}

function sigCanSend(att) {
  return sig.ready && att.sigGen === sig.gen && sig.ws !== null
    && sig.ws.readyState === WebSocket.OPEN;
}

function signalingReady(att) {
  if (sig.ready) {
    att.sigGen = sig.gen;
    return Promise.resolve();
  }
  if (!sig.ws && !sig.timer) sigConnect();
  return expect(att, "signaling", TIMING.signalWaitMs,
    sig.everReady ? "Lost the connection to the server." : "Cannot reach the server.");
}

function expect(att, type, ms, timeoutText, opts) {
  // serverOnly: the server itself answers this (no camera in between), so
  // silence means the socket is stuck, not that someone is slow.
  const serverOnly = Boolean(opts && opts.serverOnly);
  return new Promise((resolve, reject) => {
    const timer = setTimer(att, ms, () => {
      const gen = att.sigGen;
      fail(att, new ViewerError(timeoutText));
      if (serverOnly) sigStuck(gen);
    });
    att.waiters.set(type, { resolve, reject, timer });
  });
}

function deliver(att, type, msg) {
  const w = att.waiters.get(type);
  if (!w) return;
  att.waiters.delete(type);
  clearTimer(att, w.timer);
  w.resolve(msg);
}

function send(att, msg) {
  if (!sigCanSend(att)) throw new ViewerError("Lost the connection to the server.");
  sig.ws.send(JSON.stringify(msg));
}

function onSignal(data) {
  if (typeof data !== "string") return;
  let msg;
  try {
    msg = JSON.parse(data);
  } catch (_) {
    return; // the server only sends JSON; ignore noise rather than drop video
  }
  if (!msg || typeof msg !== "object") return;
  if (msg.type === "hello") {
    sigReady();
    return;
  }
  const att = sessionById(msg.session_id);
  switch (msg.type) {
    case "prepared":
    case "paired":
      if (att) deliver(att, msg.type, msg);
      break;
    case "answer":
      if (att && typeof msg.sdp === "string") deliver(att, "answer", msg);
      break;
    case "bye":
      if (att) onBye(att, cleanText(typeof msg.reason === "string" ? msg.reason : "", RELAYED_MAX));
      break;
    case "error":
      onServerError(att, msg);
      break;
    case "online":
      if (msg.device_id === deviceId) onCameraOnline();
      break;
    default:
      break; // newer servers may add types; they are not for us
  }
}

function onBye(att, reason) {
  att.sessionLive = false;  // the server has forgotten it: no bye back
  if (att.firstFrameAt !== null) {
    // Byes are not signed and the server is not trusted: for a session that
    // shows video, "camera went offline" (or any reason) is advice. The
    // media plane decides; if the camera is really gone, the frames stop.
    att.advice = reason || "session ended";
    peercam.lastAdvice = att.advice;
    console.info("peercam: the server ended session " + att.sessionId
      + " (" + att.advice + "); keeping it while video flows");
    render();
    return;
  }
  fail(att, byeError(att, reason));
}

function byeError(att, reason) {
  // The reason is relayed by the untrusted server: shown as text, and a
  // refusal is only ever a reason to stop or slow down, never to trust more.
  if (att.phase === "pair") {
    return new ViewerError("The camera refused to pair with this browser"
      + (reason ? " (" + reason + ")" : "")
      + ". The pairing link may be wrong, used up or expired: ask the camera's owner for "
      + "a new one (peercam pair on the camera) and open it here.",
    "pair-refused", { state: "error", final: true });
  }
  if (/^not authorized/.test(reason)) {
    setPaired(false);
    return new ViewerError(WORDS.notPaired, "not-authorized", { state: "error", final: true });
  }
  if (/^stale/.test(reason)) {
    return new ViewerError(WORDS.stale, "stale", { state: "error", slow: true });
  }
  return new ViewerError(reason
    ? "The camera ended the session (" + reason + ")."
    : "The camera ended the session.");
}

function sendWatch() {
  if (!watching || watchRefused || !deviceId || !sig.ready || !sig.ws
      || sig.ws.readyState !== WebSocket.OPEN) return;
  sig.ws.send(JSON.stringify({ type: "watch", device_id: deviceId }));
  peercam.watchesSent += 1;
}

function onCameraOnline() {
  // The server says the camera registered. It is not trusted: this only
  // decides when to ask, and the answer is checked as always.
  if (!watching) return;
  watching = false;
  if (stopped || pending || peercam.gaveUp || !retryTimer) return;
  clearTimeout(retryTimer);
  retryTimer = 0;
  peercam.onlineHints += 1;
  startSession();
}

function onServerError(att, msg) {
  const code = cleanText(typeof msg.code === "string" ? msg.code : "", 40);
  if ((msg.code === "bad-message" || msg.code === "rate-limited")
      && /\bwatch\b/.test(String(msg.message || ""))) {
    // An older server does not know "watch" (or we hit its limit): that is
    // about the hint, never about a session; the retry timer goes on.
    watchRefused = msg.code === "bad-message";
    return;
  }
  const text = (Object.hasOwn(ERROR_WORDS, code) && ERROR_WORDS[code])
    || "The server reported a problem" + (code ? " (" + code + ")." : ".");
  // A rendezvous older than trickle ICE refuses "candidate" as an unknown
  // type. This session's offer went without candidates; the next ones gather
  // first and send one complete offer, as before (protocol.md).
  const p = pending;
  const t = p && p.trickle;
  if (msg.code === "bad-message" && t && t.enabled && t.seq > 0
      && /candidate/.test(String(msg.message || "")) && !trickleRefused) {
    trickleRefused = true;
    console.warn("peercam: the server refused a trickled candidate; sending complete offers");
  }
  // Errors without a session_id answer this connection's last message: the
  // one session still negotiating. An "unknown-session" names its session
  // in the message (a late candidate or bye of one the server ended).
  let target = att;
  if (!target && p && !p.answered) {
    const aboutOther = msg.code === "unknown-session"
      && !String(msg.message || "").includes(p.sessionId);
    if (!aboutOther) target = p;
  }
  if (target && target.firstFrameAt === null) {
    if (att) att.sessionLive = false;
    fail(target, new ViewerError(text, code));
  } else {
    // About a session that shows video, or about nothing we wait for: the
    // stream is fine, so it is only noted.
    peercam.lastError = text;
    render();
  }
}

// ---- WebRTC --------------------------------------------------------------

function createPeer(att) {
  // Made before the server's ICE servers are known (useIceServers sets them
  // before the offer is applied, which is when gathering starts). Always
  // explicit: an empty list means host candidates only (protocol.md).
  const pc = new RTCPeerConnection({ iceServers: [] });
  att.pc = pc;
  const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
  preferH264(transceiver);
  // Before createOffer: the SCTP m-line must be in the offer we sign.
  openPtzChannel(att, pc);
  openQualityChannel(att, pc);
  pc.ontrack = (ev) => attachVideo(att, ev);
  pc.onicecandidate = (ev) => onLocalCandidate(att, ev.candidate);
  pc.onicegatheringstatechange = () => onGatheringState(att, pc);
  pc.onconnectionstatechange = () => onConnectionState(att);
  pc.oniceconnectionstatechange = () => onIceState(att);
  const stats = setInterval(() => collectStats(att), TIMING.statsMs);
  att.timers.add(stats);
  return pc;
}

function useIceServers(pc, iceServers) {
  // Before setLocalDescription: nothing is gathered yet, so these apply.
  if (!Array.isArray(iceServers) || iceServers.length === 0) return;
  pc.setConfiguration({ ...pc.getConfiguration(), iceServers });
}

function preferH264(transceiver) {
  // The camera sends H.264 passthrough (no re-encode), so offer H.264
  // first; constrained baseline 42e01f with packetization-mode=1 is what
  // every decoder handles. Other codecs stay listed after it.
  if (typeof transceiver.setCodecPreferences !== "function"
      || !window.RTCRtpReceiver || !RTCRtpReceiver.getCapabilities) return;
  const caps = RTCRtpReceiver.getCapabilities("video");
  if (!caps || !caps.codecs) return;
  const rank = (c) => {
    if (c.mimeType.toLowerCase() !== "video/h264") return 3;
    const fmtp = (c.sdpFmtpLine || "").toLowerCase();
    const pm1 = /packetization-mode=1/.test(fmtp);
    if (pm1 && /profile-level-id=42e01f/.test(fmtp)) return 0;
    return pm1 ? 1 : 2;
  };
  const ordered = caps.codecs
    .map((c, i) => ({ c, i }))
    .sort((a, b) => rank(a.c) - rank(b.c) || a.i - b.i)
    .map((x) => x.c);
  try {
    transceiver.setCodecPreferences(ordered);
  } catch (_) {
    // Some browsers refuse certain lists; the default order still works.
  }
}

function iceGatheringDone(att, pc) {
  // Non-trickle fallback: the offer must carry the candidates. If a STUN/TURN
  // server is slow, go with what we have after iceGatherMs.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") finish();
    };
    const finish = () => {
      clearTimer(att, timer);
      pc.removeEventListener("icegatheringstatechange", done);
      resolve();
    };
    const timer = setTimer(att, TIMING.iceGatherMs, finish);
    pc.addEventListener("icegatheringstatechange", done);
  });
}

function attachVideo(att, ev) {
  if (att.closed) return;
  const video = att.video;
  video.srcObject = (ev.streams && ev.streams[0]) || new MediaStream([ev.track]);
  // muted + playsinline autoplay is allowed everywhere; play() covers
  // browsers that do not start a srcObject swap by themselves.
  const p = video.play();
  if (p && p.catch) p.catch(() => {});
  watchFrames(att, video);
  // The camera closing its end (DTLS close_notify: session ended, agent
  // stopped) is the quickest sign the media is gone.
  const transport = ev.receiver && ev.receiver.transport;
  if (transport && "onstatechange" in transport) {
    transport.addEventListener("statechange", () => {
      if (transport.state === "closed") mediaLost(att, "camera closed the connection");
      else if (transport.state === "failed") mediaLost(att, "DTLS failed");
    });
  }
}

function watchFrames(att, video) {
  if (typeof video.requestVideoFrameCallback === "function") {
    // Fires when a decoded frame is handed to the compositor: the closest
    // a page gets to "the user sees video". Stats cover hidden pages.
    const onFrame = (now) => {
      if (att.closed) return;
      att.frameCallbacks = document.visibilityState !== "hidden";
      frameShown(att, now);
      video.requestVideoFrameCallback(onFrame);
    };
    video.requestVideoFrameCallback(onFrame);
    return;
  }
  const once = () => {
    video.removeEventListener("playing", once);
    video.removeEventListener("resize", once);
    frameShown(att, performance.now());
  };
  video.addEventListener("playing", once);
  video.addEventListener("resize", once);
}

function frameShown(att, now) {
  // A new frame of att's video: its first one may promote it, and the gaps
  // between frames on screen (across a swap too) are what the viewer sees.
  if (att.closed) return;
  att.lastFrameAt = Math.max(att.lastFrameAt, now);
  if (att.firstFrameAt === null) onFirstFrame(att);
  if (att === live && isStalled(att)) recovered(att);
  if (att !== live) return;
  if (lastShownAt !== null) {
    peercam.maxFrameGapMs = Math.max(peercam.maxFrameGapMs, Math.round(now - lastShownAt));
  }
  lastShownAt = Math.max(lastShownAt || 0, now);
}

function isStalled(att) {
  // Only a stall can end by itself; a failed or closed connection cannot.
  return att.trouble !== null && att.trouble.startsWith("stall");
}

function onFirstFrame(att) {
  if (att.closed || att.firstFrameAt !== null) return;
  att.firstFrameAt = performance.now();
  att.lastFrameAt = att.firstFrameAt;
  setFigure(att, "ttffMs", Math.round(att.firstFrameAt - att.startedAt));
  mark(att, "firstFrame");
  if (att === pending) promote(att);
  if (deviceId) markSeen(deviceId);
}

function onConnectionState(att) {
  const state = att.pc.connectionState;
  if (state === "connected") {
    mark(att, "connected");
    if (att === shown() && att.firstFrameAt === null && peercam.state !== "error") {
      setState("connected");
    }
  } else if (state === "failed") {
    mediaLost(att, "ICE failed");
  } else if (state === "closed") {
    mediaLost(att, "connection closed");
  }
}

function onIceState(att) {
  const state = att.pc.iceConnectionState;
  if (state === "connected" || state === "completed") mark(att, "iceConnected");
  if (state === "failed") mediaLost(att, "ICE failed");
  else if (state === "closed") mediaLost(att, "connection closed");
  else if ((state === "connected" || state === "completed")
    && att.pc.connectionState === undefined && att === shown()) {
    setState("connected");  // browsers without connectionState report progress only here
  }
}

function mediaLost(att, cause) {
  // The media plane's verdict: this session's media is gone for good.
  if (att.closed) return;
  if (att === live) {
    heal(att, cause);
  } else {
    fail(att, new ViewerError(cause === "ICE failed"
      ? "The network path to the camera failed."
      : "The connection to the camera closed (" + cause + ")."));
  }
}

function watchdog() {
  // A live session with no new frame for stallMs (longer while the page is
  // hidden: frame callbacks stop and only stats tell) is stalled.
  const att = live;
  if (!att || att.closed || att.trouble !== null || peercam.gaveUp) return;
  const limit = document.visibilityState === "hidden" ? TIMING.stallHiddenMs : TIMING.stallMs;
  if (performance.now() - att.lastFrameAt > limit) {
    heal(att, "stall " + (limit / 1000).toFixed(1) + " s");
  }
}

// ---- statistics ----------------------------------------------------------

async function collectStats(att) {
  if (att.closed || !att.pc) return;
  let report;
  try {
    report = await att.pc.getStats();
  } catch (_) {
    return;
  }
  if (att.closed) return;
  const inbound = findInboundVideo(report);
  const pair = findSelectedPair(report);
  applyPair(att, report, pair);
  if (inbound) applyInbound(att, report, inbound);
  if (att === shown()) {
    Object.assign(peercam, att.figures);
    render();
  }
}

function findInboundVideo(report) {
  let found = null;
  report.forEach((s) => {
    if (s.type === "inbound-rtp" && (s.kind || s.mediaType) === "video") found = s;
  });
  return found;
}

function findSelectedPair(report) {
  // Spec way first (transport.selectedCandidatePairId), then Firefox's
  // "selected", then the nominated pair that succeeded.
  let pair = null;
  const pairs = [];
  report.forEach((s) => {
    if (s.type === "transport" && s.selectedCandidatePairId && !pair) {
      pair = report.get(s.selectedCandidatePairId) || null;
    } else if (s.type === "candidate-pair") {
      pairs.push(s);
    }
  });
  return pair
    || pairs.find((p) => p.selected)
    || pairs.find((p) => p.nominated && p.state === "succeeded")
    || null;
}

function applyPair(att, report, pair) {
  const f = att.figures;
  const local = pair && report.get(pair.localCandidateId);
  const remote = pair && report.get(pair.remoteCandidateId);
  f.localCandidateType = (local && local.candidateType) || null;
  f.remoteCandidateType = (remote && remote.candidateType) || null;
  f.remoteAddress = (remote && (remote.address || remote.ip)) || null;
  f.rttMs = pair && typeof pair.currentRoundTripTime === "number"
    ? Math.round(pair.currentRoundTripTime * 1000 * 10) / 10 : null;
  att.extra.protocol = (local && (local.relayProtocol || local.protocol)) || null;
}

function applyInbound(att, report, s) {
  const f = att.figures;
  const now = s.timestamp;
  const frames = s.framesDecoded || 0;
  const bytes = s.bytesReceived || 0;
  const prev = att.prev;
  if (prev && now > prev.now) {
    const dt = now - prev.now; // ms
    f.bitrateKbps = Math.round(((bytes - prev.bytes) * 8) / dt); // bits/ms = kbit/s
    if (typeof s.framesPerSecond !== "number") {
      f.fps = Math.round(((frames - prev.frames) * 1000 / dt) * 10) / 10;
    }
  }
  if (typeof s.framesPerSecond === "number") f.fps = s.framesPerSecond;
  if (frames > f.framesDecoded
      && (!att.frameCallbacks || document.visibilityState === "hidden")) {
    // Only where frame callbacks do not run (no API, hidden page): this
    // sample is up to statsMs late, the callbacks are not.
    att.lastFrameAt = performance.now();
    if (att === live && isStalled(att)) recovered(att);
  }
  f.framesDecoded = frames;
  // Glass-to-glass latency is not observable here; what the network and the
  // jitter buffer add is: half the round trip plus the buffer's average hold.
  const jbDelay = s.jitterBufferDelay || 0;
  const jbCount = s.jitterBufferEmittedCount || 0;
  if (prev && jbCount > prev.jbCount && f.rttMs !== null) {
    const hold = ((jbDelay - prev.jbDelay) / (jbCount - prev.jbCount)) * 1000;
    f.latencyMs = Math.round(f.rttMs / 2 + hold);
  }
  att.prev = { now, frames, bytes, jbDelay, jbCount };
  const w = s.frameWidth || att.video.videoWidth;
  const h = s.frameHeight || att.video.videoHeight;
  att.extra.resolution = w && h ? w + "×" + h : null;
  const codec = s.codecId && report.get(s.codecId);
  att.extra.codec = codec ? codec.mimeType.replace(/^video\//, "") : null;
  // Fallback first-frame signal, e.g. when the tab is hidden and no frame
  // callbacks run; a decoded frame still proves the stream works.
  if (frames > 0) onFirstFrame(att);
}

// ---- UI ------------------------------------------------------------------

const ROWS = [
  ["state", "State"],
  ["path", "Path"],
  ["rtt", "RTT"],
  ["latency", "Latency"],
  ["fps", "Frame rate"],
  ["bitrate", "Bitrate"],
  ["frames", "Decoded"],
  ["resolution", "Size"],
  ["codec", "Codec"],
  ["ttff", "First frame"],
  ["reconnects", "Reconnects"],
  ["cause", "Last cause"],
  ["gap", "Longest gap"],
  ["signaling", "Signaling"],
  ["device", "Device"],
  ["error", "Last error"],
];

function setState(state) {
  peercam.state = state;
  render();
}

function stateText() {
  const s = peercam.state;
  if (s === "reconnecting" && retryTimer) {
    const secs = Math.max(0, (retryAt - performance.now()) / 1000);
    return "reconnecting in " + secs.toFixed(1) + " s";
  }
  return s;
}

function overlayValues() {
  const p = peercam;
  const dash = "–";
  const path = p.localCandidateType
    ? p.localCandidateType + " ↔ " + (p.remoteCandidateType || "?")
      + (extra.protocol ? " (" + extra.protocol + ")" : "")
    : dash;
  return {
    state: stateText(),
    path,
    rtt: p.rttMs === null ? dash : p.rttMs + " ms",
    latency: p.latencyMs === null ? dash : "~" + p.latencyMs + " ms (RTT/2 + jitter buffer)",
    fps: p.fps === null ? dash : String(p.fps),
    bitrate: p.bitrateKbps === null ? dash : p.bitrateKbps + " kbit/s",
    frames: String(p.framesDecoded),
    resolution: extra.resolution || dash,
    codec: extra.codec || dash,
    ttff: p.ttffMs === null ? dash : p.ttffMs + " ms",
    reconnects: String(p.reconnects),
    cause: p.lastCause || dash,
    gap: p.maxFrameGapMs ? p.maxFrameGapMs + " ms" : dash,
    signaling: signalingText(),
    device: deviceId || dash,
    error: p.lastError || dash,
  };
}

function signalingText() {
  const s = peercam.signaling;
  if (s === "reconnecting" && sig.timer) {
    const secs = Math.max(0, (sig.retryAt - performance.now()) / 1000);
    return (live ? "lost (media kept), " : "lost, ") + "retry in " + secs.toFixed(1) + " s";
  }
  return s;
}

function noticeText() {
  const s = peercam.state;
  if (s === "connected" && live) return null;
  if (s === "connected") return "Connected. Waiting for video…";
  if (s === "connecting") return "Connecting to the camera…";
  if (s === "reconnecting") {
    // With the last picture still up, a short line; without it, why and when.
    if (live && pending) return "Reconnecting (" + (peercam.lastCause || "…") + ")…";
    const why = peercam.lastError ? peercam.lastError + " " : "";
    return why + retryText();
  }
  if (s === "error") {
    // An error that is being retried says so; a final one (bad link, no
    // secure context) does not.
    const why = peercam.lastError || "Something went wrong.";
    return pending || retryTimer ? why + " " + retryText() : why;
  }
  return null;
}

function retryText() {
  if (!retryTimer) return "Trying again…";
  const secs = Math.ceil(Math.max(0, retryAt - performance.now()) / 1000);
  return secs > 1 ? "Trying again in " + secs + " s." : "Trying again…";
}

function render() {
  if (!ui) return;
  const text = noticeText();
  ui.notice.hidden = text === null;
  if (text !== null) ui.notice.textContent = text;
  ui.notice.classList.toggle("error", peercam.state === "error");
  renderBadge(peercam, Boolean(deviceId));
  if (ui.overlay.hidden) return;
  const values = overlayValues();
  for (const [key] of ROWS) ui.cells[key].textContent = values[key];
}

function buildOverlay() {
  const cells = {};
  for (const [key, label] of ROWS) {
    const dt = document.createElement("dt");
    dt.textContent = label;
    const dd = document.createElement("dd");
    dd.dataset.key = key;
    ui.stats.append(dt, dd);
    cells[key] = dd;
  }
  return cells;
}

function toggleOverlay() {
  ui.overlay.hidden = !ui.overlay.hidden;
  render();
}

function showHome(message) {
  // No camera chosen (or a bad link): the list of cameras.
  ui.notice.hidden = true;
  ui.controls.hidden = true;
  ui.listError.textContent = message || "";
  showList(true);
  render();
}

function watch(id, secret) {
  // From the list: open a camera (and pair with it, given a pairing secret).
  // Kept in the fragment, as a link would be: hashchange starts watching.
  location.hash = "device=" + id + (secret ? "&pair=" + encodeURIComponent(secret) : "");
}

function cameraName() {
  const camera = cameras().find((c) => c.id === deviceId);
  return camera ? camera.name : "camera";
}

// ---- page wiring ---------------------------------------------------------

function stopAll() {
  // Byes for the live sessions first, then the socket goes.
  clearTimeout(retryTimer);
  retryTimer = 0;
  for (const att of [pending, live]) if (att) teardown(att);
  pending = null;
  live = null;
  sigClose();
}

function readFragment() {
  let params;
  let damaged = "";
  try {
    params = linkParams(location.hash);
  } catch (err) {
    if (!(err instanceof LinkError)) throw err;
    params = new URLSearchParams();
    damaged = err.message;
  }
  const raw = params.get("device");
  const secret = params.get("pair");
  stopPlayer();  // a clip under way is saved first; the zoom starts over
  stopAll();
  resetStats();
  // A different camera (or none): do not leave the last one's picture up.
  ui.video.srcObject = null;
  failures = 0;
  lastShownAt = null;
  Object.assign(peercam, {
    reconnects: 0, lastCause: null, lastAdvice: null, sessions: 0, maxFrameGapMs: 0,
    signalingReconnects: 0, watchesSent: 0, onlineHints: 0,
  });
  watching = false;
  sig.everReady = false;
  peercam.lastError = null;
  peercam.state = "idle";  // a refusal shown for the last link does not carry over
  peercam.paired = null;
  pairSecret = null;
  if (damaged) {
    deviceId = null;
    peercam.lastError = damaged;
    setState("error");
    showHome(peercam.lastError);
    return;
  }
  if (!raw) {
    deviceId = null;
    setState("idle");
    showHome("");
    return;
  }
  const id = normalizeDeviceId(raw);
  if (!id) {
    deviceId = null;
    peercam.lastError = "The link does not hold a valid device ID.";
    setState("error");
    showHome(peercam.lastError);
    return;
  }
  deviceId = id;
  showList(false);
  ui.controls.hidden = false;
  remember(id);
  peercam.paired = storedPaired(id) ? true : null;
  if (secret !== null) {
    if (!PAIR_RE.test(secret)) {
      peercam.lastError = WORDS.badSecret;
      setState("error");
      return;
    }
    pairSecret = secret;
  }
  start();
}

function onKey(ev) {
  if (ev.target.closest("input, textarea") || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (!deviceId) return;
  if (ev.key === "f" || ev.key === "F") {
    toggleFullscreen();
    return;
  }
  if (ptzKeyDown(ev)) return;
  // With a pan/tilt head, S is "tilt down" (WASD); I always toggles the overlay.
  if (ev.key === "i" || ev.key === "I" || ev.key === "s" || ev.key === "S") toggleOverlay();
}

function onPageHide() {
  // Sends bye for a live session, so the camera frees it at once.
  stopped = true;
  stopAll();
  peercam.state = "closed";
}

function onPageShow(ev) {
  // Back from the back/forward cache: the old sessions are gone, start over.
  if (!ev.persisted) return;
  stopped = false;
  readFragment();
}

function onVisibility() {
  // Hidden, frame callbacks stop: nothing is on screen, so no gap counts,
  // and only stats tell progress. Visible again: a fresh stall window while
  // the callbacks start again.
  lastShownAt = null;
  if (document.visibilityState === "visible" && live && live.trouble === null) {
    live.lastFrameAt = Math.max(live.lastFrameAt, performance.now());
  }
}

function onOnline() {
  // The network is back: do not sit out the rest of a backoff, and do not
  // trust a socket that lived through the outage (its TCP connection may be
  // stuck retransmitting to a server that already closed it).
  if (stopped || !deviceId || peercam.gaveUp) return;
  if (sig.ws) {
    console.info("peercam: the network is back; opening a new signaling socket");
    sig.ready = false;
    sig.failures = 0;
    sigDropped();
  }
  if (sig.timer) {
    sig.failures = 0;
    sigConnect();
  }
  if (retryTimer) {
    failures = 0;
    startSession();
  }
}

function registerServiceWorker() {
  // Installable app: the worker caches the page's own files (never video,
  // keys or signaling) so the home-screen icon opens even offline.
  if (!("serviceWorker" in navigator)) return;
  // The page's policy takes script URLs only through its one Trusted Types
  // policy, and that policy knows one URL: the worker's.
  const script = window.trustedTypes
    ? window.trustedTypes.createPolicy("peercam", {
      createScriptURL: (url) => {
        if (url !== "sw.js") throw new TypeError("not the app's worker: " + url);
        return url;
      },
    }).createScriptURL("sw.js")
    : "sw.js";
  navigator.serviceWorker.register(script).then(() => {
    peercam.serviceWorker = true;
  }, (err) => {
    peercam.serviceWorker = false;
    console.info("peercam: no service worker:", (err && err.message) || err);
  });
}

function init() {
  const $ = (id) => document.getElementById(id);
  ui = {
    video: $("video"), notice: $("notice"), overlay: $("overlay"), stats: $("stats"),
    controls: $("controls"), listError: $("list-error"),
  };
  ui.cells = buildOverlay();
  if (!window.RTCPeerConnection || !window.WebSocket || !window.crypto) {
    peercam.lastError = "This browser cannot play WebRTC video.";
    setState("error");
    return;
  }
  // crypto.subtle exists only in a secure context; without it there is no
  // viewer key, and plain http would let anyone on the path swap this page.
  if (!window.isSecureContext || !crypto.subtle || typeof BigInt !== "function") {
    peercam.lastError = WORDS.insecure;
    setState("error");
    return;
  }
  viewerKey().catch(() => { /* reported by the session that needs it */ });
  registerServiceWorker();
  ui.stage = $("stage");
  initList(watch);
  initPlayer({
    stage: ui.stage, zoomBox: $("zoom"), video: () => ui.video, name: cameraName,
    onTap: () => {
      if (deviceId) toggleOverlay();
    },
  });
  $("btn-back").addEventListener("click", () => { location.hash = ""; });
  document.addEventListener("keydown", onKey);
  initControls({ live: () => live, pending: () => pending });
  window.addEventListener("hashchange", readFragment);
  window.addEventListener("pagehide", onPageHide);
  window.addEventListener("pageshow", onPageShow);
  window.addEventListener("online", onOnline);
  document.addEventListener("visibilitychange", onVisibility);
  // Refresh the overlay's countdown even while no stats are flowing.
  setInterval(render, TIMING.statsMs);
  setInterval(watchdog, TIMING.watchdogMs);
  readFragment();
}

init();
