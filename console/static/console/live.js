// Live parts of the console: poll a JSON endpoint and hand the answer to a renderer.
// No framework and no CDN: the console works offline.
(function () {
  "use strict";
  function text(value) { return value === null || value === undefined ? "" : String(value); }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    (children || []).forEach(function (c) { node.append(c instanceof Node ? c : document.createTextNode(text(c))); });
    return node;
  }
  // A moment from the server ({text, iso}, see console/times.py) as the template filter renders it.
  function when(moment) {
    return moment ? el("time", {datetime: moment.iso, title: moment.iso}, [moment.text]) : "never";
  }
  var shownBanner = null;
  var renderers = {
    dashboard: function (root, data) {
      Object.keys(data.stats).forEach(function (key) {
        var value = data.stats[key];
        if (typeof value === "object") {
          Object.keys(value).forEach(function (sub) { set(root, key + "." + sub, value[sub]); });
        } else { set(root, key, value); }
      });
      // The server renders the banner (escaped, no script); it appears and goes with the kills.
      var banner = document.querySelector("[data-banner]");
      if (banner && data.banner !== shownBanner) { banner.innerHTML = data.banner; shownBanner = data.banner; }
      var body = root.querySelector("[data-revocations]");
      if (!body) return;
      body.replaceChildren.apply(body, data.revocations.map(function (r) {
        var link = el("a", {href: "/revocations/" + r.id + "/"}, ["#" + r.id]);
        return el("tr", {class: r.active ? "kill" : ""}, [
          el("td", {}, [link]), el("td", {class: "nowrap"}, [when(r.at)]), el("td", {}, [r.epoch]),
          el("td", {}, [r.target]),
          el("td", {}, [r.source]), el("td", {}, [r.reason]),
          el("td", {}, [el("span", {class: "badge " + (r.active ? "killed" : "ok")}, [r.active ? "active" : "lifted"])])
        ]);
      }));
    },
    acks: function (root, data) {
      set(root, "running", data.running);
      set(root, "acknowledged", data.acknowledged);
      set(root, "mismatched", data.mismatched);
      set(root, "copies", data.copies);
      set(root, "copies_acknowledged", data.copies_acknowledged);
      set(root, "processes_stopped", data.processes_stopped);
      var body = root.querySelector("[data-acks]");
      var rows = [];
      data.agents.forEach(function (a) {
        var n = a.copies.length;
        rows.push(el("tr", {class: "agent-row"}, [
          el("td", {}, [a.name]), el("td", {}, [a.fleet]), el("td", {}, [a.epoch_seen]),
          el("td", {}, [el("span", {class: "badge " + a.state}, [a.state])]),
          el("td", {class: "muted"}, [n + (n === 1 ? " copy" : " copies")]),
          el("td", {class: "muted"}, [when(a.last_seen)])
        ]));
        a.copies.forEach(function (c) {
          rows.push(el("tr", {class: "copy-row" + (c.stopped ? " tree-stopped" : "")}, [
            el("td", {class: "mono nowrap"}, ["↳ " + c.host + ":" + c.pid]), el("td", {}, [c.kind]),
            el("td", {}, [c.epoch_seen]),
            el("td", {}, [el("span", {class: "badge " + c.state}, [c.state])]),
            el("td", {}, [c.tree]), el("td", {class: "muted"}, [when(c.last_seen)])
          ]));
        });
      });
      if (!rows.length) {
        rows.push(el("tr", {}, [el("td", {colspan: "6", class: "muted"},
          ["No running agent is targeted (none reported in the last 30 s)."])]));
      }
      body.replaceChildren.apply(body, rows);
    },
    agent: function (root, data) {
      set(root, "status", data.status);
      set(root, "allowed", data.allowed ? "yes" : "no — " + data.reasons.join("; "));
      root.querySelectorAll('[data-field="last_seen_at"]').forEach(function (n) {
        n.replaceChildren(when(data.last_seen_at));
      });
      set(root, "last_seen_epoch", data.last_seen_epoch === null ? "—" : data.last_seen_epoch);
      set(root, "last_seen_address", data.last_seen_address || "—");
      var body = root.querySelector("[data-timeline]");
      if (!body) return;
      body.replaceChildren.apply(body, data.timeline.map(timelineRow));
    }
  };
  function timelineRow(row) {
    return el("tr", {class: row.css}, [el("td", {class: "mono"}, [when(row.at)]), el("td", {}, [row.type]),
      el("td", {class: "mono"}, [row.what]), el("td", {}, [row.detail])]);
  }
  function set(root, key, value) {
    root.querySelectorAll('[data-field="' + key + '"]').forEach(function (n) { n.textContent = text(value); });
  }
  function start(root) {
    var url = root.getAttribute("data-live"), kind = root.getAttribute("data-render");
    var every = parseInt(root.getAttribute("data-every") || "1000", 10);
    function tick() {
      fetch(url, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (data) { if (data) { renderers[kind](root, data); root.setAttribute("data-updated", Date.now()); } })
        .catch(function () {})
        .finally(function () { setTimeout(tick, every); });
    }
    tick();
  }
  // A field's error is about what was submitted: once the field is edited, it no longer applies.
  function clearErrorOnInput(field) {
    field.addEventListener("input", function () {
      var error = document.getElementById(field.id + "_error");
      if (error) error.remove();
      field.removeAttribute("aria-invalid");
      var rest = (field.getAttribute("aria-describedby") || "").split(" ").filter(function (id) {
        return id && id !== field.id + "_error";
      });
      if (rest.length) field.setAttribute("aria-describedby", rest.join(" "));
      else field.removeAttribute("aria-describedby");
    }, {once: true});
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-live]").forEach(start);
    document.querySelectorAll('[aria-invalid="true"]').forEach(clearErrorOnInput);
    document.querySelectorAll("[data-copy]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.getElementById(button.getAttribute("data-copy"));
        navigator.clipboard.writeText(source.textContent.trim()).then(function () {
          button.textContent = "Copied";
        }, function () {
          var range = document.createRange(); range.selectNodeContents(source);
          var sel = window.getSelection(); sel.removeAllRanges(); sel.addRange(range);
          button.textContent = "Selected — press Ctrl+C";
        });
      });
    });
  });
})();
