// camera/stamp.py's reader, ported to the page: bench/latency.py hands this
// arrow function to Playwright's page.evaluate(). On every frame the <video>
// presents (requestVideoFrameCallback) it draws the stamp's corner to a canvas,
// reads the 10 x 8 block code and records Date.now() - capture_ms, with the
// frame's receive and presentation times from the callback's metadata.
//
// Same algorithm as camera/stamp.py: the centre 8 x 8 of each 16 x 16 block,
// threshold 128 with a margin of 40 (video-range luma), CRC-16/CCITT-FALSE over
// 40 bits capture_ms mod 2**40 and 24 bits frame number. The browser has turned
// video-range YUV into full-range RGB; the stamp's chroma is neutral grey, so
// R = G = B and luma comes back as 16 + 219 * rgb / 255 whatever the matrix.
(selector) => {
  const BLOCK = 16, COLUMNS = 10, ROWS = 8;
  const WIDTH = BLOCK * COLUMNS, HEIGHT = BLOCK * ROWS;
  const THRESHOLD = 128, MARGIN = 40;
  const PERIOD = 2 ** 40;

  const table = new Uint16Array(256);
  for (let byte = 0; byte < 256; byte++) {
    let crc = byte << 8;
    for (let i = 0; i < 8; i++) crc = (crc & 0x8000) ? ((crc << 1) ^ 0x1021) : (crc << 1);
    table[byte] = crc & 0xffff;
  }
  function crc16(bytes, length) {
    let crc = 0xffff;
    for (let i = 0; i < length; i++) {
      crc = ((crc << 8) & 0xffff) ^ table[((crc >> 8) ^ bytes[i]) & 0xff];
    }
    return crc;
  }

  // The value congruent to msMod (mod 2**40) nearest to nowMs (stamp.unwrap_ms).
  function unwrap(msMod, nowMs) {
    const d = (((msMod - nowMs + PERIOD / 2) % PERIOD) + PERIOD) % PERIOD;
    return nowMs + d - PERIOD / 2;
  }

  // [frameNumber, captureMs] from RGBA pixels of the top-left corner, or null.
  function read(rgba, nowMs) {
    const bytes = new Uint8Array(10);
    const q = BLOCK / 4;
    for (let bit = 0; bit < ROWS * COLUMNS; bit++) {
      const row = Math.floor(bit / COLUMNS), col = bit % COLUMNS;
      let sum = 0;
      for (let y = row * BLOCK + q; y < (row + 1) * BLOCK - q; y++) {
        for (let x = col * BLOCK + q; x < (col + 1) * BLOCK - q; x++) {
          const i = 4 * (y * WIDTH + x);
          sum += 0.299 * rgba[i] + 0.587 * rgba[i + 1] + 0.114 * rgba[i + 2];
        }
      }
      const mean = 16 + (219 / 255) * (sum / ((BLOCK - 2 * q) ** 2));
      if (Math.abs(mean - THRESHOLD) < MARGIN) return null;
      if (mean > THRESHOLD) bytes[bit >> 3] |= 0x80 >> (bit & 7);
    }
    if (crc16(bytes, 8) !== ((bytes[8] << 8) | bytes[9])) return null;
    const msMod = bytes[0] * 2 ** 32 + ((bytes[1] << 24) >>> 0) + (bytes[2] << 16)
      + (bytes[3] << 8) + bytes[4];
    const frame = (bytes[5] << 16) | (bytes[6] << 8) | bytes[7];
    return [frame, unwrap(msMod, nowMs)];
  }

  const video = document.querySelector(selector);
  if (!video) throw new Error(`no ${selector} element on the page`);
  if (typeof video.requestVideoFrameCallback !== "function") {
    throw new Error("this browser has no requestVideoFrameCallback");
  }
  const canvas = document.createElement("canvas");
  canvas.width = WIDTH;
  canvas.height = HEIGHT;
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  const origin = performance.timeOrigin;
  const state = {
    // [frame, captureMs, readMs, receiveMs, presentedMs, processingMs, callbackMs]
    // per readable frame, ms (epoch ms except processingMs, a duration)
    samples: [],
    callbacks: 0,
    unreadable: 0,
    repeated: 0,
    lastFrame: -1,
    // Date.now() minus performance's clock, to check the two agree (ms).
    clockSkewMs: Date.now() - (origin + performance.now()),
  };
  window.peercamLatency = state;

  function onFrame(_now, meta) {
    const callbackMs = Date.now();
    state.callbacks++;
    ctx.drawImage(video, 0, 0, WIDTH, HEIGHT, 0, 0, WIDTH, HEIGHT);
    const stamp = read(ctx.getImageData(0, 0, WIDTH, HEIGHT).data, Date.now());
    const readMs = Date.now();
    if (stamp === null) {
      state.unreadable++;
    } else if (stamp[0] === state.lastFrame) {
      state.repeated++;
    } else {
      state.lastFrame = stamp[0];
      state.samples.push([
        stamp[0], stamp[1], readMs,
        meta.receiveTime === undefined ? null : origin + meta.receiveTime,
        meta.presentationTime === undefined ? null : origin + meta.presentationTime,
        meta.processingDuration === undefined ? null : 1000 * meta.processingDuration,
        callbackMs,
      ]);
    }
    video.requestVideoFrameCallback(onFrame);
  }
  video.requestVideoFrameCallback(onFrame);
  return true;
}
