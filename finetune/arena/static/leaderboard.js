// finetune arena leaderboard page. Every name and number is placed with textContent.
"use strict";

(() => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token") || "";
  const $ = (id) => document.getElementById(id);

  function link(path, extra) {
    const q = new URLSearchParams();
    if (token) q.set("token", token);
    for (const [key, value] of Object.entries(extra || {})) if (value) q.set(key, value);
    const s = q.toString();
    return path + (s ? "?" + s : "");
  }

  function el(tag, text, cls) {
    const node = document.createElement(tag);
    if (text !== undefined && text !== null) node.textContent = String(text);
    if (cls) node.className = cls;
    return node;
  }

  function table(headers, rows) {
    const t = el("table");
    const head = t.createTHead().insertRow();
    for (const h of headers) head.appendChild(el("th", h));
    const body = t.createTBody();
    for (const row of rows) {
      const tr = body.insertRow();
      row.forEach((cell, i) => {
        if (cell instanceof Node) {
          const td = tr.insertCell();
          td.appendChild(cell);
        } else {
          tr.appendChild(el("td", cell, i === 0 ? "arm-name" : ""));
        }
      });
    }
    return t;
  }

  const pct = (x) => (x === null || x === undefined ? "\u2013" : Math.round(x * 100) + "%");

  function ciBar(row, lo, hi) {
    const bar = el("div", null, "ci");
    if (!row.ci95 || hi <= lo) return bar;
    const x = (v) => ((v - lo) / (hi - lo)) * 100 + "%";
    const span = el("span");
    span.style.left = x(row.ci95[0]);
    span.style.width = ((row.ci95[1] - row.ci95[0]) / (hi - lo)) * 100 + "%";
    const mark = el("b");
    mark.style.left = "calc(" + x(row.rating) + " - 1px)";
    bar.append(span, mark);
    return bar;
  }

  function renderBoard(board, questions) {
    const box = el("section", null, "card board");
    box.appendChild(el("h2", board.name + ": " + (questions[board.criterion] || board.criterion)));
    box.appendChild(el("p", board.votes + " votes from " + board.raters + " rater(s); criterion "
      + board.criterion + "; run " + board.run + ".", "muted"));
    const lows = board.arms.map((r) => (r.ci95 ? r.ci95[0] : r.rating));
    const highs = board.arms.map((r) => (r.ci95 ? r.ci95[1] : r.rating));
    const lo = Math.min(...lows) - 10;
    const hi = Math.max(...highs) + 10;
    box.appendChild(table(
      ["Arm", "Rating", "95% CI", "", "Votes", "Wins", "Losses", "Ties", "Both bad"],
      board.arms.map((r) => [
        r.arm, Math.round(r.rating),
        r.ci95 ? Math.round(r.ci95[0]) + " to " + Math.round(r.ci95[1]) : "\u2013",
        ciBar(r, lo, hi), r.votes, r.wins, r.losses, r.ties, r.both_bad,
      ]),
    ));

    const arms = board.arms.map((r) => r.arm);
    box.appendChild(el("h3", "Win rate of the row arm against the column arm (ties count 1/2)"));
    box.appendChild(table(
      [""].concat(arms),
      arms.map((x) => [x].concat(arms.map((y) => (x === y ? "" : pct((board.win_rate[x] || {})[y]))))),
    ));

    box.appendChild(el("h3", "Votes per arm pair"));
    box.appendChild(table(
      ["Arms", "Votes", "Wins (first)", "Wins (second)", "Ties", "Both bad"],
      board.pairs.map((p) => [
        p.arms[0] + " vs " + p.arms[1], p.votes, p.wins[p.arms[0]], p.wins[p.arms[1]], p.ties, p.both_bad,
      ]),
    ));

    const agree = board.style_agreement;
    if (agree) {
      const text = agree.votes
        ? "Agreement with the automatic style score: " + pct(agree.rate) + " of " + agree.votes
          + " decisive votes (95% CI " + pct(agree.ci95[0]) + " to " + pct(agree.ci95[1]) + ")."
        : "Agreement with the automatic style score: no decisive votes where both answers have a style score yet.";
      box.appendChild(el("p", text));
    }
    return box;
  }

  async function load() {
    const box = $("error");
    box.hidden = true;
    try {
      const headers = token ? { "X-Arena-Token": token } : {};
      const response = await fetch(link("/api/results"), { headers: headers });
      const data = await response.json();
      if (!response.ok) throw new Error(data.error || "HTTP " + response.status);
      const boards = $("boards");
      while (boards.firstChild) boards.removeChild(boards.firstChild);
      $("summary").textContent = data.total_votes + " votes in total.";
      if (!data.boards.length) boards.appendChild(el("p", "No votes yet.", "muted"));
      for (const board of data.boards) boards.appendChild(renderBoard(board, data.questions));
      const method = $("method");
      while (method.firstChild) method.removeChild(method.firstChild);
      for (const [key, value] of Object.entries(data.method)) method.appendChild(el("li", key + ": " + value));
    } catch (e) {
      box.textContent = e.message;
      box.hidden = false;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    const back = link("/", { rater: params.get("rater"), criterion: params.get("criterion") });
    $("vote-link").href = back;
    $("home-link").href = back;
    $("refresh").addEventListener("click", load);
    load();
  });
})();
