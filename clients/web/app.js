// ahstream browser page: publish camera + microphone over WHIP, or watch a session,
// and draw its events (see README, "Event protocol"). Plain JS, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

const WINDOW_S = 60; // the plot and cue rows show the last minute of media
const MIN_SPAN_S = 20; // ... and at least 20 s, so a new session does not look zoomed in
const MAX_FRAMES = 6000; // bounded memory: ten minutes at 10 Hz
const MAX_CUES = 500;
const MAX_WORDS = 3000;
const MAX_LOG_LINES = 300;
const ROWS = { text: "words", voice: "voice", face: "face", cross: "cross-modal" };
const CUE_NAMES = {
  but_excuse: "“but” / excuse",
  correction_repetition: "correction / repetition",
  valence_inconsistency: "face vs words",
};

// ---------------------------------------------------------------- state

let pc = null; // RTCPeerConnection while publishing
let media = null; // local MediaStream
let ws = null; // events websocket
let whipUrl = null; // Location of the WHIP session (DELETE on stop)
let readToken = null; // token for the events websocket and DELETE
let view = null; // what is drawn for the current session

function emptyView(sid) {
  return {
    sid: sid,
    frames: [], // {t, p, prior}
    segments: [], // {t0, t1, peak}
    cues: [], // cue events
    words: [], // {w, t0, t1, el}
    threshold: null,
    tmax: 0,
    ended: false,
  };
}

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text || state;
}

function log(ev) {
  const box = $("log");
  const lines = (box.textContent ? box.textContent.split("\n") : []).concat(JSON.stringify(ev));
  box.textContent = lines.slice(-MAX_LOG_LINES).join("\n");
}

function showToken(hint) {
  $("token-panel").hidden = false;
  $("show-token").hidden = true;
  if (hint) $("token-hint").textContent = hint;
  $("token").focus();
}

function token() {
  return $("token").value.trim();
}

// ---------------------------------------------------------------- events

function onEvent(ev) {
  if (!view || ev.session !== view.sid) return;
  switch (ev.type) {
    case "session.started":
      $("decision-detail").textContent = "Session started (" + ev.profile + " profile" +
        (ev.context ? ", context: " + ev.context : "") + "). Waiting for speech…";
      break;
    case "frame":
      onFrame(ev);
      return; // ten per second: not logged
    case "transcript":
      onTranscript(ev);
      break;
    case "cue":
      onCue(ev);
      break;
    case "segment":
      view.segments.push({ t0: ev.t0, t1: ev.t1, peak: ev.peak });
      break;
    case "video":
      onVideo(ev);
      break;
    case "status":
      $("status").textContent = "analysis lag " + fmt(ev.lags && ev.lags.tick, 2) + " s · ASR " +
        fmt(ev.rtf, 2) + "× real time · dropped video frames " + ev.dropped_video_frames;
      break;
    case "error": // the session goes on (degraded) unless session.ended follows
      $("alert").textContent = "Server reported an error (" + ev.code + "): " + ev.message;
      $("alert").hidden = false;
      break;
    case "session.ended":
      view.ended = true;
      releaseMedia();
      if (ev.decision) onVideo({ ...ev.decision, final: true });
      setState("ended", "ended (" + ev.reason + ")");
      finishUi();
      break;
  }
  log(ev);
  draw();
}

function fmt(x, digits) {
  return typeof x === "number" ? x.toFixed(digits) : "–";
}

function onFrame(ev) {
  view.frames.push({ t: ev.t, p: ev.p, prior: ev.evidence === "prior" });
  if (view.frames.length > MAX_FRAMES) view.frames.splice(0, view.frames.length - MAX_FRAMES);
  view.tmax = Math.max(view.tmax, ev.t);
  $("plot").dataset.frames = String(Number($("plot").dataset.frames) + 1);
  $("p").textContent = "p(t) " + ev.p.toFixed(2) + " at " + ev.t.toFixed(1) + " s";
  const mods = $("modalities");
  mods.textContent = "";
  for (const [name, on] of Object.entries(ev.modalities || {})) {
    const span = document.createElement("span");
    span.className = "mod" + (on ? " on" : "");
    span.textContent = name;
    mods.appendChild(span);
  }
  scheduleDraw();
}

