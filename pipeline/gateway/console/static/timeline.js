// Who spoke when, drawn on a canvas: one lane per speaker, so overlapped speech fills two lanes
// at once. No charting library: the picture is rectangles on lanes and a time axis.

// Okabe-Ito colours, distinguishable with the common colour-vision deficiencies.
const COLOURS = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#7F7F7F", "#332288"];
export const speakerColour = (id) => COLOURS[id % COLOURS.length];

const LANE_HEIGHT = 26;
const LANE_GAP = 6;
const AXIS_HEIGHT = 22;
const TICK_STEPS_S = [0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600];

// lanes: [{id, label, spans: [[startMs, endMs], ...], active}], shown from fromMs to toMs.
export function drawTimeline(canvas, lanes, fromMs, toMs) {
  const width = canvas.clientWidth;
  const height = Math.max(1, lanes.length) * (LANE_HEIGHT + LANE_GAP) + AXIS_HEIGHT;
  const scale = window.devicePixelRatio || 1;
  canvas.style.height = `${height}px`;
  if (canvas.width !== Math.round(width * scale) || canvas.height !== Math.round(height * scale)) {
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.clearRect(0, 0, width, height);
  const styles = getComputedStyle(canvas);
  const ink = styles.getPropertyValue("--ink").trim() || "#1b1b1f";
  const faint = styles.getPropertyValue("--faint").trim() || "#e6e6ea";
  ctx.font = `13px ${styles.fontFamily}`;
  ctx.textBaseline = "middle";

  // As wide as the longest name, within a quarter of the canvas (names beyond it are cut short).
  const longest = Math.max(0, ...lanes.map((lane) => ctx.measureText(lane.label).width));
  const labelWidth = Math.round(Math.min(Math.max(longest + 24, 64), width / 4));
  const plotWidth = Math.max(1, width - labelWidth - 8);
  const span = Math.max(1, toMs - fromMs);
  const x = (ms) => labelWidth + ((ms - fromMs) / span) * plotWidth;

  lanes.forEach((lane, index) => {
    const top = index * (LANE_HEIGHT + LANE_GAP);
    ctx.fillStyle = faint;
    ctx.fillRect(labelWidth, top, plotWidth, LANE_HEIGHT);
    const colour = speakerColour(lane.id);
    ctx.fillStyle = colour;
    for (const [start, end] of lane.spans) {
      if (end < fromMs || start > toMs) continue;
      const left = x(Math.max(start, fromMs));
      ctx.fillRect(left, top + 3, Math.max(1.5, x(Math.min(end, toMs)) - left), LANE_HEIGHT - 6);
    }
    if (lane.active) {
      // The current speakers: a filled marker and a bold name.
      ctx.fillStyle = colour;
      ctx.fillRect(0, top, 5, LANE_HEIGHT);
      ctx.font = `bold 13px ${styles.fontFamily}`;
    } else {
      ctx.font = `13px ${styles.fontFamily}`;
    }
    ctx.fillStyle = ink;
    ctx.fillText(fitText(ctx, lane.label, labelWidth - 14), 10, top + LANE_HEIGHT / 2);
  });

  // Time axis: about one tick per 90 px.
  const axisTop = height - AXIS_HEIGHT + 4;
  const stepS = TICK_STEPS_S.find((s) => (s * 1000 * plotWidth) / span >= 90) ?? TICK_STEPS_S.at(-1);
  ctx.font = `12px ${styles.fontFamily}`;
  ctx.fillStyle = ink;
  ctx.strokeStyle = ink;
  ctx.textBaseline = "top";
  for (let t = Math.ceil(fromMs / 1000 / stepS) * stepS; t * 1000 <= toMs; t += stepS) {
    const tickX = x(t * 1000);
    ctx.fillRect(tickX, axisTop - 4, 1, 4);
    const text = formatClock(t);
    const textWidth = ctx.measureText(text).width;
    ctx.fillText(text, Math.min(width - textWidth, Math.max(labelWidth, tickX - textWidth / 2)), axisTop + 1);
  }
}

function fitText(ctx, text, width) {
  if (ctx.measureText(text).width <= width) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(`${cut}…`).width > width) cut = cut.slice(0, -1);
  return `${cut}…`;
}

export function formatClock(seconds) {
  const whole = Math.floor(seconds);
  const minutes = Math.floor(whole / 60);
  const rest = seconds - minutes * 60;
  const secondsText = Number.isInteger(rest) ? String(rest).padStart(2, "0") : rest.toFixed(1).padStart(4, "0");
  return `${minutes}:${secondsText}`;
}
