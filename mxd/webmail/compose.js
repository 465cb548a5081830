// The compose page's script (mxd webmail): a TLS indicator per recipient domain, and
// REQUIRETLS (RFC 8689) selected when every recipient domain is known to support it.
// Served as a file under a CSP without inline script; no dependencies; the page works
// without it.  Everything shown is set with textContent, never as HTML.
(function () {
  "use strict";
  var select = document.getElementById("tls-choice");
  var autoNote = document.getElementById("tls-auto");
  var fields = ["to", "cc", "bcc"].map(function (id) {
    return document.getElementById(id);
  }).filter(function (f) { return f !== null; });
  if (!select || fields.length === 0) { return; }
  var cache = {};  // domain -> record (object) or null (nothing known)
  var userChose = false;  // the user's own choice always wins
  var autoSet = select.value === "requiretls" && autoNote && autoNote.textContent !== "";
  var KEYS = ["starttls", "verified", "requiretls"];
  // RFC 8460 policy types as people know them.
  var POLICY_NAMES = {"tlsa": "DANE", "sts": "MTA-STS"};
  var AUTO_TEXT = "selected automatically: every recipient domain supports REQUIRETLS";

  select.addEventListener("change", function () {
    userChose = true;
    autoSet = false;
    if (autoNote) { autoNote.textContent = ""; }
  });

  function domainsOf(text) {
    var out = [];
    text.split(/[,;]/).forEach(function (item) {
      var m = item.match(/<([^<>]*)>/);
      var addr = (m ? m[1] : item).trim();
      var at = addr.lastIndexOf("@");
      if (at < 1) { return; }
      var d = addr.slice(at + 1).trim().toLowerCase().replace(/\.$/, "");
      if (/^[^\s@<>",;]+\.[^\s@<>",;.][^\s@<>",;]*$/.test(d) && out.indexOf(d) < 0) {
        out.push(d);
      }
    });
    return out;
  }

  function tooltip(domain, rec) {
    if (!rec) { return domain + ": no delivery from this account yet, nothing known"; }
    if (rec.local) { return domain + ": a domain of this server, the message never leaves it"; }
    var how = POLICY_NAMES[rec.policy] || rec.policy;
    var verified = rec.verified ? "yes" + (how ? " (" + how + ")" : "") : "no";
    return domain + ": STARTTLS " + (rec.starttls ? "yes" : "no") + ", verified TLS " +
      verified + ", REQUIRETLS " + (rec.requiretls ? "yes" : "no") + " (last delivery " +
      (rec.at || "?") + (rec.tls_version ? ", " + rec.tls_version : "") + ")";
  }

  function indicator(domain, rec) {
    var span = document.createElement("span");
    span.className = "dom";
    span.title = tooltip(domain, rec);
    span.setAttribute("data-domain", domain);
    var level = 0;
    var bars = document.createElement("span");
    bars.className = rec ? "bars" : "bars unknown";
    KEYS.forEach(function (k) {
      var bar = document.createElement("i");
      if (rec && rec[k]) { bar.className = "on"; level += 1; }
      bars.appendChild(bar);
    });
    span.setAttribute("data-level", String(level));
    span.appendChild(bars);
    span.appendChild(document.createTextNode(domain));
    return span;
  }

  function render() {
    var all = [];
    fields.forEach(function (f) {
      var box = document.getElementById("tls-" + f.id);
      var domains = domainsOf(f.value);
      if (box) {
        while (box.firstChild) { box.removeChild(box.firstChild); }
        domains.forEach(function (d) {
          if (d in cache) { box.appendChild(indicator(d, cache[d])); }
        });
      }
      domains.forEach(function (d) { if (all.indexOf(d) < 0) { all.push(d); } });
    });
    var known = all.length > 0 && all.every(function (d) { return d in cache; });
    var ready = known && all.every(function (d) { return cache[d] && cache[d].requiretls; });
    if (userChose || !known) { return; }
    if (ready && select.value !== "requiretls") {
      select.value = "requiretls";
      autoSet = true;
      if (autoNote) { autoNote.textContent = AUTO_TEXT; }
    } else if (!ready && autoSet) {
      select.value = "default";
      autoSet = false;
      if (autoNote) { autoNote.textContent = ""; }
    } else if (ready && autoSet && autoNote) {
      autoNote.textContent = AUTO_TEXT;
    }
  }

  function update() {
    var missing = [];
    fields.forEach(function (f) {
      domainsOf(f.value).forEach(function (d) {
        if (!(d in cache) && missing.indexOf(d) < 0) { missing.push(d); }
      });
    });
    if (missing.length === 0) { render(); return; }
    var query = missing.slice(0, 50).map(function (d) {
      return "domain=" + encodeURIComponent(d);
    }).join("&");
    fetch("/compose/tls?" + query, {credentials: "same-origin",
                                    headers: {"Accept": "application/json"}})
      .then(function (r) { return r.ok ? r.json() : {}; })
      .then(function (data) {
        missing.forEach(function (d) { cache[d] = data[d] || null; });
        render();
      })
      .catch(function () { render(); });
  }

  var timer = null;
  fields.forEach(function (f) {
    f.addEventListener("input", function () {
      if (timer !== null) { clearTimeout(timer); }
      timer = setTimeout(update, 250);
    });
  });
  update();
}());
