// Pitlink's age notice. The relay adds this script to the HTML pages it serves of a pits
// (cloud/age_notice.py). It asks the relay how the box at the pits stands (<pits base>/pitlink/age)
// and, while the box is offline or the relay serves old copies of its files, shows a bar across
// the top of the page saying since when: the page's own "updated" line shows the browser's
// clock, not the age of what it shows. Nothing shows while the box is connected and its files
// are fresh. It reads nothing but the relay's answer, and writes it as text only.
"use strict";
(() => {
  const me = document.currentScript;
  const url = me && me.src ? new URL(me.src, location.href) : null;
  // Only the relay's own state, on the page's own host: never an address the page chose.
  if (!url || url.origin !== location.origin || !/\/pitlink\/age\.js$/.test(url.pathname)) return;
  const endpoint = url.origin + url.pathname.replace(/\.js$/, "");

  let poll = 10; // seconds; the relay says how often (its --age-notice-poll)
  let lastAnswer = null; // the browser's time of the relay's last answer
  let timer = null;

  const host = document.createElement("div");
  host.setAttribute("data-pitlink-notice", "");
  for (const [name, value] of [
    ["all", "initial"],
    ["position", "fixed"],
    ["top", "0"],
    ["left", "0"],
    ["right", "0"],
    ["z-index", "2147483647"],
    ["display", "none"],
  ]) {
    host.style.setProperty(name, value, "important");
  }
  const root = host.attachShadow({ mode: "open" });
  const style = document.createElement("style");
  style.textContent =
    ".bar { font: 600 15px/1.35 system-ui, sans-serif; color: #fff; background: #b42318;" +
    " padding: .45em .8em; box-shadow: 0 2px 6px #0006; text-align: center; }" +
    " .bar.stale { background: #93370d; }";
  const bar = document.createElement("div");
  bar.className = "bar";
  bar.setAttribute("role", "status");
  bar.setAttribute("aria-live", "polite");
  root.append(style, bar);

  const clock = (unix) =>
    new Date(unix * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

  function ago(seconds) {
    const minutes = Math.floor(Math.max(0, seconds) / 60);
    if (minutes < 1) return "just now";
    if (minutes < 120) return `${minutes} min ago`;
    return `${Math.floor(minutes / 60)} h ago`;
  }

  // Kept in the document (hidden while all is well), where a page that rewrites its body
  // does not take it away by accident.
  function attach() {
    if (!host.isConnected) document.documentElement.append(host);
  }

  function show(kind, text) {
    attach();
    host.dataset.state = kind;
    host.style.setProperty("display", "block", "important");
    bar.className = kind === "offline" ? "bar" : "bar stale";
    bar.textContent = text;
  }

  function hide() {
    attach();
    host.dataset.state = "fresh";
    host.style.setProperty("display", "none", "important");
    bar.textContent = "";
  }

  const number = (value) => (typeof value === "number" && Number.isFinite(value) ? value : null);

  function render(state) {
    const now = number(state.now) ?? Date.now() / 1000; // the relay's clock: "ago" is right
    const since = number(state.since);
    const stale = number(state.staleSince);
    if (state.connected !== true) {
      if (since === null) {
        show("offline", "Pitlink: the box at the pits is not connected — what you see is old, not live.");
      } else {
        const at = clock(since);
        show(
          "offline",
          `Pitlink: the box at the pits has been offline since ${at} (${ago(now - since)})` +
            ` — what you see is from ${at} or earlier, not live.`,
        );
      }
    } else if (stale !== null) {
      const at = clock(stale);
      show(
        "stale",
        `Pitlink: nothing new has come from the pits since ${at} (${ago(now - stale)})` +
          ` — what you see is from ${at}, not live.`,
      );
    } else {
      hide();
    }
  }

  async function look() {
    clearTimeout(timer);
    try {
      const response = await fetch(endpoint, { cache: "no-store", credentials: "omit" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const state = await response.json();
      if (!state || typeof state !== "object") throw new Error("not an object");
      lastAnswer = Date.now();
      const every = number(state.poll);
      if (every !== null) poll = Math.min(600, Math.max(0.1, every));
      render(state);
    } catch (err) {
      // The relay is out of reach (the phone's own network, or the relay): the page's data
      // is not coming either. Said once a look has failed for longer than two polls.
      if (lastAnswer === null || Date.now() - lastAnswer > 2 * poll * 1000) {
        const at = clock((lastAnswer ?? Date.now()) / 1000);
        show("unreachable", `Pitlink: no answer from the relay since ${at} — what you see may be out of date.`);
      }
    }
    timer = setTimeout(look, poll * 1000);
  }

  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") look();
  });
  window.addEventListener("online", look);
  look();
})();
