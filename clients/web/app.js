// ahstream browser page: publish camera + microphone over WHIP, or watch a session,
// and draw its events (see README, "Event protocol"). Plain JS, no dependencies.
"use strict";

const $ = (id) => document.getElementById(id);

const WINDOW_S = 60; // the plot and cue rows show the last minute of media
const MIN_SPAN_S = 20; // ... and at least 20 s, so a new session does not look zoomed in
const MAX_FRAMES = 6000; // bounded memory: ten minutes at 10 Hz
const MAX_CUES = 500; // cues drawn; the summary counts every cue (view.cueCounts)
const MAX_SEGMENTS = 1000; // the newest A/H segments (the plot shows the last minute)
const MAX_WORDS = 3000;
const MAX_LOG_LINES = 300;
const ROWS = { text: "words", voice: "voice", face: "face", cross: "cross-modal" };
const EVIDENCE_TEXT = { // the decision card's line for each `evidence` of a video event
  prior: "Prior only: fewer than three words so far.",
  media: "From face and voice only: no words used (full profile).",
  text: "From the words so far.",
};
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
let link = null; // the events subscription, also while it reconnects (see subscribe())
let logLines = []; // the raw events shown, newest last (at most MAX_LOG_LINES)
// what the next animation frame has to redraw besides the plot and cue rows
const dirty = { log: false, scroll: false, frame: null, summary: false };

const RETRY_MS = [500, 1000, 2000, 4000, 8000]; // backoff of an events resubscribe, then 8 s
const MAX_RETRIES = 10; // consecutive failed resubscribes (about a minute) before giving up
const STABLE_MS = 10000; // a socket open this long resets the backoff
const WAITING = "Waiting for a session.";

function emptyView(sid) {
  return {
    sid: sid,
    frames: [], // {t, p, prior}
    segments: [], // {t0, t1, peak}
    cues: [], // cue events (the newest MAX_CUES)
    cueCounts: {}, // every cue of the session so far, by cue name
    words: [], // {w, t0, t1, el}
    threshold: null,
    tmax: 0,
    frameCount: 0, // frame events received (the plot keeps the last MAX_FRAMES)
    ended: false,
  };
}

function setState(state, text) {
  const el = $("state");
  el.dataset.state = state;
  el.textContent = text || state;
}

function log(line) {
  logLines.push(line);
  // amortized trim: the array never holds more than twice the lines shown
  if (logLines.length > 2 * MAX_LOG_LINES) logLines = logLines.slice(-MAX_LOG_LINES);
  dirty.log = true;
}

function showAlert(text) {
  $("alert").textContent = text;
  $("alert").hidden = false;
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

function onEvent(ev, raw) {
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
      if (view.segments.length > MAX_SEGMENTS) view.segments.shift();
      break;
    case "video":
      onVideo(ev);
      break;
    case "status": // its message says when a live session is behind the call (CPU short)
      $("status").textContent = "analysis lag " + fmt(ev.lags && ev.lags.tick, 2) + " s · ASR " +
        fmt(ev.rtf, 2) + "× real time · dropped video frames " + ev.dropped_video_frames +
        (ev.message ? " · " + ev.message : "");
      $("status").dataset.behind = ev.message ? "true" : "false";
      break;
    case "error": // the session goes on (degraded) unless session.ended follows
      showAlert("Server reported an error (" + ev.code + "): " + ev.message);
      break;
    case "session.ended":
      view.ended = true;
      releaseMedia();
      setTentative([]); // nothing more will be committed
      if (ev.decision) onVideo({ ...ev.decision, final: true });
      else endedUndecided(ev.reason);
      setState("ended", "ended (" + ev.reason + ")");
      finishUi();
      break;
  }
  log(raw || JSON.stringify(ev));
  // at most once per animation frame, however many events arrive; the last event at once,
  // so the final view shows with the final state (a hidden tab has no frames to wait for)
  if (ev.type === "session.ended") renderNow();
  else scheduleDraw();
}

function fmt(x, digits) {
  return typeof x === "number" ? x.toFixed(digits) : "–";
}

function onFrame(ev) {
  view.frames.push({ t: ev.t, p: ev.p, prior: ev.evidence === "prior" });
  if (view.frames.length > MAX_FRAMES) view.frames.splice(0, view.frames.length - MAX_FRAMES);
  view.tmax = Math.max(view.tmax, ev.t);
  view.frameCount++;
  $("plot").dataset.frames = String(view.frameCount);
  dirty.frame = ev; // p(t) and the inputs are shown once per animation frame
  scheduleDraw();
}

