// finetune arena voting page. Model text is only ever placed with textContent (never innerHTML).
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  let rater = (params.get("rater") || "").trim();
  let criterion = params.get("criterion") || "";
  let config = null;
  let current = null;
  let revealed = false;
  let busy = false;

  const $ = (id) => document.getElementById(id);
  const KEYS = { "1": "a", a: "a", "2": "b", b: "b", "3": "tie", t: "tie", "4": "bad", x: "bad" };
  const LABELS = { a: "A is better", b: "B is better", tie: "Tie", bad: "Both bad" };

  // A link to one of our pages that keeps the token (and rater/criterion) along.
  function link(path, extra) {
    const q = new URLSearchParams();
    if (token) q.set("token", token);
    for (const [key, value] of Object.entries(extra || {})) if (value) q.set(key, value);
    const s = q.toString();
    return path + (s ? "?" + s : "");
  }

  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    opts.headers = Object.assign({}, opts.headers || {});
    if (token) opts.headers["X-Arena-Token"] = token;
    const response = await fetch(path, opts);
    let body = null;
    try { body = await response.json(); } catch (e) { body = null; }
    if (!response.ok) throw new Error((body && body.error) || "HTTP " + response.status);
    return body;
  }

  function showError(message) {
    const box = $("error");
    box.textContent = message || "";
    box.hidden = !message;
  }

  function clear(node) { while (node.firstChild) node.removeChild(node.firstChild); }

  function item(text, cls) {
    const li = document.createElement("li");
    li.textContent = text;
    if (cls) li.className = cls;
    return li;
  }

  function show(section) {
    for (const id of ["name-box", "arena", "done"]) $(id).hidden = id !== section;
  }

  function setLinks() {
    $("board-link").href = link("/leaderboard", { rater: rater, criterion: criterion });
    $("home-link").href = link("/", { rater: rater, criterion: criterion });
    $("done-board").href = $("board-link").href;
    history.replaceState(null, "", link("/", { rater: rater, criterion: criterion }));
  }

  function askName() {
    show("name-box");
    const input = $("name-input");
    try { input.value = localStorage.getItem("arena-rater") || ""; } catch (e) { /* storage may be off */ }
    input.focus();
  }

  function renderTabs() {
    const nav = $("criteria");
    clear(nav);
    nav.hidden = config.criteria.length < 2;
    for (const c of config.criteria) {
      const a = document.createElement("a");
      a.href = link("/", { rater: rater, criterion: c.id });
      a.textContent = c.id;
      a.title = c.question;
      if (c.id === criterion) a.setAttribute("aria-current", "page");
      nav.appendChild(a);
    }
  }

  function setProgress(p) {
    if (p) $("progress").textContent = "Voted " + p.voted + " of " + p.total;
  }

  function renderHistory(side, replies) {
    const box = $("hist-" + side);
    box.hidden = !replies.length;
    box.open = false;
    box.querySelector("summary").textContent = "This side's earlier replies (" + replies.length + ")";
    const list = box.querySelector("ol");
    clear(list);
    replies.forEach((text) => list.appendChild(item(text)));
  }

  function renderPair(pair) {
    current = pair;
    revealed = false;
    $("question").textContent = pair.question;
    const turns = pair.prompt || [];
    $("prompt-title").textContent = turns.length > 1
      ? "Conversation: the user's turns (each answer continues its own earlier replies)"
      : "Prompt";
    const list = $("prompt");
    clear(list);
    turns.forEach((m, i) => list.appendChild(item(m.content, i === turns.length - 1 ? "current" : "")));
    for (const side of ["a", "b"]) {
      $("text-" + side).textContent = pair[side];
      $("text-" + side).scrollTop = 0;
      $("arm-" + side).textContent = "";
      $("side-" + side).classList.remove("chosen");
      renderHistory(side, pair[side + "_history"] || []);
    }
    for (const button of $("buttons").querySelectorAll("button")) button.disabled = false;
    $("after").hidden = true;
    setProgress(pair.progress);
    show("arena");
  }

  async function loadPair() {
    if (busy) return;
    busy = true;
    showError("");
    try {
      const pair = await api(link("/api/pair", { rater: rater, criterion: criterion }));
      if (pair.done) {
        current = null;
        setProgress(pair.progress);
        $("done-text").textContent = "You have rated every pair for \u201c" + pair.question + "\u201d. Thank you!";
        show("done");
      } else {
        renderPair(pair);
      }
    } catch (e) {
      showError(e.message);
    } finally {
      busy = false;
    }
  }

  function reveal(result, choice) {
    revealed = true;
    // Only the arm names are revealed: showing the automatic style score would teach raters to agree
    // with it, and the leaderboard reports how often they do.
    for (const side of ["a", "b"]) $("arm-" + side).textContent = result[side].arm;
    if (choice === "a" || choice === "b") $("side-" + choice).classList.add("chosen");
    $("verdict").textContent = "You chose: " + LABELS[choice] + ".";
    $("after").hidden = false;
    setProgress(result.progress);
    $("next").focus();
  }

  async function vote(choice) {
    if (!current || revealed || busy) return;
    busy = true;
    showError("");
    const buttons = $("buttons").querySelectorAll("button");
    for (const button of buttons) button.disabled = true;
    try {
      const result = await api("/api/vote", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ pair_id: current.pair_id, rater: rater, choice: choice }),
      });
      reveal(result, choice);
    } catch (e) {
      showError(e.message);
      for (const button of buttons) button.disabled = false;
    } finally {
      busy = false;
    }
  }

  async function start() {
    setLinks();
    if (!rater) { askName(); return; }
    $("who").textContent = "Rating as " + rater;
    try {
      config = await api("/api/config");
    } catch (e) {
      showError(e.message);
      return;
    }
    if (!config.criteria.some((c) => c.id === criterion)) criterion = config.criteria[0].id;
    setLinks();
    renderTabs();
    await loadPair();
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("name-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const name = $("name-input").value.trim();
      if (!name) return;
      rater = name;
      try { localStorage.setItem("arena-rater", name); } catch (e) { /* storage may be off */ }
      start();
    });
    for (const button of $("buttons").querySelectorAll("button")) {
      button.addEventListener("click", () => vote(button.dataset.choice));
    }
    $("next").addEventListener("click", () => loadPair());
    document.addEventListener("keydown", (event) => {
      if (event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.target instanceof HTMLInputElement || event.target instanceof HTMLTextAreaElement) return;
      if ($("arena").hidden) return;
      const key = event.key.toLowerCase();
      if (!revealed && KEYS[key]) {
        event.preventDefault();
        vote(KEYS[key]);
      } else if (revealed && (key === "enter" || key === "n")) {
        event.preventDefault();
        loadPair();
      }
    });
    start();
  });
})();
