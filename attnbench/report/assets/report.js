// attnbench's HTML report: sort the results table by any header, filter it by module and backend, draw the
// charts (Plotly, inlined above). Plain ES5 without libraries: the page must open offline in any browser.
(function () {
  "use strict";

  // The value a cell sorts by: its data-v (numbers as numbers), missing values last in either direction.
  function sortValue(cell, numeric) {
    if (!cell || !cell.hasAttribute("data-v")) return null;
    var raw = cell.getAttribute("data-v");
    return numeric ? parseFloat(raw) : raw.toLowerCase();
  }

  function sortTable(table, column, header) {
    var numeric = header.getAttribute("data-type") === "num";
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var headers = table.tHead.rows[0].cells;
    for (var i = 0; i < headers.length; i++) headers[i].removeAttribute("aria-sort");
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
    var body = table.tBodies[0];
    var rows = Array.prototype.slice.call(body.rows);
    rows.forEach(function (row, index) { row._order = index; });
    rows.sort(function (a, b) {
      var x = sortValue(a.cells[column], numeric), y = sortValue(b.cells[column], numeric);
      if (x === null || y === null) return x === y ? a._order - b._order : (x === null ? 1 : -1);
      if (x < y) return ascending ? -1 : 1;
      if (x > y) return ascending ? 1 : -1;
      return a._order - b._order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
  }

  function applyFilters(table) {
    var pickers = document.querySelectorAll(".filters select");
    var rows = table.tBodies[0].rows, shown = 0;
    for (var i = 0; i < rows.length; i++) {
      var keep = true;
      for (var j = 0; j < pickers.length; j++) {
        var want = pickers[j].value, key = pickers[j].getAttribute("data-key");
        if (want && rows[i].getAttribute("data-" + key) !== want) keep = false;
      }
      rows[i].hidden = !keep;
      if (keep) shown++;
    }
    var count = document.getElementById("shown");
    if (count) count.textContent = shown + " of " + rows.length + " rows";
  }

  function setUpTable() {
    var table = document.getElementById("results-table");
    if (!table) return;
    var headers = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(headers, function (header, column) {
      header.tabIndex = 0;
      header.addEventListener("click", function () { sortTable(table, column, header); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter" || event.key === " ") { event.preventDefault(); sortTable(table, column, header); }
      });
    });
    Array.prototype.forEach.call(document.querySelectorAll(".filters select"), function (picker) {
      picker.addEventListener("change", function () { applyFilters(table); });
    });
  }

  function drawCharts() {
    if (typeof Plotly === "undefined") return;
    var specs = JSON.parse(document.getElementById("chart-specs").textContent);
    var config = { displaylogo: false, responsive: true, modeBarButtonsToRemove: ["sendDataToCloud"] };
    specs.forEach(function (chart) {
      Plotly.newPlot(chart.id, chart.spec.data, chart.spec.layout, config);
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    setUpTable();
    drawCharts();
  });
})();