function showFrame(ev) {
  $("p").textContent = "p(t) " + ev.p.toFixed(2) + " at " + ev.t.toFixed(1) + " s";
  const mods = $("modalities");
  mods.textContent = "";
  for (const [name, on] of Object.entries(ev.modalities || {})) {
    const span = document.createElement("span");
    span.className = "mod" + (on ? " on" : "");
    span.textContent = name;
    mods.appendChild(span);
  }
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
    // the old tail is committed or dropped now: the server sends the current tail (if any
    // is left) right after every commit, so none of the old one may stay on screen
    setTentative([]);
  } else {
    setTentative(words);
  }
  view.tmax = Math.max(view.tmax, ev.t1);
  dirty.scroll = true; // scrolled to the newest words once per animation frame
}

function setTentative(words) {
  $("tentative").textContent = words.map((w) => w.w).join(" ");
}

// The session ended with no decision: say so, instead of a stale "waiting" or "running".
function endedUndecided(reason) {
  const d = $("decision");
  const running = d.dataset.label !== "";
  $("decision-detail").textContent = "Ended without a " + (running ? "final " : "") +
    "decision (" + reason + ")" + (running ? "; the last running decision is shown." : ".");
  $("decision-announce").textContent = "Session ended without a decision";
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
  view.cueCounts[ev.cue] = (view.cueCounts[ev.cue] || 0) + 1;
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
  chip.tabIndex = 0; // keyboard users reach the detail too (the title is hover only)
  chip.setAttribute("aria-label", chip.title);
  chip.textContent = cueName(ev.cue) + (ev.detail && ev.modality === "text"
    ? " “" + ev.detail.slice(0, 40) + "”" : "") + " · " + ev.t0.toFixed(1) + " s";
  list.prepend(chip);
  while (list.children.length > 10) list.lastChild.remove();
  dirty.summary = true;
  view.tmax = Math.max(view.tmax, ev.t1);
}

function summarizeCues() {
  const top = Object.entries(view.cueCounts).sort((a, b) => b[1] - a[1]).slice(0, 4);
  $("cue-summary").textContent = top.length ? "Cues so far: " +
    top.map(([cue, n]) => cueName(cue) + (n > 1 ? " ×" + n : "")).join(", ") : "";
}

function onVideo(ev) {
  view.threshold = ev.threshold;
  const d = $("decision");
  d.textContent = ev.label ? "A/H" : "no A/H";
  d.dataset.label = String(ev.label);
  d.dataset.final = String(!!ev.final);
  const said = (ev.final ? "Final decision: " : "Running decision: ") + (ev.label ? "A/H" : "no A/H");
  const live = $("decision-announce");
  if (live.textContent !== said) live.textContent = said;
  $("decision-detail").textContent = "p = " + ev.p.toFixed(2) + (ev.label ? " ≥ " : " < ") +
    "threshold " + ev.threshold.toFixed(2) + " · " + (ev.final ? "final" : "running, at " +
    ev.t.toFixed(0) + " s");
  const fill = $("gauge-fill");
  fill.style.width = (100 * ev.p).toFixed(1) + "%";
  fill.className = "fill" + (ev.label ? " ah" : "");
  $("gauge-mark").style.left = (100 * ev.threshold).toFixed(1) + "%";
  $("evidence").textContent = EVIDENCE_TEXT[ev.evidence] || "";
}

// ---------------------------------------------------------------- drawing

let drawPending = false;

function scheduleDraw() {
  if (drawPending) return;
  drawPending = true;
  const run = () => {
    if (!drawPending) return;
    drawPending = false;
    render();
  };
  requestAnimationFrame(run);
  setTimeout(run, 250); // a hidden tab gets no animation frames: keep its page current anyway
}

function renderNow() {
  drawPending = false; // a scheduled render has nothing left to do
  render();
}

