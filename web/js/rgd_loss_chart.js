// Live loss chart on the RGD Unlearn node: forget loss, retain loss and conflict rate per step, drawn from the
// "rgd.loss" messages the node sends after every training step. Optional: the pack runs without it.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const CHART_HEIGHT = 90;
const SERIES = [
  ["forget_loss", "#e06c75", "forget"],
  ["retain_loss", "#61afef", "retain"],
  ["conflict_rate", "#e5c07b", "conflict rate"],
];
// node id -> the run's points; exposed for tests and for other extensions
const histories = new Map();
window.rgdLossHistories = histories;

function findNode(id) {
  return app.graph?.getNodeById(Number(id)) ?? app.graph?.getNodeById(id);
}

function drawChart(ctx, node, points) {
  const [width, height] = node.size;
  const top = height - CHART_HEIGHT, left = 8, w = width - 16, h = CHART_HEIGHT - 22;
  ctx.save();
  ctx.fillStyle = "#1e1e1e";
  ctx.fillRect(left, top, w, h);
  const steps = Math.max(points[0].steps ?? points.length, 2);
  for (const [key, colour] of SERIES) {
    const values = points.map((p) => p[key]);
    const low = key === "conflict_rate" ? 0 : Math.min(...values);
    const high = key === "conflict_rate" ? 1 : Math.max(...values);
    const span = high - low || 1;
    ctx.strokeStyle = colour;
    ctx.beginPath();
    points.forEach((p, i) => {
      const x = left + (w * p.step) / (steps - 1);
      const y = top + h - (h * (p[key] - low)) / span;
      i === 0 ? ctx.moveTo(x, y) : ctx.lineTo(x, y);
    });
    ctx.stroke();
  }
  const last = points[points.length - 1];
  ctx.font = "11px sans-serif";
  let x = left;
  for (const [key, colour, label] of SERIES) {
    ctx.fillStyle = colour;
    const text = `${label} ${last[key].toFixed(3)}`;
    ctx.fillText(text, x, top + h + 14);
    x += ctx.measureText(text).width + 12;
  }
  ctx.restore();
}

app.registerExtension({
  name: "rgd.lossChart",
  setup() {
    api.addEventListener("rgd.loss", ({ detail }) => {
      const id = String(detail.node);
      if (detail.step === 0 || !histories.has(id)) histories.set(id, []);
      histories.get(id).push(detail);
      const node = findNode(id);
      if (node && !node.rgdChartSpace) {
        node.rgdChartSpace = true;
        node.setSize([node.size[0], node.size[1] + CHART_HEIGHT]);
      }
      app.graph?.setDirtyCanvas(true, true);
    });
  },
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== "RGDUnlearn") return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      const points = histories.get(String(this.id));
      if (points?.length && this.rgdChartSpace && !this.flags?.collapsed) drawChart(ctx, this, points);
    };
  },
});
