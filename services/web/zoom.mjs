// Zoom and pan of the picture: pure geometry, no DOM.
//
// A view is {scale, x, y}: the video is drawn scaled by `scale` around its
// centre and then moved by (x, y) CSS pixels. It is clamped so the picture
// always covers the box it is zoomed in (no black edges to pan into).

export const MIN_SCALE = 1;
export const MAX_SCALE = 6;
export const DOUBLE_TAP_SCALE = 2.5;

export const IDENTITY = Object.freeze({ scale: 1, x: 0, y: 0 });

export function clampView(view, width, height) {
  const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.scale));
  const maxX = (width * (scale - 1)) / 2;
  const maxY = (height * (scale - 1)) / 2;
  return {
    scale,
    x: Math.min(maxX, Math.max(-maxX, view.x)),
    y: Math.min(maxY, Math.max(-maxY, view.y)),
  };
}

export function zoomAt(view, factor, px, py, width, height) {
  // Scale by `factor` keeping the point (px, py) (box coordinates, origin at
  // the top-left) where it is on screen: what fingers expect of a pinch.
  const scale = Math.min(MAX_SCALE, Math.max(MIN_SCALE, view.scale * factor));
  const k = scale / view.scale;
  const cx = px - width / 2;
  const cy = py - height / 2;
  return clampView({ scale, x: cx - (cx - view.x) * k, y: cy - (cy - view.y) * k },
    width, height);
}

export function panBy(view, dx, dy, width, height) {
  return clampView({ scale: view.scale, x: view.x + dx, y: view.y + dy }, width, height);
}

export function doubleTap(view, px, py, width, height) {
  // Zoomed out: zoom in on the tapped point. Zoomed in: back to the whole picture.
  if (view.scale > 1.01) return { ...IDENTITY };
  return zoomAt(view, DOUBLE_TAP_SCALE, px, py, width, height);
}

export function transformOf(view) {
  return "translate(" + view.x.toFixed(1) + "px, " + view.y.toFixed(1) + "px) scale("
    + view.scale.toFixed(3) + ")";
}
