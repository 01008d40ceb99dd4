// The live race page: the race running now at the pits, its pilots in position order, kept
// current by the relay's feed (<pits base>/pitlink/live). Everything shown comes from the pits
// and is written as text, never as markup.
"use strict";

const base = location.pathname.replace(/pitlink\/race\/?$/, "");
const params = new URLSearchParams(location.search);
if (params.get("overlay") === "1") document.body.classList.add("overlay");

const $ = (id) => document.getElementById(id);
const NULL_DATE = /^0001\//;
const state = {
  connected: null, // the box's link to the relay: true, false, or null before the feed says
  since: null, // when it connected, or went away (unix seconds)
  racePath: null, // "/events/<event>/<race>/Race.json"
  race: null, // the race's record from Race.json
  names: new Map(), // pilot id -> name, from the event's Pilots.json
  rounds: new Map(), // round id -> round number, from Rounds.json
  rows: new Map(), // pilot name -> {laps, last, best, lastAt}: what FPVTrackside's events said
  snapshot: null, // the latest positionSnapshot from FPVTrackside, by pilot name
  phase: null, // "started", "ended", from FPVTrackside's events
  feedUp: false,
  changed: new Set(),
};

async function getJSON(path) {
  const response = await fetch(base + path.replace(/^\//, ""), { cache: "no-store" });
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  const text = await response.text();
  return text.trim() ? JSON.parse(text) : [];
}

function eventDir(path) {
  const found = /^(\/events\/[^/]+\/)/.exec(path || "");
  return found ? found[1] : null;
}

async function loadRace() {
  const path = state.racePath;
  if (!path) return;
  try {
    const doc = await getJSON(path);
    if (path !== state.racePath) return; // another race began meanwhile
    state.race = Array.isArray(doc) && doc[0] && typeof doc[0] === "object" ? doc[0] : null;
    state.rows.clear();
    state.snapshot = null;
    state.phase = null;
  } catch (err) {
    // Kept as it was: the next change or event tries again.
  }
  render();
}

async function loadEventFiles() {
  const dir = eventDir(state.racePath);
  if (!dir) return;
  try {
    const pilots = await getJSON(dir + "Pilots.json");
    state.names = new Map(
      (Array.isArray(pilots) ? pilots : [])
        .filter((p) => p && typeof p.ID === "string")
        .map((p) => [p.ID, String(p.Name ?? "")]),
    );
    const rounds = await getJSON(dir + "Rounds.json");
    state.rounds = new Map(
      (Array.isArray(rounds) ? rounds : [])
        .filter((r) => r && typeof r.ID === "string")
        .map((r) => [r.ID, Number(r.RoundNumber)]),
    );
  } catch (err) {
    // Names and round numbers are a nicety: the board works without them.
  }
  render();
}

function seconds(text) {
  // FPVTrackside's times: "2025/01/29 19:11:09.495" (local time, as the laptop had it).
  const m = /^(\d+)\/(\d+)\/(\d+) (\d+):(\d+):(\d+)(?:\.(\d+))?$/.exec(text || "");
  if (!m) return null;
  const ms = Number((m[7] || "0").padEnd(3, "0").slice(0, 3));
  return Date.UTC(+m[1], +m[2] - 1, +m[3], +m[4], +m[5], +m[6], ms) / 1000;
}

// Pilots of the race from its Race.json: laps done, last and best lap, position.
function fromRaceFile(race) {
  const holeshot = race.PrimaryTimingSystemLocation !== "EndOfLap";
  const detections = new Map();
  for (const d of Array.isArray(race.Detections) ? race.Detections : []) {
    if (d && typeof d.ID === "string") detections.set(d.ID, d);
  }
  const pilots = new Map();
  for (const pc of Array.isArray(race.PilotChannels) ? race.PilotChannels : []) {
    if (pc && typeof pc.Pilot === "string") {
      pilots.set(pc.Pilot, { id: pc.Pilot, laps: 0, last: null, best: null, lastAt: null });
    }
  }
  for (const lap of Array.isArray(race.Laps) ? race.Laps : []) {
    const d = lap && detections.get(lap.Detection);
    if (!d || d.Valid === false || !pilots.has(d.Pilot)) continue;
    const row = pilots.get(d.Pilot);
    const at = seconds(d.Time);
    if (at !== null && (row.lastAt === null || at > row.lastAt)) row.lastAt = at;
    const number = Number(lap.LapNumber);
    if (holeshot && number < 1) continue; // the holeshot: the start, not a lap
    const length = Number(lap.LengthSeconds);
    if (!Number.isFinite(length)) continue;
    row.laps += 1;
    row.last = length;
    row.best = row.best === null ? length : Math.min(row.best, length);
  }
  return [...pilots.values()].map((row) => ({
    ...row,
    name: state.names.get(row.id) || "Pilot " + row.id.slice(0, 4),
  }));
}

function ordered(rows) {
  const snap = state.snapshot;
  return rows.sort((a, b) => {
    if (snap && snap.has(a.name) && snap.has(b.name)) return snap.get(a.name) - snap.get(b.name);
    if (b.laps !== a.laps) return b.laps - a.laps;
    return (a.lastAt ?? Infinity) - (b.lastAt ?? Infinity);
  });
}

function lapText(value) {
  return value === null || value === undefined ? "–" : value.toFixed(2);
}

function raceTitle(race) {
  const round = state.rounds.get(race.Round);
  const parts = [];
  if (Number.isFinite(round)) parts.push(`Round ${round}`);
  if (Number.isFinite(Number(race.RaceNumber))) parts.push(`Race ${race.RaceNumber}`);
  return parts.length ? parts.join(" · ") : "Live race";
}

function when(unix) {
  const at = new Date(unix * 1000);
  const minutes = Math.max(0, Math.round((Date.now() / 1000 - unix) / 60));
  const clock = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  return minutes < 1 ? `since ${clock}` : `since ${clock} (${minutes} min ago)`;
}

function renderStatus(race) {
  const status = $("status");
  let text;
  let kind;
  if (state.connected === false) {
    kind = "offline";
    text = "Box offline" + (state.since ? " " + when(state.since) : "") + ": these are the last results it sent, not live.";
  } else if (!state.feedUp) {
    kind = "stale";
    text = "Reconnecting to the relay…";
  } else if (!race) {
    kind = "stale";
    text = state.connected === null ? "Connecting…" : "Waiting for a race.";
  } else if (state.phase === "ended" || !NULL_DATE.test(race.End || "0001/")) {
    kind = "live";
    text = "Race finished.";
  } else if (NULL_DATE.test(race.Start || "0001/")) {
    kind = "live";
    text = "Next race: waiting for the start.";
  } else {
    kind = "live";
    text = "Live";
  }
  status.className = kind;
  status.textContent = text;
}

function render() {
  const race = state.race;
  renderStatus(race);
  $("title").textContent = race ? raceTitle(race) : "Live race";
  document.title = race ? raceTitle(race) + " – live" : "Live race";
  const body = $("board").tBodies[0];
  const rows = race ? fromRaceFile(race) : [];
  // What FPVTrackside's events said since the file was last read is newer: it wins.
  for (const row of rows) {
    const told = state.rows.get(row.name);
    if (told && told.laps >= row.laps) Object.assign(row, told);
  }
  body.replaceChildren();
  ordered(rows).forEach((row, index) => {
    const tr = body.insertRow();
    if (state.changed.has(row.name)) tr.className = "changed";
    for (const [text, cls] of [
      [String(index + 1), "pos"],
      [row.name, "name"],
      [String(row.laps), "laps"],
      [lapText(row.last), "last"],
      [lapText(row.best), "best"],
    ]) {
      const td = tr.insertCell();
      td.className = cls;
      td.textContent = text;
    }
  });
  state.changed.clear();
}

function onRaceEvent(event) {
  if (!event || typeof event.type !== "string") return;
  if (event.type === "RaceStart") state.phase = "started";
  if (event.type === "RaceEnd") state.phase = "ended";
  if (event.type !== "DetectionExt" || event.valid === false) return;
  const name = String(event.pilotName ?? "");
  if (Array.isArray(event.positionSnapshot)) {
    state.snapshot = new Map(
      event.positionSnapshot
        .filter((p) => p && typeof p.pilotName === "string")
        .map((p) => [p.pilotName, Number(p.position)]),
    );
  }
  if (event.isLapEnd) {
    const holeshot = Number(event.lapNumber) < 1;
    const row = state.rows.get(name) || { laps: 0, last: null, best: null, lastAt: null };
    const current = state.race ? fromRaceFile(state.race).find((r) => r.name === name) : null;
    const known = current && current.laps > row.laps ? current : row;
    const lap = Number(event.lapTimeSoFar);
    const next = { ...known, lastAt: Number(event.raceTime) };
    if (!holeshot && Number.isFinite(lap)) {
      // The lap's own number is the laps done: the race file may hold this lap already.
      next.laps = Math.max(known.laps, Number(event.lapNumber));
      next.last = lap;
      next.best = known.best === null ? lap : Math.min(known.best, lap);
    }
    state.rows.set(name, next);
    state.changed.add(name);
  }
  render();
}

function listen() {
  const feed = new EventSource(base + "pitlink/live");
  feed.onopen = () => {
    state.feedUp = true;
    render();
  };
  feed.onerror = () => {
    state.feedUp = false; // EventSource dials again by itself, resuming where it stopped
    render();
  };
  feed.addEventListener("pits", (e) => {
    const data = JSON.parse(e.data);
    state.connected = Boolean(data.connected);
    state.since = Number.isFinite(data.since) ? data.since : null;
    state.feedUp = true;
    render();
  });
  feed.addEventListener("race", (e) => {
    const data = JSON.parse(e.data);
    const path = typeof data.path === "string" ? data.path : null;
    if (path === state.racePath) return;
    const newEvent = eventDir(path) !== eventDir(state.racePath);
    state.racePath = path;
    state.race = null;
    state.rows.clear();
    state.snapshot = null;
    if (newEvent) loadEventFiles();
    loadRace();
  });
  feed.addEventListener("change", (e) => {
    const data = JSON.parse(e.data);
    if (data.path === state.racePath) loadRace();
    else if (eventDir(data.path) === eventDir(state.racePath) && /\/(Pilots|Rounds)\.json$/.test(data.path)) {
      loadEventFiles();
    }
  });
  feed.addEventListener("fpvtrackside", (e) => onRaceEvent(JSON.parse(e.data)));
}

render();
listen();
setInterval(() => {
  if (state.connected === false) renderStatus(state.race); // "n min ago" keeps counting
}, 30000);