// Everything events change on screen, once per animation frame: a replay of thousands of
// events costs a few renders, not one forced layout per event.
function render() {
  if (view && dirty.summary) summarizeCues();
  if (dirty.frame) showFrame(dirty.frame);
  if (dirty.log) $("log").textContent = logLines.slice(-MAX_LOG_LINES).join("\n");
  dirty.summary = dirty.log = false;
  dirty.frame = null;
  if (dirty.scroll) { // before draw(): the layout this reads is the one draw() reads too
    const box = $("transcript");
    box.scrollTop = box.scrollHeight;
    dirty.scroll = false;
  }
  draw();
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
  // every layout read first, then only writes: one layout per draw, however many cues
  const style = getComputedStyle(document.documentElement);
  const svg = $("plot");
  const box = {
    left: parseFloat(style.getPropertyValue("--label-w")),
    right: parseFloat(style.getPropertyValue("--right-w")),
    W: svg.clientWidth || 800,
    H: svg.clientHeight || 230,
    lanes: {},
  };
  for (const row of document.querySelectorAll("#cues .cue-row")) {
    const lane = row.querySelector(".lane");
    box.lanes[row.dataset.row] = { el: lane, width: lane.clientWidth };
  }
  drawPlot(svg, box);
  drawCues(box);
}

function drawPlot(svg, box) {
  const { left, right, W, H } = box;
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

function drawCues(box) {
  const [ta, tb] = timeRange();
  const lanes = box.lanes;
  for (const lane of Object.values(lanes)) lane.el.textContent = "";
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
    el.setAttribute("role", "img");
    el.setAttribute("aria-label", el.title);
    // label only blocks wide enough to read it; narrow ones keep their hover text
    if (lane.width * (c.t1 - a) / (tb - ta) >= 10 + 6.5 * cueName(c.cue).length) {
      el.textContent = cueName(c.cue);
    }
    lane.el.appendChild(el);
  }
}

// ---------------------------------------------------------------- session

// A fresh view for session `sid`: nothing of the previous session stays on screen.
// `keepFrames` (a resubscribe to the same session): the server replays the critical events
// but never the frames, so the plot keeps what it had and the rest is rebuilt from the replay.
function resetView(sid, keepFrames) {
  const old = view;
  view = emptyView(sid);
  if (keepFrames && old && old.sid === sid) {
    view.frames = old.frames;
    view.frameCount = old.frameCount;
    view.tmax = old.frames.length ? old.frames[old.frames.length - 1].t : 0;
  }
  $("committed").textContent = "";
  setTentative([]);
  const none = document.createElement("span");
  none.className = "empty";
  none.textContent = "No cues yet.";
  $("cue-list").replaceChildren(none);
  $("cues").dataset.count = "0";
  $("cue-summary").textContent = "";
  $("plot").dataset.frames = String(view.frameCount);
  logLines = [];
  dirty.log = dirty.scroll = dirty.summary = false;
  dirty.frame = null;
  $("log").textContent = "";
  $("decision").textContent = "–";
  $("decision").dataset.label = "";
  $("decision").dataset.final = "false";
  $("decision-detail").textContent = WAITING;
  $("decision-announce").textContent = "";
  const fill = $("gauge-fill");
  fill.style.width = "0";
  fill.className = "fill";
  $("gauge-mark").style.left = "50%";
  $("evidence").textContent = "";
  if (!keepFrames) {
    $("p").textContent = "p(t) –";
    $("modalities").textContent = "";
  }
  $("status").textContent = "";
  $("alert").hidden = true;
  $("session-id").textContent = sid;
  $("session-box").hidden = false;
  const url = new URL(window.location.href);
  url.search = "?session=" + encodeURIComponent(sid);
  url.hash = "";
  $("watch-link").href = url.toString();
  renderNow(); // once per session (or resubscribe): the old plot and cues go at once
}

function eventsUrl(sid, tok) {
  const proto = window.location.protocol === "https:" ? "wss://" : "ws://";
  // websockets cannot carry headers: the token goes in ?token=
  return proto + window.location.host + "/sessions/" + encodeURIComponent(sid) + "/events" +
    (tok ? "?token=" + encodeURIComponent(tok) : "");
}

// Follow session `sid`'s events until session.ended. A socket that drops before then is
// reopened with backoff ("live (reconnecting)"); the server replays the session's critical
// events to it, so the view is rebuilt from them rather than appended to.
function subscribe(sid, tok, liveState) {
  unsubscribe();
  link = { sid: sid, tok: tok, liveState: liveState, attempt: 0, timer: null, opened: false };
  connect(link);
}

function unsubscribe() {
  const sock = ws;
  ws = null; // first: the socket's close handler then knows the close was asked for
  if (sock) sock.close();
  if (link && link.timer) clearTimeout(link.timer);
  link = null;
}