function onTranscript(ev) {
  const words = ev.words && ev.words.length ? ev.words
    : ev.text.split(/\s+/).filter(Boolean).map((w) => ({ w: w, t0: ev.t0, t1: ev.t1 }));
  if (ev.final) {
    const box = $("committed");
    for (const w of words) {
      const el = document.createElement("span");
      el.className = "word committed";
      el.textContent = w.w;
      el.title = w.t0.toFixed(2) + "–" + w.t1.toFixed(2) + " s";
      box.append(el, " ");
      view.words.push({ ...w, el: el });
      markCued(view.words[view.words.length - 1]);
    }
    while (view.words.length > MAX_WORDS) {
      const old = view.words.shift();
      old.el.nextSibling && old.el.nextSibling.remove();
      old.el.remove();
    }
    // the tentative tail now partly overlaps committed words: keep only what is after them
    const end = words.length ? words[words.length - 1].t1 : ev.t1;
    const tent = $("tentative");
    const rest = (tent._words || []).filter((w) => w.t0 >= end - 0.01);
    tent._words = rest;
    tent.textContent = rest.map((w) => w.w).join(" ");
  } else {
    const tent = $("tentative");
    tent._words = words;
    tent.textContent = words.map((w) => w.w).join(" ");
  }
  view.tmax = Math.max(view.tmax, ev.t1);
  const box = $("transcript");
  box.scrollTop = box.scrollHeight;
}

function cueName(cue) {
  return CUE_NAMES[cue] || cue.replace(/_/g, " ");
}

function cueTitle(ev) {
  return cueName(ev.cue) + " (" + (ROWS[ev.modality] || ev.modality) + ") " +
    ev.t0.toFixed(1) + "–" + ev.t1.toFixed(1) + " s · strength " + ev.strength.toFixed(2) +
    (ev.detail ? " · " + ev.detail : "");
}

function markCued(word) {
  for (const c of view.cues) {
    if (c.modality === "text" && word.t0 < c.t1 + 0.01 && word.t1 > c.t0 - 0.01) {
      word.el.classList.add("cued");
      word.el.title = cueTitle(c);
    }
  }
}

function onCue(ev) {
  view.cues.push(ev);
  if (view.cues.length > MAX_CUES) view.cues.shift();
  $("cues").dataset.count = String(view.cues.length);
  if (ev.modality === "text") {
    for (const w of view.words) {
      if (w.t0 < ev.t1 + 0.01 && w.t1 > ev.t0 - 0.01) {
        w.el.classList.add("cued");
        w.el.title = cueTitle(ev);
      }
    }
  }
  // the latest cues as chips: the reasons at a glance
  const list = $("cue-list");
  if (list.querySelector(".empty")) list.textContent = "";
  const chip = document.createElement("span");
  chip.className = "chip";
  chip.dataset.modality = ev.modality;
  chip.title = cueTitle(ev);
  chip.textContent = cueName(ev.cue) + (ev.detail && ev.modality === "text"
    ? " “" + ev.detail.slice(0, 40) + "”" : "") + " · " + ev.t0.toFixed(1) + " s";
  list.prepend(chip);
  while (list.children.length > 10) list.lastChild.remove();
  summarizeCues();
  view.tmax = Math.max(view.tmax, ev.t1);
}

function summarizeCues() {
  const counts = {};
  for (const c of view.cues) counts[c.cue] = (counts[c.cue] || 0) + 1;
  const top = Object.entries(counts).sort((a, b) => b[1] - a[1]).slice(0, 4);
  $("cue-summary").textContent = top.length ? "Cues so far: " +
    top.map(([cue, n]) => cueName(cue) + (n > 1 ? " ×" + n : "")).join(", ") : "";
}

function onVideo(ev) {
  view.threshold = ev.threshold;
  const d = $("decision");
  d.textContent = ev.label ? "A/H" : "no A/H";
  d.dataset.label = String(ev.label);
  d.dataset.final = String(!!ev.final);
  $("decision-detail").textContent = "p = " + ev.p.toFixed(2) + (ev.label ? " ≥ " : " < ") +
    "threshold " + ev.threshold.toFixed(2) + " · " + (ev.final ? "final" : "running, at " +
    ev.t.toFixed(0) + " s");
  const fill = $("gauge-fill");
  fill.style.width = (100 * ev.p).toFixed(1) + "%";
  fill.className = "fill" + (ev.label ? " ah" : "");
  $("gauge-mark").style.left = (100 * ev.threshold).toFixed(1) + "%";
  $("evidence").textContent = ev.evidence === "prior"
    ? "Prior only: fewer than three words so far." : "From the words so far (text model).";
}

// ---------------------------------------------------------------- drawing

let drawPending = false;

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  requestAnimationFrame(() => {
    drawPending = false;
    draw();
  });
}

function timeRange() {
  const tmax = view ? view.tmax : 0;
  const t1 = Math.max(tmax, MIN_SPAN_S);
  return [Math.max(0, t1 - WINDOW_S), t1];
}

