// The worker's live page: polls /v1/status and /v1/signals, and looks shoppers up in /v1/users/.
// Plain JavaScript served by the worker itself: no build step and nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const tokenBox = $("token");
tokenBox.value = sessionStorage.getItem("intentstream-token") || "";
tokenBox.addEventListener("change", () => sessionStorage.setItem("intentstream-token", tokenBox.value));

async function api(path) {
  const headers = tokenBox.value ? { Authorization: "Bearer " + tokenBox.value } : {};
  const r = await fetch(path, { headers });
  const body = await r.json().catch(() => ({}));
  return { status: r.status, body };
}

function text(tag, content, cls) {
  const el = document.createElement(tag);
  el.textContent = content;
  if (cls) el.className = cls;
  return el;
}

function fmtTime(ms) {
  return ms == null ? "–" : new Date(ms).toISOString().replace("T", " ").slice(0, 19);
}

let after = 0;
async function pollSignals() {
  try {
    const { status, body } = await api("/v1/signals?after=" + after);
    if (status === 401) { $("error").textContent = "enter the API token to see signals"; return; }
    after = body.next;
    const list = $("signals");
    for (const s of body.signals) {
      let what = "score " + s.score.toFixed(2);
      if (s.task === "latent_needs" && s.categories) {
        what = "next: " + s.categories.slice(0, 3).map((c) => c.category_id).join(", ");
      }
      const models = Object.values(s.model_versions || {}).join("+");
      const li = text("li", `${fmtTime(s.ts)}  ${s.task}  ${s.user.slice(0, 8)}  ${what}  [${models}]`, "signal " + s.task);
      list.insertBefore(li, list.firstChild);
    }
    while (list.children.length > 200) list.removeChild(list.lastChild);
  } catch (e) { /* the worker restarting: try again on the next tick */ }
}

async function pollStatus() {
  try {
    const { status, body } = await api("/v1/status");
    if (status !== 200) return;
    $("error").textContent = "";
    $("worker").textContent = body.worker + (body.ready ? "" : " (not ready)");
    $("events-per-s").textContent = body.events_per_s == null ? "–" : Math.round(body.events_per_s);
    $("lag").textContent = body.consumer_lag == null ? "–" : body.consumer_lag;
    $("partitions").textContent = body.partitions.join(", ") || "none";
    const warm = Object.values(body.models.online_warm_partitions).filter((p) => p.intent).length;
    $("models").textContent = [body.models.sequence || "no sequence model",
      warm ? `online (${warm} warm)` : body.models.rule].join(" + ");
  } catch (e) { /* as above */ }
}

function row(table, name, value) {
  const tr = document.createElement("tr");
  tr.append(text("th", name), text("td", value));
  table.append(tr);
}

$("lookup-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("lookup-result");
  out.replaceChildren(text("p", "looking up…"));
  const { status, body } = await api("/v1/users/" + encodeURIComponent($("user-id").value));
  if (status !== 200) { out.replaceChildren(text("p", `${status}: ${body.detail || body.error || ""}`, "lookup-error")); return; }
  const t = document.createElement("table");
  t.id = "user";
  row(t, "pseudonym", body.user);
  row(t, "purchase intent", `${body.purchase_intent.score.toFixed(3)} at ${fmtTime(body.purchase_intent.as_of)}`);
  row(t, "churn risk", `${body.churn_risk.score.toFixed(3)} at ${fmtTime(body.churn_risk.as_of)}`);
  row(t, "latent needs", body.latent_needs.categories.map((c) => `${c.category_id} ${c.score.toFixed(2)}`).join(", ") || "–");
  row(t, "session", `${body.session.events} events since ${fmtTime(body.session.started_at)}, ${body.session.cart_items} in cart`);
  row(t, "cold start", body.cold ? "yes" : "no");
  for (const [task, last] of Object.entries(body.last_signals)) {
    row(t, "last " + task, last ? `${last.signal_id || "?"} at ${fmtTime(last.ts)}` : "none");
  }
  row(t, "models", Object.values(body.purchase_intent.model_versions).join(" + "));
  row(t, "answered by", body.served_by);
  out.replaceChildren(t);
});

pollStatus(); pollSignals();
setInterval(pollStatus, 2000);
setInterval(pollSignals, 1000);
