
(function () {
  "use strict";
  var D = JSON.parse(document.getElementById("fs-data").textContent);
  var S = JSON.parse(document.getElementById("fs-specs").textContent);
  var T = D.tokens, F = D.features, L = D.layout, TITLES = D.titles, RGB = D.rgb;
  var pos = new Map(F.map(function (f, k) { return [f.i, k]; }));
  var current = -1;
  var vegaReady = null;

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function bg(a, mx) {
    if (!(a > 0) || !(mx > 0)) return "transparent";
    var x = Math.min(1, a / mx);
    return "rgba(" + RGB[0] + "," + RGB[1] + "," + RGB[2] + "," + (0.12 + 0.78 * x).toFixed(3) + ")";
  }
  function example(ex, mx) {
    var seq = ex[0], start = ex[1], q = ex[2], ids = ex[3], acts = ex[4], eff = ex[5];
    var div = el("div", "fs-ex");
    div.appendChild(el("span", "fs-meta", "seq " + seq));
    for (var j = 0; j < ids.length; j++) {
      var a = acts[j], p = start + j, t = T[ids[j]];
      var s = el("span", j === q ? "fs-tok fs-q" : "fs-tok");
      s.style.background = bg(a, mx);
      s.setAttribute("data-act", a.toFixed(4));
      s.setAttribute("data-pos", String(p));
      s.appendChild(document.createTextNode(t[0]));
      var tip = "token " + t[1] + "\nactivation " + a.toFixed(4) + "\nposition " + p;
      if (eff && eff[j]) tip += "\n" + eff[j];
      s.appendChild(el("span", "fs-tip", tip));
      div.appendChild(s);
    }
    return div;
  }
  function examples(list, mx, box) {
    if (!list || !list.length) { box.appendChild(el("div", "fs-meta", "no examples")); return; }
    for (var k = 0; k < list.length; k++) box.appendChild(example(list[k], mx));
  }
  function rows(h, signed) {
    var e = h[0], c = h[1], out = [];
    for (var k = 0; k < c.length; k++) {
      var lo = e[k], hi = e[k + 1], mid = (lo + hi) / 2;
      var r = { lo: lo, hi: hi, count: c[k], mid: mid };
      if (signed) r.sign = mid < 0 ? "negative" : "positive";
      out.push(r);
    }
    return out;
  }
  function loadVega() {
    if (vegaReady) return vegaReady;
    if (window.vegaEmbed) { vegaReady = Promise.resolve(); return vegaReady; }
    var packed = document.getElementById("fs-vega-gz");
    if (!packed) { vegaReady = Promise.reject(new Error("no chart library in this file")); return vegaReady; }
    if (typeof DecompressionStream === "undefined") {
      vegaReady = Promise.reject(new Error("this browser has no DecompressionStream; re-export with js='plain'"));
      return vegaReady;
    }
    var bin = atob(packed.textContent.trim());
    var bytes = new Uint8Array(bin.length);
    for (var k = 0; k < bin.length; k++) bytes[k] = bin.charCodeAt(k);
    var stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
    vegaReady = new Response(stream).text().then(function (code) {
      var s = document.createElement("script");
      s.textContent = code;
      document.head.appendChild(s);
      if (!window.vegaEmbed) throw new Error("the chart library did not load");
    });
    return vegaReady;
  }
  function chart(box, key, f) {
    var h = key === "act_hist" ? f.ah : f.lh;
    if (!h) {
      box.appendChild(el("div", "fs-meta", key === "act_hist" ? "the feature never fires"
        : "no logit effects: the decoder does not write to the residual stream"));
      return;
    }
    var spec = JSON.parse(JSON.stringify(S[key]));
    spec.data = { values: rows(h, key === "logit_hist") };
    if (key === "act_hist" && f.aht) spec.title = f.aht;
    var holder = el("div", "fs-chart");
    box.appendChild(holder);
    loadVega().then(function () {
      return window.vegaEmbed(holder, spec, { actions: false, renderer: "svg" });
    }).catch(function (err) {
      holder.appendChild(el("div", "fs-note", "chart not drawn: " + err.message));
    });
  }
  function render(k) {
    if (k < 0 || k >= F.length) return;
    current = k;
    var f = F[k];
    var main = document.getElementById("fs-page");
    main.textContent = "";
    var label = D.labels[String(f.i)];
    main.appendChild(el("h2", null, "Feature " + f.i + (label ? " \u2014 " + label : "")));
    var note = D.notes && D.notes[String(f.i)];
    if (note) {
      var box = el("div", "fs-notes");
      box.innerHTML = note; // markdown-it output with raw HTML off (core/export/notes.py)
      main.appendChild(box);
    }
    for (var n = 0; n < L.length; n++) {
      var key = L[n];
      var sec = el("section");
      sec.setAttribute("data-component", key);
      sec.appendChild(el("h3", null, TITLES[key]));
      var box = el("div", "fs-body");
      sec.appendChild(box);
      if (key === "act_hist" || key === "logit_hist") chart(box, key, f);
      else if (key === "top_examples") {
        examples(f.top, f.mx, box);
        if (f.html.bottom) {  // a signed feature's most negative examples, escaped in Python
          var bottom = el("div");
          bottom.innerHTML = f.html.bottom;
          box.appendChild(bottom);
        }
        if (f.html.dfa) {  // direct feature attribution, escaped in Python
          var dfa = el("div", "fs-dfa");
          dfa.innerHTML = f.html.dfa;
          box.appendChild(dfa);
        }
        if (f.html.whole) {  // whole rows of the first top examples, escaped in Python
          var whole = el("div");
          whole.innerHTML = f.html.whole;
          box.appendChild(whole);
        }
      }
      else if (key === "intervals") {
        if (!f.iv || !f.iv.length) box.appendChild(el("div", "fs-meta", "no intervals"));
        for (var g = 0; g < (f.iv || []).length; g++) {
          var head = el("div", "fs-group", f.iv[g][0]);
          head.appendChild(el("small", null, f.iv[g][1]));
          box.appendChild(head);
          examples(f.iv[g][2], f.mx, box);
        }
      } else if (f.html[key] !== undefined) box.innerHTML = f.html[key];  // escaped in Python
      main.appendChild(sec);
    }
    var sel = document.getElementById("fs-pick");
    if (sel) sel.value = String(k);
    document.documentElement.setAttribute("data-feature", String(f.i));
  }
  function fromHash() {
    var m = /feature=(-?\d+)/.exec(window.location.hash);
    if (!m) return false;
    var k = pos.get(parseInt(m[1], 10));
    var note = document.getElementById("fs-missing");
    if (k === undefined) {
      if (note) note.textContent = "feature " + m[1] + " is not in this file";
      return false;
    }
    if (note) note.textContent = "";
    render(k);
    return true;
  }
  function go(k) {
    if (k < 0 || k >= F.length) return;
    window.location.hash = "feature=" + F[k].i;
  }
  var sel = document.getElementById("fs-pick");
  if (sel) {
    sel.addEventListener("change", function () { go(parseInt(sel.value, 10)); });
    document.getElementById("fs-prev").addEventListener("click", function () { go(current - 1); });
    document.getElementById("fs-next").addEventListener("click", function () { go(current + 1); });
    var jump = document.getElementById("fs-jump");
    jump.addEventListener("keydown", function (e) {
      if (e.key !== "Enter") return;
      window.location.hash = "feature=" + parseInt(jump.value, 10);
    });
    document.addEventListener("keydown", function (e) {
      var tag = (e.target && e.target.tagName) || "";
      if (tag === "INPUT" || tag === "SELECT" || tag === "TEXTAREA") return;
      if (e.key === "ArrowLeft") go(current - 1);
      if (e.key === "ArrowRight") go(current + 1);
    });
  }
  var mapData = document.getElementById("fs-map");
  if (mapData) {  // the dictionary's stored map (core/export/map_html.py)
    var mapBox = document.getElementById("fs-map-chart");
    loadVega().then(function () {
      return window.vegaEmbed(mapBox, JSON.parse(mapData.textContent), { actions: false, renderer: "svg" });
    }).then(function (res) {
      res.view.addEventListener("click", function (ev, item) {
        var f = item && item.datum && item.datum.feature;
        if (typeof f === "number") window.location.hash = "feature=" + f;
      });
    }).catch(function (err) {
      mapBox.appendChild(el("div", "fs-note", "map not drawn: " + err.message));
    });
  }
  window.addEventListener("hashchange", fromHash);
  if (!fromHash()) render(Math.max(0, pos.has(D.start) ? pos.get(D.start) : 0));
})();