function connect(l) {
  const sock = new WebSocket(eventsUrl(l.sid, l.tok));
  let openedAt = null;
  sock.onopen = () => {
    if (ws !== sock) return;
    openedAt = Date.now();
    if (l.opened) resetView(l.sid, true); // a resubscribe: the replay rebuilds the view
    l.opened = true;
    setState(l.liveState);
  };
  sock.onmessage = (m) => {
    if (ws === sock) onEvent(JSON.parse(m.data), m.data);
  };
  sock.onclose = () => {
    if (ws !== sock) return; // closed on purpose, or replaced
    ws = null;
    if (link !== l) return;
    if (view && view.ended) {
      link = null;
    } else if (!l.opened && !pc) {
      link = null; // watching, never connected: say why (token, unknown session, server down)
      explainRefusal(l.sid, l.tok);
    } else {
      // a drop, or a publishing page's first subscription failing: retry, then give up
      // (never keep sending camera and microphone to a session the page cannot show)
      if (openedAt !== null && Date.now() - openedAt > STABLE_MS) l.attempt = 0;
      retry(l, openedAt === null);
    }
    finishUi();
  };
  ws = sock;
}

async function retry(l, failed) {
  if (failed) {
    // a refused resubscribe: an unknown session (gone) or a refused token will not come back
    const status = await probe(l.sid, l.tok);
    if (link !== l) return;
    if (status === 401 || status === 403 || status === 404) {
      link = null;
      if (status === 404) setState("ended", "ended (disconnected)");
      else explainRefusal(l.sid, l.tok);
      giveUp();
      return;
    }
  }
  if (l.attempt >= MAX_RETRIES) {
    link = null;
    setState("ended", "ended (disconnected)");
    giveUp();
    return;
  }
  const delay = RETRY_MS[Math.min(l.attempt, RETRY_MS.length - 1)];
  l.attempt++;
  setState("reconnecting", l.liveState + " (reconnecting)");
  l.timer = setTimeout(() => {
    l.timer = null;
    if (link === l) connect(l);
  }, delay);
}

// The events are gone for good: never keep publishing a session the page no longer shows.
function giveUp() {
  if (pc) endPublishing().finally(finishUi);
  finishUi();
}

async function probe(sid, tok) {
  // a refused websocket shows no status to scripts: ask the same URL over plain HTTP
  try {
    const url = "/sessions/" + encodeURIComponent(sid) + "/events" +
      (tok ? "?token=" + encodeURIComponent(tok) : "");
    return (await fetch(url)).status;
  } catch (e) {
    return 0;
  }
}

async function explainRefusal(sid, tok) {
  const status = await probe(sid, tok);
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
  try {
    if (await publish()) return;
  } catch (e) {
    setState("error", "error: " + e.message);
  }
  // refused or failed: camera and microphone off, and no session left behind on the server
  // (the DELETE is sent, not waited for: a half-made session can take seconds to close)
  const del = deleteSession(false);
  if (del) del.catch(() => {});
  releaseMedia();
  finishUi();
  $("tab-watch").disabled = false;
}

