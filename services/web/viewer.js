"use strict";

// peercam web viewer.
//
// One attempt = one WebSocket to the rendezvous (docs/protocol.md) + one
// receive-only RTCPeerConnection + one session_id. Anything that goes wrong
// tears the whole attempt down and a new one starts after a capped,
// fully-jittered exponential backoff: a fresh socket also brings fresh
// ice_servers (TURN credentials are short-lived), and there is no half-dead
// state to reason about.
//
// The only global is window.peercam, a live view of the state for tests.

(() => {
  // Timers are named here so they can be read and tuned in one place.
  const TIMING = {
    helloMs: 10000,          // server must greet us this soon after the socket opens
    iceGatherMs: 2000,       // non-trickle: send what we have after this long
    answerMs: 20000,         // camera must answer (server also times out: error "timeout")
    firstFrameMs: 10000,     // after the answer, a frame must be decoded this soon
    stallMs: 10000,          // no new frame for this long while connected = dead stream
    iceDisconnectedMs: 4000, // ICE "disconnected" often heals; give it this long
    stableMs: 10000,         // video this long resets the backoff
    backoffBaseMs: 500,
    backoffCapMs: 10000,
    statsMs: 1000,
  };

  // Device IDs: Crockford base32, 26 data characters + 1 check symbol (mod 37),
  // as in services/signaling.py. Checked here so a typo is shown at once
  // instead of looping on "bad-message" from the server.
  const CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
  const CHECK_SYMBOLS = CROCKFORD + "*~$=U";
  const DEVICE_RE = /^[0-9A-HJKMNP-TV-Z]{26}[0-9A-HJKMNP-TV-Z*~$=U]$/;
  const SESSION_ALPHABET =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-";

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

  // A thrown value that means "this attempt was torn down; stop quietly".
  const SUPERSEDED = Object.freeze({ superseded: true });

  const peercam = {
    state: "idle",
    ttffMs: null,
    framesDecoded: 0,
    localCandidateType: null,
    remoteCandidateType: null,
    rttMs: null,
    fps: null,
    bitrateKbps: null,
    reconnects: 0,
    sessionId: null,
    lastError: null,
    timeline: {},            // ms from startedAt: offer, answer, connected, firstFrame
  };
  window.peercam = peercam;

  // Where the time to first frame goes, for the overlay-less benchmark.
  function mark(att, name) {
    if (att.startedAt !== null && !(name in peercam.timeline)) {
      peercam.timeline[name] = Math.round(performance.now() - att.startedAt);
    }
  }

  let ui = null;          // DOM elements, found once
  let deviceId = null;    // normalized ID being watched
  let current = null;     // the live attempt, or null
  let attempts = 0;       // attempts for this device, to count reconnects
  let failures = 0;       // consecutive failures, drives the backoff
  let retryTimer = 0;
  let retryAt = 0;
  let stopped = false;    // page hidden for good (pagehide)
  let extra = {};         // overlay-only details: path, codec, resolution

  // ---- small helpers -------------------------------------------------------

  class ViewerError extends Error {
    constructor(message, code) {
      super(message);
      this.code = code || null;
    }
  }

  function normalizeDeviceId(text) {
    const raw = String(text || "").replace(/[\s-]/g, "").toUpperCase();
    if (!DEVICE_RE.test(raw)) return null;
    // The check symbol is the 130-bit value mod 37; fold it in digit by digit
    // so no BigInt is needed.
    let mod = 0;
    for (const ch of raw.slice(0, 26)) mod = (mod * 32 + CROCKFORD.indexOf(ch)) % 37;
    if (CHECK_SYMBOLS[mod] !== raw[26]) return null;
    return raw.match(/.{1,4}/g).join("-");
  }

  function newSessionId() {
    // 24 symbols of a 64-symbol alphabet = 144 random bits; 256 % 64 == 0,
    // so masking the byte keeps the choice unbiased.
    const bytes = crypto.getRandomValues(new Uint8Array(24));
    return Array.from(bytes, (b) => SESSION_ALPHABET[b & 63]).join("");
  }

  function fragmentParams() {
    return new URLSearchParams(location.hash.replace(/^#/, ""));
  }

  function signalingUrl() {
    // Resolved against the page, so /ws/viewer when served at "/", and it
    // still works behind a reverse proxy that mounts the viewer under a path.
    const url = new URL("ws/viewer", location.href);
    url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
    url.hash = "";
    url.search = "";
    return url.href;
  }

  function backoffDelay() {
    // Full jitter (uniform in [0, min(cap, base * 2^n)]): many viewers that
    // lost the same server do not come back in lockstep.
    const ceiling = Math.min(TIMING.backoffCapMs, TIMING.backoffBaseMs * 2 ** Math.min(failures, 20));
    failures += 1;
    return Math.random() * ceiling;
  }

  function setTimer(att, ms, fn) {
    // One set per attempt; clearTimeout also clears intervals (HTML spec:
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

  // ---- attempt lifecycle ---------------------------------------------------

  function newAttempt() {
    return {
      sessionId: newSessionId(),
      ws: null,
      pc: null,
      closed: false,
      helloSeen: false,
      sessionLive: false,    // offer sent and neither bye nor error came back
      answered: false,
      startedAt: null,       // performance.now() just before new RTCPeerConnection
      firstFrameAt: null,
      timers: new Set(),
      waiters: new Map(),    // message type -> {resolve, reject, timer}
      disconnectTimer: 0,
      noFrameTimer: 0,
      prev: null,            // previous stats sample, for rates
      lastProgressAt: 0,
    };
  }

  function start() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    if (stopped || !deviceId) return;
    if (current) teardown(current);
    attempts += 1;
    if (attempts > 1) peercam.reconnects += 1;
    const att = newAttempt();
    current = att;
    resetStats();
    peercam.sessionId = att.sessionId;
    setState(attempts > 1 ? "reconnecting" : "connecting");
    connect(att).catch((err) => fail(att, err));
  }

  async function connect(att) {
    const hello = await openSignaling(att);
    // TTFF is measured from here: just before the peer connection exists.
    att.startedAt = performance.now();
    const pc = createPeer(att, hello.ice_servers);
    await pc.setLocalDescription(await pc.createOffer());
    alive(att);
    await iceGatheringDone(att, pc);
    alive(att);
    mark(att, "offer");
    send(att, {
      type: "offer",
      device_id: deviceId,
      session_id: att.sessionId,
      sdp: pc.localDescription.sdp,
    });
    att.sessionLive = true;
    const answer = await expect(att, "answer", TIMING.answerMs,
      "The camera did not answer in time.");
    mark(att, "answer");
    await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
    alive(att);
    att.answered = true;
    att.noFrameTimer = setTimer(att, TIMING.firstFrameMs, () => {
      if (att.firstFrameAt === null) {
        fail(att, new ViewerError("No video arrived from the camera."));
      }
    });
  }

  function alive(att) {
    if (att.closed) throw SUPERSEDED;
  }

  function fail(att, err) {
    if (att.closed || err === SUPERSEDED) return;
    const message = err instanceof ViewerError ? err.message
      : "Browser error: " + ((err && err.message) || String(err));
    peercam.lastError = message;
    teardown(att);
    if (current === att) current = null;
    scheduleRetry();
  }

  function resetStats() {
    // Figures describe the current attempt only; none carry over.
    Object.assign(peercam, {
      ttffMs: null, framesDecoded: 0, localCandidateType: null, remoteCandidateType: null,
      rttMs: null, fps: null, bitrateKbps: null, sessionId: null, timeline: {},
    });
    extra = {};
  }

  function scheduleRetry() {
    if (stopped) return;
    const delay = backoffDelay();
    retryAt = performance.now() + delay;
    setState("reconnecting");
    retryTimer = setTimeout(start, delay);
  }

  function teardown(att) {
    if (att.closed) return;
    att.closed = true;
    for (const id of att.timers) clearTimeout(id);
    att.timers.clear();
    for (const w of att.waiters.values()) w.reject(SUPERSEDED);
    att.waiters.clear();
    const ws = att.ws;
    if (ws) {
      // Tell the camera at once rather than when it notices the socket went.
      if (att.sessionLive && ws.readyState === WebSocket.OPEN) {
        try {
          ws.send(JSON.stringify({ type: "bye", session_id: att.sessionId }));
        } catch (_) { /* the socket is going away anyway */ }
      }
      ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
      ws.close(1000);
    }
    const pc = att.pc;
    if (pc) {
      pc.ontrack = pc.onconnectionstatechange = pc.oniceconnectionstatechange = null;
      pc.onicegatheringstatechange = pc.onicecandidate = null;
      pc.close();
    }
  }

  // ---- signaling -----------------------------------------------------------

  function openSignaling(att) {
    const ws = new WebSocket(signalingUrl());
    att.ws = ws;
    ws.onmessage = (ev) => onSignal(att, ev.data);
    ws.onclose = () => fail(att, new ViewerError(att.helloSeen
      ? "Lost the connection to the server."
      : "Cannot reach the server."));
    return expect(att, "hello", TIMING.helloMs, "The server did not respond in time.");
  }

  function expect(att, type, ms, timeoutText) {
    return new Promise((resolve, reject) => {
      const timer = setTimer(att, ms, () => fail(att, new ViewerError(timeoutText)));
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
    if (!att.ws || att.ws.readyState !== WebSocket.OPEN) {
      throw new ViewerError("Lost the connection to the server.");
    }
    att.ws.send(JSON.stringify(msg));
  }

  function onSignal(att, data) {
    if (att.closed || typeof data !== "string") return;
    let msg;
    try {
      msg = JSON.parse(data);
    } catch (_) {
      return; // the server only sends JSON; ignore noise rather than drop video
    }
    if (!msg || typeof msg !== "object") return;
    const ours = msg.session_id === att.sessionId;
    switch (msg.type) {
      case "hello":
        att.helloSeen = true;
        deliver(att, "hello", msg);
        break;
      case "answer":
        if (ours && typeof msg.sdp === "string") deliver(att, "answer", msg);
        break;
      case "bye":
        if (ours) {
          att.sessionLive = false;
          fail(att, new ViewerError(msg.reason
            ? "The camera ended the session (" + msg.reason + ")."
            : "The camera ended the session."));
        }
        break;
      case "error":
        onServerError(att, msg, ours);
        break;
      default:
        break; // newer servers may add types; they are not for us
    }
  }

  function onServerError(att, msg, ours) {
    const text = ERROR_WORDS[msg.code]
      || "The server reported a problem" + (msg.code ? " (" + msg.code + ")." : ".");
    const err = new ViewerError(text, msg.code);
    if (ours) att.sessionLive = false;
    // An error about our session, or any error before the answer, ends the
    // attempt. A stray one while video plays is only noted: the stream is fine.
    if (ours || !att.answered) {
      fail(att, err);
    } else {
      peercam.lastError = text;
      render();
    }
  }

  // ---- WebRTC --------------------------------------------------------------

  function createPeer(att, iceServers) {
    // Always explicit: an empty list means host candidates only (protocol.md).
    const pc = new RTCPeerConnection({ iceServers: Array.isArray(iceServers) ? iceServers : [] });
    att.pc = pc;
    const transceiver = pc.addTransceiver("video", { direction: "recvonly" });
    preferH264(transceiver);
    pc.ontrack = (ev) => attachVideo(att, ev);
    pc.onconnectionstatechange = () => onConnectionState(att);
    pc.oniceconnectionstatechange = () => onIceState(att);
    const stats = setInterval(() => collectStats(att), TIMING.statsMs);
    att.timers.add(stats);
    return pc;
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
    // Non-trickle ICE: the offer must carry the candidates. If a STUN/TURN
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
    const video = ui.video;
    video.srcObject = (ev.streams && ev.streams[0]) || new MediaStream([ev.track]);
    // muted + playsinline autoplay is allowed everywhere; play() covers
    // browsers that do not start a srcObject swap by themselves.
    const p = video.play();
    if (p && p.catch) p.catch(() => {});
    watchFirstFrame(att, video);
  }

  function watchFirstFrame(att, video) {
    if (typeof video.requestVideoFrameCallback === "function") {
      // Fires when a decoded frame is handed to the compositor: the closest
      // a page gets to "the user sees video".
      video.requestVideoFrameCallback(() => onFirstFrame(att));
      return;
    }
    const once = () => {
      video.removeEventListener("playing", once);
      video.removeEventListener("resize", once);
      onFirstFrame(att);
    };
    video.addEventListener("playing", once);
    video.addEventListener("resize", once);
  }

  function onFirstFrame(att) {
    if (att.closed || att.firstFrameAt !== null) return;
    att.firstFrameAt = performance.now();
    att.lastProgressAt = att.firstFrameAt;
    peercam.ttffMs = Math.round(att.firstFrameAt - att.startedAt);
    mark(att, "firstFrame");
    clearTimer(att, att.noFrameTimer);
    setTimer(att, TIMING.stableMs, () => { failures = 0; });
    if (peercam.state !== "connected") setState("connected");
    else render();
  }

  function onConnectionState(att) {
    const state = att.pc.connectionState;
    if (state === "connected") {
      mark(att, "connected");
      clearTimer(att, att.disconnectTimer);
      att.disconnectTimer = 0;
      setState("connected");
    } else if (state === "disconnected") {
      armDisconnect(att);
    } else if (state === "failed") {
      fail(att, new ViewerError("The network path to the camera failed."));
    } else if (state === "closed") {
      fail(att, new ViewerError("The connection to the camera closed."));
    }
  }

  function onIceState(att) {
    const state = att.pc.iceConnectionState;
    if (state === "connected" || state === "completed") {
      clearTimer(att, att.disconnectTimer);
      att.disconnectTimer = 0;
      // Browsers without connectionState report progress only here.
      if (att.pc.connectionState === undefined) setState("connected");
    } else if (state === "disconnected") {
      armDisconnect(att);
    } else if (state === "failed") {
      fail(att, new ViewerError("The network path to the camera failed."));
    }
  }

  function armDisconnect(att) {
    // "disconnected" is often a brief loss (Wi-Fi roam); only a long one is fatal.
    if (att.disconnectTimer) return;
    att.disconnectTimer = setTimer(att, TIMING.iceDisconnectedMs, () => {
      fail(att, new ViewerError("The connection to the camera dropped."));
    });
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
    applyPair(report, pair);
    if (inbound) applyInbound(att, report, inbound);
    checkProgress(att);
    render();
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

  function applyPair(report, pair) {
    const local = pair && report.get(pair.localCandidateId);
    const remote = pair && report.get(pair.remoteCandidateId);
    peercam.localCandidateType = (local && local.candidateType) || null;
    peercam.remoteCandidateType = (remote && remote.candidateType) || null;
    peercam.rttMs = pair && typeof pair.currentRoundTripTime === "number"
      ? Math.round(pair.currentRoundTripTime * 1000 * 10) / 10 : null;
    extra.protocol = (local && (local.relayProtocol || local.protocol)) || null;
  }

  function applyInbound(att, report, s) {
    const now = s.timestamp;
    const frames = s.framesDecoded || 0;
    const bytes = s.bytesReceived || 0;
    const prev = att.prev;
    if (prev && now > prev.now) {
      const dt = now - prev.now; // ms
      peercam.bitrateKbps = Math.round(((bytes - prev.bytes) * 8) / dt); // bits/ms = kbit/s
      if (typeof s.framesPerSecond !== "number") {
        peercam.fps = Math.round(((frames - prev.frames) * 1000 / dt) * 10) / 10;
      }
    }
    if (typeof s.framesPerSecond === "number") peercam.fps = s.framesPerSecond;
    if (frames > peercam.framesDecoded) att.lastProgressAt = performance.now();
    peercam.framesDecoded = frames;
    att.prev = { now, frames, bytes };
    const w = s.frameWidth || ui.video.videoWidth;
    const h = s.frameHeight || ui.video.videoHeight;
    extra.resolution = w && h ? w + "×" + h : null;
    const codec = s.codecId && report.get(s.codecId);
    extra.codec = codec ? codec.mimeType.replace(/^video\//, "") : null;
    // Fallback first-frame signal, e.g. when the tab is hidden and no frame
    // callbacks run; a decoded frame still proves the stream works.
    if (frames > 0) onFirstFrame(att);
  }

  function checkProgress(att) {
    if (att.firstFrameAt === null) return;
    if (performance.now() - att.lastProgressAt > TIMING.stallMs) {
      fail(att, new ViewerError("Video stopped arriving from the camera."));
    }
  }

  // ---- UI ------------------------------------------------------------------

  const ROWS = [
    ["state", "State"],
    ["path", "Path"],
    ["rtt", "RTT"],
    ["fps", "Frame rate"],
    ["bitrate", "Bitrate"],
    ["frames", "Decoded"],
    ["resolution", "Size"],
    ["codec", "Codec"],
    ["ttff", "First frame"],
    ["reconnects", "Reconnects"],
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
      fps: p.fps === null ? dash : String(p.fps),
      bitrate: p.bitrateKbps === null ? dash : p.bitrateKbps + " kbit/s",
      frames: String(p.framesDecoded),
      resolution: extra.resolution || dash,
      codec: extra.codec || dash,
      ttff: p.ttffMs === null ? dash : p.ttffMs + " ms",
      reconnects: String(p.reconnects),
      device: deviceId || dash,
      error: p.lastError || dash,
    };
  }

  function noticeText() {
    const s = peercam.state;
    const att = current;
    if (s === "connected" && att && att.firstFrameAt !== null) return null;
    if (s === "connected") return "Connected. Waiting for video…";
    if (s === "connecting") return "Connecting to the camera…";
    if (s === "reconnecting") {
      const why = peercam.lastError ? peercam.lastError + " " : "";
      if (!retryTimer) return why + "Trying again…";
      const secs = Math.ceil(Math.max(0, retryAt - performance.now()) / 1000);
      return why + (secs > 1 ? "Trying again in " + secs + " s." : "Trying again…");
    }
    if (s === "error") return peercam.lastError || "Something went wrong.";
    return null;
  }

  function render() {
    if (!ui) return;
    const text = noticeText();
    ui.notice.hidden = text === null;
    if (text !== null) ui.notice.textContent = text;
    ui.notice.classList.toggle("error", peercam.state === "error");
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

  function showPicker(message) {
    ui.picker.hidden = false;
    ui.notice.hidden = true;
    ui.pickerError.textContent = message || "";
    ui.input.focus();
  }

  function onPick(ev) {
    ev.preventDefault();
    const id = normalizeDeviceId(ui.input.value);
    if (!id) {
      ui.pickerError.textContent =
        "That is not a device ID: 27 characters (0–9, A–Z), as printed on the camera.";
      return;
    }
    // Keep every other fragment key (a pairing secret, for one).
    const params = fragmentParams();
    params.set("device", id);
    location.hash = params.toString(); // hashchange starts watching
  }

  // ---- page wiring ---------------------------------------------------------

  function stopAll() {
    clearTimeout(retryTimer);
    retryTimer = 0;
    if (current) teardown(current);
    current = null;
  }

  function readFragment() {
    const raw = fragmentParams().get("device");
    stopAll();
    resetStats();
    // A different camera (or none): do not leave the last one's picture up.
    ui.video.srcObject = null;
    attempts = 0;
    failures = 0;
    peercam.reconnects = 0;
    peercam.lastError = null;
    if (!raw) {
      deviceId = null;
      setState("idle");
      showPicker("");
      return;
    }
    const id = normalizeDeviceId(raw);
    if (!id) {
      deviceId = null;
      peercam.lastError = "The link does not hold a valid device ID.";
      setState("error");
      ui.input.value = raw;
      showPicker(peercam.lastError);
      return;
    }
    deviceId = id;
    ui.picker.hidden = true;
    start();
  }

  function onKey(ev) {
    if (ev.target === ui.input || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    if (ev.key === "s" || ev.key === "S") toggleOverlay();
  }

  function onStageClick(ev) {
    if (ui.picker.contains(ev.target)) return;
    toggleOverlay();
  }

  function onPageHide() {
    // Sends bye for a live session, so the camera frees it at once.
    stopped = true;
    stopAll();
    peercam.state = "closed";
  }

  function onPageShow(ev) {
    // Back from the back/forward cache: the old attempt is gone, start over.
    if (!ev.persisted) return;
    stopped = false;
    readFragment();
  }

  function onOnline() {
    // The network is back: do not sit out the rest of a long backoff.
    if (retryTimer && !stopped) {
      failures = 0;
      start();
    }
  }

  function init() {
    const $ = (id) => document.getElementById(id);
    ui = {
      video: $("video"), notice: $("notice"), overlay: $("overlay"), stats: $("stats"),
      picker: $("picker"), input: $("device-input"), pickerError: $("picker-error"),
    };
    ui.cells = buildOverlay();
    if (!window.RTCPeerConnection || !window.WebSocket || !window.crypto) {
      peercam.lastError = "This browser cannot play WebRTC video.";
      setState("error");
      return;
    }
    ui.picker.addEventListener("submit", onPick);
    ui.stage = $("stage");
    ui.stage.addEventListener("click", onStageClick);
    document.addEventListener("keydown", onKey);
    window.addEventListener("hashchange", readFragment);
    window.addEventListener("pagehide", onPageHide);
    window.addEventListener("pageshow", onPageShow);
    window.addEventListener("online", onOnline);
    // Refresh the overlay's countdown even while no stats are flowing.
    setInterval(render, TIMING.statsMs);
    readFragment();
  }

  init();
})();