function svgEl(name, attrs, parent) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.appendChild(el);
  return el;
}

function draw() {
  drawPlot();
  drawCues();
}

function drawPlot() {
  const svg = $("plot");
  const style = getComputedStyle(document.documentElement);
  const left = parseFloat(style.getPropertyValue("--label-w"));
  const right = parseFloat(style.getPropertyValue("--right-w"));
  const W = svg.clientWidth || 800;
  const H = svg.clientHeight || 230;
  const top = 10, bottom = 24;
  const [ta, tb] = timeRange();
  const x = (t) => left + (W - left - right) * (t - ta) / (tb - ta);
  const y = (p) => top + (H - top - bottom) * (1 - p);
  svg.setAttribute("viewBox", "0 0 " + W + " " + H);
  svg.textContent = "";
  for (const s of view ? view.segments : []) {
    if (s.t1 < ta) continue;
    const x0 = x(Math.max(s.t0, ta));
    const r = svgEl("rect", { class: "segment", x: x0, y: top,
      width: Math.max(2, x(s.t1) - x0), height: H - top - bottom }, svg);
    svgEl("title", {}, r).textContent = "A/H segment " + s.t0.toFixed(1) + "–" +
      s.t1.toFixed(1) + " s, peak p " + s.peak.toFixed(2);
  }
  for (const p of [0, 0.25, 0.5, 0.75, 1]) {
    svgEl("line", { class: "grid", x1: left, x2: W - right, y1: y(p), y2: y(p) }, svg);
    const label = svgEl("text", { class: "axis", x: left - 8, y: y(p) + 4, "text-anchor": "end" }, svg);
    label.textContent = p.toFixed(2);
  }
  const step = tb - ta > 40 ? 10 : 5;
  for (let t = Math.ceil(ta / step) * step; t <= tb + 1e-9; t += step) {
    svgEl("line", { class: "grid", x1: x(t), x2: x(t), y1: H - bottom, y2: H - bottom + 4 }, svg);
    const label = svgEl("text", { class: "axis", x: x(t), y: H - 6, "text-anchor": "middle" }, svg);
    label.textContent = t + " s";
  }
  if (view && view.threshold !== null) {
    svgEl("line", { class: "threshold", id: "threshold-line", x1: left, x2: W - right,
      y1: y(view.threshold), y2: y(view.threshold) }, svg);
    const label = svgEl("text", { class: "threshold-label", x: W - right - 4,
      y: y(view.threshold) - 5, "text-anchor": "end" }, svg);
    label.textContent = "threshold " + view.threshold.toFixed(2);
  }
  if (!view || !view.frames.length) return;
  // one polyline per run of frames with the same evidence (prior runs drawn dashed)
  let run = [], prior = null, last = null;
  const flush = () => {
    if (run.length) {
      svgEl("polyline", { class: prior ? "prior-line" : "p-line", points: run.join(" ") }, svg);
    }
  };
  for (const f of view.frames) {
    if (f.t < ta) continue;
    const pt = x(f.t).toFixed(1) + "," + y(f.p).toFixed(1);
    if (f.prior !== prior) {
      flush();
      run = last ? [last] : [];
      prior = f.prior;
    }
    run.push(pt);
    last = pt;
  }
  flush();
  const f = view.frames[view.frames.length - 1];
  svgEl("circle", { class: "now", cx: x(f.t), cy: y(f.p), r: 4 }, svg);
}

function drawCues() {
  const [ta, tb] = timeRange();
  const lanes = {};
  for (const row of document.querySelectorAll("#cues .cue-row")) {
    const lane = row.querySelector(".lane");
    lane.textContent = "";
    lanes[row.dataset.row] = lane;
  }
  for (const c of view ? view.cues : []) {
    const lane = lanes[c.modality] || lanes.cross;
    if (c.t1 < ta) continue;
    const a = Math.max(c.t0, ta);
    const el = document.createElement("div");
    el.className = "cue";
    el.dataset.cue = c.cue;
    el.dataset.modality = c.modality;
    el.style.left = (100 * (a - ta) / (tb - ta)).toFixed(2) + "%";
    el.style.width = (100 * (c.t1 - a) / (tb - ta)).toFixed(2) + "%";
    el.style.opacity = (0.45 + 0.55 * c.strength).toFixed(2);
    el.title = cueTitle(c);
    // label only blocks wide enough to read it; narrow ones keep their hover text
    if (lane.clientWidth * (c.t1 - a) / (tb - ta) >= 10 + 6.5 * cueName(c.cue).length) {
      el.textContent = cueName(c.cue);
    }
    lane.appendChild(el);
  }
}

