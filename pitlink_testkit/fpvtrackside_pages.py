"""The page FPVTrackside serves at ``/``, and the script and style it loads, in the same shape.

Scripts and styles by absolute ``/httpfiles/...`` paths, data relative to the page
(``%eventDirectory%/...``, which the web server fills in), the event found by
``new EventManager("events/<id>")``. It shows the race running now and follows it.
"""

from __future__ import annotations

import re

#: How clients find the open event in the page FPVTrackside serves at ``/``.
EVENT_RE = re.compile(r'new EventManager\("events/([a-z0-9-]+)"')
EVENT_PLACEHOLDER = "%eventDirectory%"

INDEX_HTML = """<!DOCTYPE html>
<html>
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>FPVTrackside</title>
<link rel="stylesheet" href="/httpfiles/style.css">
<script src="/httpfiles/EventManager.js"></script>
</head>
<body>
<h1 id="event-name">FPVTrackside</h1>
<p id="race">Loading the event&hellip;</p>
<table id="laps"><thead><tr><th>Pilot</th><th>Laps</th><th>Last lap</th></tr></thead>
<tbody></tbody></table>
<p id="updated" data-updates="0"></p>
<script>
  var eventManager = new EventManager("%eventDirectory%");
</script>
</body>
</html>
"""

EVENT_MANAGER_JS = """"use strict";
// Loads the event from `<eventDirectory>/...` (relative to the page) and shows the race running
// now: the first race of the event that has not ended. Refreshes every second.
function EventManager(eventDirectory) {
  this.dir = eventDirectory;
  this.pilots = {};
  this.races = [];
  this.current = 0;
  this.updates = 0;
  var self = this;
  this.load().then(function () {
    self.tick();
    setInterval(function () { self.tick(); }, 1000);
  }).catch(function (e) { self.say("The event did not load: " + e.message); });
}

EventManager.prototype.get = function (file) {
  return fetch(this.dir + "/" + file, { cache: "no-store" }).then(function (r) {
    if (!r.ok) { throw new Error(file + " answered HTTP " + r.status); }
    return r.json();
  });
};

EventManager.prototype.load = function () {
  var self = this;
  return Promise.all([this.get("Event.json"), this.get("Pilots.json")]).then(function (got) {
    var event = got[0][0] || {};
    self.races = event.Races || [];
    document.getElementById("event-name").textContent = event.Name || "Event";
    got[1].forEach(function (p) { self.pilots[p.ID] = p.Name; });
  });
};

EventManager.prototype.say = function (text) {
  document.getElementById("race").textContent = text;
};

function ended(date) { return !!date && date.indexOf("0001/") !== 0; }

EventManager.prototype.tick = function () {
  var self = this;
  if (!this.races.length) { this.say("No race yet."); return; }
  this.get(this.races[this.current] + "/Race.json").then(function (got) {
    var race = got[0];
    if (!race) { return; }
    if (ended(race.End) && self.current < self.races.length - 1) {
      self.current += 1;  // that one is over: follow the next
      return;
    }
    self.render(race);
  }).catch(function () { /* a half-written file: the next tick reads it again */ });
};

EventManager.prototype.render = function (race) {
  var pilotOf = {};
  (race.Detections || []).forEach(function (d) { pilotOf[d.ID] = d.Pilot; });
  var laps = {};
  (race.Laps || []).forEach(function (lap) {
    var pilot = pilotOf[lap.Detection];
    if (!pilot || lap.LapNumber < 1) { return; }
    laps[pilot] = { count: lap.LapNumber, last: lap.LengthSeconds };
  });
  var state = ended(race.End) ? "finished" : ended(race.Start) ? "running" : "next";
  this.say("Race " + race.RaceNumber + ", " + state);
  var body = document.querySelector("#laps tbody");
  body.replaceChildren();
  var self = this;
  (race.PilotChannels || []).forEach(function (pc) {
    var row = document.createElement("tr");
    var done = laps[pc.Pilot] || { count: 0, last: null };
    [self.pilots[pc.Pilot] || "?", String(done.count),
     done.last === null ? "" : done.last.toFixed(2) + " s"].forEach(function (text) {
      var cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    });
    body.append(row);
  });
  this.updates += 1;
  var updated = document.getElementById("updated");
  updated.dataset.updates = String(this.updates);
  updated.textContent = "Updated " + new Date().toLocaleTimeString() + ".";
};
"""

STYLE_CSS = """body { font: 16px/1.4 system-ui, sans-serif; margin: 1em auto; max-width: 40em; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: 4px 8px; border-bottom: 1px solid #ccc; }
"""