// Start publishing; true once live, false when the server refused (the state says why).
async function publish() {
  if (!media) {
    media = await openMedia();
    $("preview").srcObject = media;
    const camera = media.getVideoTracks().length > 0;
    $("preview-note").hidden = camera;
    if (!camera) $("preview-note").textContent = "Microphone only: no camera found.";
  }
  const conn = new RTCPeerConnection();
  pc = conn;
  conn.onconnectionstatechange = () => {
    // the media path to the server is gone: end the session, camera and microphone off
    // (not while a Stop is under way: whipUrl is cleared when the DELETE is sent)
    if (pc !== conn || !whipUrl || !["failed", "closed"].includes(conn.connectionState)) return;
    showAlert("The media connection to the server " + (conn.connectionState === "failed"
      ? "failed" : "closed") + ": publishing stopped.");
    stop().catch((e) => setState("error", "error: " + e.message));
  };
  for (const track of media.getTracks()) conn.addTransceiver(track, { direction: "sendonly" });
  await conn.setLocalDescription(await conn.createOffer());
  await waitIce(conn);
  const ctx = $("context").value.trim();
  const headers = { "Content-Type": "application/sdp" };
  if (token()) headers.Authorization = "Bearer " + token();
  const resp = await fetch("/whip" + (ctx ? "?context=" + encodeURIComponent(ctx) : ""), {
    method: "POST", headers: headers, body: conn.localDescription.sdp,
  });
  if (resp.status !== 201) {
    if (resp.status === 401) {
      setState("token", token() ? "token refused" : "token needed");
      showToken(token() ? "The server refused this token." :
        "This server requires a service token to publish. Enter it and press Start again.");
    } else {
      setState("error", "refused: " + resp.status + " " + (await resp.text()).trim());
    }
    return false;
  }
  // from here on a session exists: a failure must DELETE it (start() does)
  whipUrl = new URL(resp.headers.get("Location"), window.location.href).toString();
  const sid = resp.headers.get("X-Ahstream-Session") || whipUrl.split("/").pop();
  readToken = resp.headers.get("X-Ahstream-Read-Token") || token() || null;
  await conn.setRemoteDescription({ type: "answer", sdp: await resp.text() });
  if (token()) $("token-hint").textContent = "Publishing with this token.";
  $("read-token").value = readToken || "";
  $("read-token-row").hidden = !readToken;
  resetView(sid);
  subscribe(sid, readToken, "live");
  $("stop").disabled = false;
  return true;
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

function previewNote() {
  return $("tab-watch").getAttribute("aria-selected") === "true"
    ? "Watching a session published elsewhere: no local camera."
    : "Camera and microphone start when you press Start.";
}

// Camera and microphone off now (the peer connection stays until closePeer()).
function stopTracks() {
  if (media) media.getTracks().forEach((t) => t.stop());
  media = null;
  $("preview").srcObject = null;
  $("preview-note").textContent = previewNote();
  $("preview-note").hidden = false;
}

function closePeer() {
  const conn = pc;
  pc = null; // first: closing fires no state change we should act on
  if (conn) conn.close();
}

function releaseMedia() {
  stopTracks();
  closePeer();
  whipUrl = null;
}

// Stop publishing: tracks stop at once; the peer connection closes once the server has the
// DELETE (closing it first could end the session as "connection closed" instead).
async function endPublishing() {
  const del = deleteSession(false);
  stopTracks();
  try {
    if (del) await Promise.race([del, new Promise((resolve) => setTimeout(resolve, 5000))]);
  } catch (e) {
    // the server is unreachable: nothing more to tell it
  } finally {
    closePeer();
    whipUrl = null;
  }
}

async function stop() {
  $("stop").disabled = true;
  setState("stopping", "finishing…"); // the final events still arrive on the websocket
  await endPublishing();
  if (!ws && !link) { // no events to say how it ended (the socket was gone already)
    if (!(view && view.ended)) setState("ended", "ended (stopped)");
    finishUi();
  }
}

function watch() {
  const sid = $("watch-session").value.trim();
  if (!sid) return;
  unsubscribe();
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
  unsubscribe();
  setState("idle");
  finishUi();
}

function finishUi() {
  if (pc === null) {
    $("start").disabled = false;
    $("stop").disabled = true;
  }
  if (ws === null && link === null) {
    $("watch").disabled = false;
    $("unwatch").disabled = true;
    $("tab-publish").disabled = false;
    $("tab-watch").disabled = pc !== null;
  }
}

function selectTab(name) {
  const watching = name === "watch";
  for (const [tab, selected] of [["tab-publish", !watching], ["tab-watch", watching]]) {
    $(tab).setAttribute("aria-selected", String(selected));
    $(tab).tabIndex = selected ? 0 : -1; // one tab stop; the arrow keys move between tabs
  }
  $("publish-panel").hidden = watching;
  $("watch-panel").hidden = !watching;
  if (!media) $("preview-note").textContent = previewNote();
}

// Arrow keys (and Home/End) move between the enabled tabs and select them.
function onTabKey(e) {
  const tabs = [$("tab-publish"), $("tab-watch")].filter((t) => !t.disabled);
  const i = tabs.indexOf(document.activeElement);
  if (i < 0) return;
  const n = tabs.length;
  const next = { ArrowRight: i + 1, ArrowLeft: i - 1 + n, Home: 0, End: n - 1 }[e.key];
  if (next === undefined) return;
  e.preventDefault();
  const tab = tabs[next % n];
  tab.focus();
  selectTab(tab === $("tab-watch") ? "watch" : "publish");
}

// ---------------------------------------------------------------- wiring

$("start").onclick = () => start().catch((e) => {
  setState("error", "error: " + e.message);
  releaseMedia();
  finishUi();
  $("tab-watch").disabled = false;
});
$("stop").onclick = () => stop().catch((e) => setState("error", "error: " + e.message));
$("watch").onclick = watch;
$("unwatch").onclick = unwatch;
$("tab-publish").onclick = () => selectTab("publish");
$("tab-watch").onclick = () => selectTab("watch");
document.querySelector('[role="tablist"]').addEventListener("keydown", onTabKey);
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