// ---------------------------------------------------------------- session

function resetView(sid) {
  view = emptyView(sid);
  $("committed").textContent = "";
  $("tentative").textContent = "";
  $("tentative")._words = [];
  $("cue-list").innerHTML = '<span class="empty">No cues yet.</span>';
  $("cues").dataset.count = "0";
  $("cue-summary").textContent = "";
  $("plot").dataset.frames = "0";
  $("log").textContent = "";
  $("decision").textContent = "–";
  $("decision").dataset.label = "";
  $("decision").dataset.final = "false";
  $("status").textContent = "";
  $("alert").hidden = true;
  $("session-id").textContent = sid;
  $("session-box").hidden = false;
  const link = new URL(window.location.href);
  link.search = "?session=" + encodeURIComponent(sid);
  link.hash = "";
  $("watch-link").href = link.toString();
  draw();
}

function eventsUrl(sid, tok) {
  const proto = window.location.protocol === "https:" ? "wss://" : "ws://";
  // websockets cannot carry headers: the token goes in ?token=
  return proto + window.location.host + "/sessions/" + encodeURIComponent(sid) + "/events" +
    (tok ? "?token=" + encodeURIComponent(tok) : "");
}

function subscribe(sid, tok, liveState) {
  const sock = new WebSocket(eventsUrl(sid, tok));
  let opened = false;
  sock.onopen = () => {
    opened = true;
    setState(liveState);
  };
  sock.onmessage = (m) => onEvent(JSON.parse(m.data));
  sock.onclose = () => {
    if (ws !== sock) return;
    ws = null;
    if (!opened) explainRefusal(sid, tok);
    else if (!view.ended) setState("ended", "disconnected");
    finishUi();
  };
  ws = sock;
}

async function explainRefusal(sid, tok) {
  // a refused websocket shows no status to scripts: ask the same URL over plain HTTP
  let status = 0;
  try {
    const url = "/sessions/" + encodeURIComponent(sid) + "/events" +
      (tok ? "?token=" + encodeURIComponent(tok) : "");
    status = (await fetch(url)).status;
  } catch (e) {
    status = 0;
  }
  if (status === 401) {
    setState("token", "token needed");
    showToken("This session needs its read token (or a service token).");
  } else if (status === 403) {
    setState("token", "token refused");
    showToken("That token may not read this session.");
  } else if (status === 404) {
    setState("error", "unknown session");
  } else {
    setState("error", "cannot connect");
  }
}

async function openMedia() {
  if (!navigator.mediaDevices) {
    throw new Error("the browser allows camera and microphone only over HTTPS or on localhost " +
      "(serve with --tls-cert/--tls-key)");
  }
  // no AGC or noise suppression: voice cues compare loudness against the speaker's baseline
  const audio = { echoCancellation: true, noiseSuppression: false, autoGainControl: false };
  const video = { width: { ideal: 640 }, height: { ideal: 480 }, frameRate: { ideal: 15 } };
  let failure = null;
  // a missing camera or microphone still gives a session (the service degrades, not stalls)
  for (const constraints of [{ audio, video }, { audio }, { video }]) {
    try {
      return await navigator.mediaDevices.getUserMedia(constraints);
    } catch (e) {
      if (e.name === "NotAllowedError") throw new Error("camera/microphone permission denied");
      failure = failure || e;
    }
  }
  throw failure;
}

function waitIce(conn) {
  if (conn.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    conn.addEventListener("icegatheringstatechange", () => {
      if (conn.iceGatheringState === "complete") resolve();
    });
    setTimeout(resolve, 3000); // host candidates are enough on a LAN; do not hang
  });
}

