(function () {
  "use strict";
  var jobs = [];
  var nodes = document.querySelectorAll("[data-chart]");
  for (var i = 0; i < nodes.length; i++) {
    (function (el) {
      var src = document.getElementById(el.getAttribute("data-chart") + "-spec");
      if (!src) { return; }
      var spec;
      try { spec = JSON.parse(src.textContent); } catch (e) { console.error("bad chart spec", e); return; }
      jobs.push(window.vegaEmbed(el, spec, {
        mode: "vega-lite", actions: false, renderer: "svg", tooltip: { theme: "light" }
      }).catch(function (e) {
        el.textContent = "This chart could not be drawn: " + e;
        console.error(e);
      }));
    })(nodes[i]);
  }
  Promise.all(jobs).then(function () {
    document.body.setAttribute("data-charts-ready", String(jobs.length));
  });
})();
