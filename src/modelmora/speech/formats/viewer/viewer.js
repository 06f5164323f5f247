// ModelMora transcript viewer: builds the turns from the JSON in #mm-data, keeps the word being
// spoken highlighted, and lets the reader search, rename speakers, correct words and export.
// Plain ES2020, no dependencies: the page must open from a file with no network.
(() => {
  "use strict";
  const data = JSON.parse(document.getElementById("mm-data").textContent);
  const audio = document.getElementById("mm-audio");
  const view = document.getElementById("mm-transcript");
  const search = document.getElementById("mm-search");
  const hitsLabel = document.getElementById("mm-hits");
  const follow = document.getElementById("mm-follow");
  const names = data.speakers.slice(); // the current name of each speaker, by index
  const words = []; // {s, e, text, p, seg, el}: every word (or word-less segment), in order
  const turns = []; // {spk, first, last, el}: word index range of each turn
  let starts = new Float64Array(0);
  let current = -1;
  let holdFollowUntil = 0;

  const pad = (n, w = 2) => String(n).padStart(w, "0");
  function stamp(t, sep = ".", ms = true) {
    const total = Math.round(Math.max(t, 0) * 1000);
    const h = Math.floor(total / 3600000), m = Math.floor(total / 60000) % 60;
    const s = Math.floor(total / 1000) % 60;
    const base = `${pad(h)}:${pad(m)}:${pad(s)}`;
    return ms ? `${base}${sep}${pad(total % 1000, 3)}` : base;
  }
  const colour = (spk) => (spk < 0 ? "#888" : data.colours[spk % data.colours.length]);
  const speakerName = (spk) => (spk < 0 ? null : names[spk]);

  function wordSpan(index, word) {
    const span = document.createElement("span");
    span.className = "w";
    span.dataset.i = index;
    span.textContent = word.text.trim();
    if (word.p < data.low) {
      span.classList.add("low");
      span.title = `confidence ${word.p.toFixed(2)}`;
    }
    return span;
  }

  function newTurn(spk, start) {
    const el = document.createElement("section");
    el.className = "turn";
    el.style.setProperty("--c", colour(spk));
    const head = document.createElement("header");
    if (spk >= 0) {
      const label = document.createElement("button");
      label.type = "button";
      label.className = "spk";
      label.dataset.spk = spk;
      label.textContent = names[spk];
      label.title = "Rename this speaker";
      head.append(label);
    }
    const time = document.createElement("span");
    time.className = "ts";
    time.dataset.t = start;
    time.textContent = `[${stamp(start, ".", false)}]`;
    head.append(time);
    const text = document.createElement("p");
    text.className = "text";
    el.append(head, text);
    return { spk, first: words.length, last: words.length, el, text };
  }

  function build() {
    const frag = document.createDocumentFragment();
    let turn = null, count = 0, lastEnd = 0;
    const [pause, most] = data.paragraph;
    data.segments.forEach(([s, e, spk, text, segWords], seg) => {
      // Without speakers, a pause or a run of segments starts a paragraph (as in the DOCX).
      const cut = spk < 0 && (s - lastEnd >= pause || count >= most);
      if (turn === null || turn.spk !== spk || cut) {
        turn = newTurn(spk, s);
        turns.push(turn);
        frag.append(turn.el);
        count = 0;
      }
      count += 1;
      lastEnd = e;
      const items = segWords.length
        ? segWords.map(([ws, we, wt, p]) => ({ s: ws, e: we, text: wt, p, seg }))
        : [{ s, e, text: ` ${text}`, p: 1, seg }];
      for (const word of items) {
        if (turn.text.childNodes.length) turn.text.append(" ");
        turn.text.append(wordSpan(words.length, word));
        words.push(word);
      }
      turn.last = words.length;
    });
    view.replaceChildren(frag);
    starts = Float64Array.from(words, (w) => w.s);
    for (const w of view.querySelectorAll(".w")) words[+w.dataset.i].el = w;
  }

  function buildSpeakers() {
    const box = document.getElementById("mm-speakers");
    names.forEach((name, spk) => {
      const input = document.createElement("input");
      input.className = "mm-name";
      input.dataset.spk = spk;
      input.value = name;
      input.title = `Rename ${data.speakers[spk]} everywhere`;
      input.style.setProperty("--c", colour(spk));
      input.addEventListener("change", () => rename(spk, input.value));
      input.addEventListener("blur", () => { input.value = names[spk]; });
      box.append(input);
    });
  }

  /** Give speaker `spk` a new name in every turn (and in the exports). */
  function rename(spk, name) {
    names[spk] = name.trim() || data.speakers[spk];
    for (const label of view.querySelectorAll(`.spk[data-spk="${spk}"]`)) {
      label.textContent = names[spk];
    }
    const input = document.querySelector(`.mm-name[data-spk="${spk}"]`);
    // While the reader types in it, an emptied box stays empty (it is filled back on blur).
    if (input && input !== document.activeElement) input.value = names[spk];
  }

  // --- playback: the word at the current time, kept in view -----------------------------------
  function wordAt(t) {
    let lo = 0, hi = starts.length - 1, found = -1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      if (starts[mid] <= t + 1e-3) { found = mid; lo = mid + 1; } else hi = mid - 1;
    }
    return found;
  }

  function keepInView(el) {
    if (!follow.checked || Date.now() < holdFollowUntil) return;
    const box = el.getBoundingClientRect();
    const top = document.getElementById("mm-bar").getBoundingClientRect().bottom;
    if (box.top < top + 8 || box.bottom > window.innerHeight - 40) {
      el.scrollIntoView({ block: "center" });
    }
  }

  function tick() {
    const index = wordAt(audio.currentTime);
    if (index !== current) {
      if (current >= 0) words[current].el.classList.remove("now");
      current = index;
      if (index >= 0) {
        words[index].el.classList.add("now");
        keepInView(words[index].el);
      }
    }
  }

  function loop() {
    tick();
    if (!audio.paused) requestAnimationFrame(loop);
  }

  function seek(t) {
    audio.currentTime = t;
    holdFollowUntil = 0;
    tick();
  }

  function togglePlay() {
    if (audio.paused) audio.play().catch((err) => console.warn("cannot play:", err.message));
    else audio.pause();
  }

  // --- correcting a word ---------------------------------------------------------------------
  function edit(el) {
    const word = words[+el.dataset.i];
    const before = el.textContent;
    el.contentEditable = "true";
    el.focus();
    document.getSelection().selectAllChildren(el);
    const done = (keep) => {
      el.contentEditable = "false";
      el.removeEventListener("keydown", onKey);
      el.removeEventListener("blur", onBlur);
      const text = el.textContent.replace(/\s+/g, " ").trim();
      if (!keep || !text) { el.textContent = before; return; }
      el.textContent = text;
      if (text !== before) {
        word.text = (/^\s/.test(word.text) ? " " : "") + text;
        el.classList.add("edited");
      }
    };
    const onKey = (e) => {
      if (e.key === "Enter") { e.preventDefault(); el.blur(); }
      else if (e.key === "Escape") { done(false); el.blur(); }
    };
    const onBlur = () => done(true);
    el.addEventListener("keydown", onKey);
    el.addEventListener("blur", onBlur);
  }

  // --- search --------------------------------------------------------------------------------
  let hits = [], hitAt = -1, haystacks = null;

  function indexTurns() {
    // Each turn's text (lower case) and, for each word, where its text starts in it.
    return turns.map((turn) => {
      let text = "";
      const offsets = [];
      for (let i = turn.first; i < turn.last; i++) {
        if (text) text += " ";
        offsets.push(text.length);
        text += words[i].text.trim().toLowerCase();
      }
      return { turn, text, offsets };
    });
  }

  function find(query) {
    for (const i of hits.flat()) words[i].el.classList.remove("hit", "hit-now");
    hits = [];
    hitAt = -1;
    const q = query.trim().toLowerCase().replace(/\s+/g, " ");
    if (q) {
      haystacks = haystacks || indexTurns();
      for (const { turn, text, offsets } of haystacks) {
        for (let at = text.indexOf(q); at >= 0; at = text.indexOf(q, at + 1)) {
          const hit = [];
          offsets.forEach((o, k) => {
            const end = o + words[turn.first + k].text.trim().length;
            if (end > at && o < at + q.length) hit.push(turn.first + k);
          });
          hits.push(hit);
        }
      }
      for (const i of hits.flat()) words[i].el.classList.add("hit");
    }
    hitsLabel.textContent = q ? `${hits.length} found` : "";
    if (hits.length) step(1);
  }

  function step(direction) {
    if (!hits.length) return;
    if (hitAt >= 0) for (const i of hits[hitAt]) words[i].el.classList.remove("hit-now");
    hitAt = (hitAt + direction + hits.length) % hits.length;
    for (const i of hits[hitAt]) words[i].el.classList.add("hit-now");
    holdFollowUntil = Date.now() + 5000; // reading a search hit: do not jump back to playback
    words[hits[hitAt][0]].el.scrollIntoView({ block: "center" });
    hitsLabel.textContent = `${hitAt + 1} of ${hits.length}`;
  }

  // --- export the corrected transcript ---------------------------------------------------------
  function segmentsNow() {
    const out = data.segments.map(([s, e, spk, text], id) => ({ id, s, e, spk, text, words: [] }));
    for (const w of words) {
      if (data.segments[w.seg][4].length) out[w.seg].words.push(w);
      else out[w.seg].text = w.text.trim();
    }
    for (const seg of out) {
      if (seg.words.length) seg.text = seg.words.map((w) => w.text).join("").trim();
    }
    return out;
  }

  const escapeVtt = (t) => t.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

  function exportText(kind) {
    const segs = segmentsNow();
    const label = (seg) => speakerName(seg.spk);
    if (kind === "srt") {
      return segs.map((seg, n) => {
        const who = label(seg) ? `${label(seg)}: ` : "";
        return `${n + 1}\n${stamp(seg.s, ",")} --> ${stamp(seg.e, ",")}\n${who}${seg.text}\n\n`;
      }).join("");
    }
    if (kind === "vtt") {
      return "WEBVTT\n\n" + segs.map((seg) => {
        const who = label(seg) ? `<v ${escapeVtt(label(seg))}>` : "";
        return `${stamp(seg.s)} --> ${stamp(seg.e)}\n${who}${escapeVtt(seg.text)}\n\n`;
      }).join("");
    }
    if (kind === "json") {
      const seg = (x) => ({
        id: x.id, start: x.s, end: x.e, text: ` ${x.text}`,
        words: x.words.map((w) => ({ word: w.text, start: w.s, end: w.e, score: w.p,
          ...(x.spk >= 0 ? { speaker: label(x) } : {}) })),
        ...(x.spk >= 0 ? { speaker: label(x) } : {}),
      });
      const doc = { segments: segs.map(seg), language: data.language, duration: data.duration };
      return JSON.stringify(doc, null, 2) + "\n";
    }
    if (kind === "txt") {
      return turns.map((turn) => {
        const text = segs.slice(words[turn.first].seg, words[turn.last - 1].seg + 1)
          .map((s) => s.text).join(" ");
        const who = turn.spk >= 0 ? `${names[turn.spk]}: ` : "";
        return `[${stamp(words[turn.first].s, ".", false)}] ${who}${text}\n\n`;
      }).join("");
    }
    throw new Error(`unknown export format ${kind}: use txt, srt, vtt or json`);
  }

  function download(kind) {
    const types = { txt: "text/plain", srt: "application/x-subrip", vtt: "text/vtt",
      json: "application/json" };
    const blob = new Blob([exportText(kind)], { type: `${types[kind]};charset=utf-8` });
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = `${data.stem}.${kind}`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  }

  // --- wiring ----------------------------------------------------------------------------------
  const editing = (el) =>
    el instanceof HTMLElement && (el.isContentEditable || /^(INPUT|TEXTAREA|SELECT|BUTTON|AUDIO)$/.test(el.tagName));

  view.addEventListener("click", (e) => {
    const word = e.target.closest(".w");
    if (word && !word.isContentEditable) return seek(words[+word.dataset.i].s);
    const time = e.target.closest(".ts");
    if (time) return seek(+time.dataset.t);
    const label = e.target.closest(".spk");
    if (label) {
      const input = document.querySelector(`.mm-name[data-spk="${label.dataset.spk}"]`);
      input.focus();
      input.select();
    }
  });
  view.addEventListener("dblclick", (e) => {
    const word = e.target.closest(".w");
    if (word) edit(word);
  });
  document.addEventListener("keydown", (e) => {
    if ((e.key === " " || e.code === "Space") && !editing(e.target)) {
      e.preventDefault();
      togglePlay();
    }
  });
  for (const kind of ["wheel", "touchmove"]) {
    window.addEventListener(kind, () => { holdFollowUntil = Date.now() + 4000; }, { passive: true });
  }
  let timer = 0;
  search.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => find(search.value), 150);
  });
  search.addEventListener("keydown", (e) => {
    if (e.key !== "Enter") return;
    clearTimeout(timer);
    if (!hits.length) find(search.value);
    else step(e.shiftKey ? -1 : 1);
  });
  for (const button of document.querySelectorAll("[data-export]")) {
    button.addEventListener("click", () => download(button.dataset.export));
  }
  audio.addEventListener("play", () => requestAnimationFrame(loop));
  audio.addEventListener("seeked", tick);
  audio.addEventListener("pause", tick);
  audio.addEventListener("timeupdate", tick);

  build();
  buildSpeakers();
  const plural = (n, what) => `${n} ${what}${n === 1 ? "" : "s"}`;
  document.getElementById("mm-info").textContent = [stamp(data.duration, ".", false),
    plural(names.length, "speaker"), plural(words.length, "word")].join(" · ");
  // For scripts and tests driving the page.
  window.modelmora = { exportText, rename, seek, find, names, words, ready: true };
})();