async function start() {
  $("start").disabled = true;
  $("tab-watch").disabled = true;
  setState("starting", "starting");
  if (!media) {
    media = await openMedia();
    $("preview").srcObject = media;
    const camera = media.getVideoTracks().length > 0;
    $("preview-note").hidden = camera;
    if (!camera) $("preview-note").textContent = "Microphone only: no camera found.";
  }
  pc = new RTCPeerConnection();
  for (const track of media.getTracks()) pc.addTransceiver(track, { direction: "sendonly" });
  await pc.setLocalDescription(await pc.createOffer());
  await waitIce(pc);
  const ctx = $("context").value.trim();
  const headers = { "Content-Type": "application/sdp" };
  if (token()) headers.Authorization = "Bearer " + token();
  const resp = await fetch("/whip" + (ctx ? "?context=" + encodeURIComponent(ctx) : ""), {
    method: "POST", headers: headers, body: pc.localDescription.sdp,
  });
  if (resp.status !== 201) {
    pc.close();
    pc = null;
    if (resp.status === 401) {
      setState("token", token() ? "token refused" : "token needed");
      showToken(token() ? "The server refused this token." :
        "This server requires a service token to publish. Enter it and press Start again.");
    } else {
      setState("error", "refused: " + resp.status + " " + (await resp.text()).trim());
    }
    $("start").disabled = false;
    $("tab-watch").disabled = false;
    return;
  }
  whipUrl = new URL(resp.headers.get("Location"), window.location.href).toString();
  const sid = resp.headers.get("X-Ahstream-Session") || whipUrl.split("/").pop();
  readToken = resp.headers.get("X-Ahstream-Read-Token") || token() || null;
  if (token()) $("token-hint").textContent = "Publishing with this token.";
  $("read-token").value = readToken || "";
  $("read-token-row").hidden = !readToken;
  await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  resetView(sid);
  subscribe(sid, readToken, "live");
  $("stop").disabled = false;
}

function deleteSession(keepalive) {
  if (!whipUrl) return null;
  const url = whipUrl;
  whipUrl = null;
  return fetch(url, {
    method: "DELETE", keepalive: keepalive,
    headers: readToken ? { Authorization: "Bearer " + readToken } : {},
  });
}

function releaseMedia() {
  if (media) media.getTracks().forEach((t) => t.stop());
  media = null;
  $("preview").srcObject = null;
  $("preview-note").hidden = false;
  if (pc) pc.close();
  pc = null;
  whipUrl = null;
}

async function stop() {
  $("stop").disabled = true;
  setState("stopping", "finishing…");
  try {
    await deleteSession(false); // the final events still arrive on the websocket
  } finally {
    releaseMedia();
    if (!ws) finishUi();
  }
}

function watch() {
  const sid = $("watch-session").value.trim();
  if (!sid) return;
  if (ws) ws.close();
  $("watch").disabled = true;
  $("unwatch").disabled = false;
  $("tab-publish").disabled = true;
  $("read-token-row").hidden = true;
  setState("connecting", "connecting");
  resetView(sid);
  if (token()) $("token-hint").textContent = "Watching with this token.";
  subscribe(sid, token() || null, "watching");
}

function unwatch() {
  const sock = ws;
  ws = null;
  if (sock) sock.close();
  setState("idle");
  finishUi();
}

function finishUi() {
  if (pc === null) {
    $("start").disabled = false;
    $("stop").disabled = true;
  }
  if (ws === null) {
    $("watch").disabled = false;
    $("unwatch").disabled = true;
    $("tab-publish").disabled = false;
    $("tab-watch").disabled = pc !== null;
  }
}

function selectTab(name) {
  const watching = name === "watch";
  $("tab-publish").setAttribute("aria-selected", String(!watching));
  $("tab-watch").setAttribute("aria-selected", String(watching));
  $("publish-panel").hidden = watching;
  $("watch-panel").hidden = !watching;
  $("preview-note").textContent = watching
    ? "Watching a session published elsewhere: no local camera."
    : "Camera and microphone start when you press Start.";
}

// ---------------------------------------------------------------- wiring

$("start").onclick = () => start().catch((e) => {
  setState("error", "error: " + e.message);
  if (pc) pc.close();
  pc = null;
  finishUi();
  $("tab-watch").disabled = false;
});
$("stop").onclick = () => stop().catch((e) => setState("error", "error: " + e.message));
$("watch").onclick = watch;
$("unwatch").onclick = unwatch;
$("tab-publish").onclick = () => selectTab("publish");
$("tab-watch").onclick = () => selectTab("watch");
$("show-token").onclick = () => showToken("Enter a token if the server requires one.");
$("copy-token").onclick = () => {
  const field = $("read-token");
  // the clipboard API needs a secure context; elsewhere show the token selected instead
  const reveal = () => { field.type = "text"; field.select(); };
  if (navigator.clipboard) navigator.clipboard.writeText(field.value).catch(reveal);
  else reveal();
};
// a closed tab ends its session at once instead of after the server's idle timeout
window.addEventListener("pagehide", () => deleteSession(true));
window.addEventListener("resize", scheduleDraw);

// /?session=<id> opens the watch tab for that session (tokens never go in links)
const wanted = new URLSearchParams(window.location.search).get("session");
if (wanted) {
  selectTab("watch");
  $("watch-session").value = wanted;
  watch();
}
draw();
