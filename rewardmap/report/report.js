// rewardmap report: the sample browser. Reads the inline JSON, shows one step's records at a time. Answer text is
// model output: it is only ever set as textContent, never parsed as HTML.
"use strict";
(function () {
  const source = document.getElementById("samples-data");
  const list = document.getElementById("sample-list");
  if (!source || !list) return;
  const data = JSON.parse(source.textContent);
  const view = document.getElementById("view");
  const type = document.getElementById("type");
  const page = document.getElementById("page");
  const PER_PAGE = 8;
  let pages = [];

  function element(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function number(value, digits) {
    return value === null || value === undefined ? "—" : value.toFixed(digits);
  }

  function paginate() {
    pages = [];
    for (const record of data.views[view.value]) {
      if (type.value && record.type !== type.value) continue;
      const last = pages[pages.length - 1];
      if (!last || last.step !== record.step || last.records.length >= PER_PAGE) {
        pages.push({ step: record.step, records: [] });
      }
      pages[pages.length - 1].records.push(record);
    }
    page.replaceChildren(...pages.map((p, i) => new Option("step " + p.step + " (" + (i + 1) + "/" + pages.length + ")", i)));
    // The newest step first, or the step the address asks for (report.html#step=40).
    const asked = /^#step=(\d+)$/.exec(window.location.hash);
    const wanted = asked ? pages.findIndex((p) => p.step === Number(asked[1])) : -1;
    show(wanted >= 0 ? wanted : pages.length - 1);
  }

  function answer(a, index) {
    const box = element("div", "answer");
    const share = Math.max(0, Math.min(1, (a.reward || 0) / data.max_reward));
    const hue = Math.round(120 * share);
    box.style.borderColor = "hsl(" + hue + ", 65%, 42%)";
    box.style.background = "hsl(" + hue + ", 70%, 95%)";
    const parts = ["#" + (index + 1), "reward " + number(a.reward, 3)];
    if (a.correct !== null) parts.push(a.correct ? "correct" : "wrong");
    if (a.eval_correct !== undefined) parts.push("eval: " + (a.eval_correct ? "correct" : "wrong"));
    parts.push("correctness " + number(a.correctness, 2), "detail " + number(a.detail, 2), "weight " + number(a.weight, 2));
    if (a.overlong_penalty) parts.push("overlong penalty " + number(a.overlong_penalty, 3));
    if (a.advantage !== null) parts.push("advantage " + (a.advantage >= 0 ? "+" : "") + number(a.advantage, 2));
    parts.push(a.tokens + " tokens", a.finished ? "finished" : "cut off");
    box.append(element("div", "parts", parts.join(" · ")), element("pre", "text", a.text));
    return box;
  }

  function card(record) {
    const node = element("article", "sample");
    const left = element("div");
    const uri = data.maps[record.image];
    if (uri) {
      const img = element("img", "map");
      img.src = uri;
      img.alt = "map of row " + record.row;
      img.addEventListener("click", () => img.classList.toggle("zoomed"));
      left.append(img);
    } else {
      left.append(element("p", "nomap", "map file not found"));
    }
    const right = element("div");
    const meta = element("div", "meta");
    const facts = [["step", record.step], ["stage", record.stage], ["type", record.type],
                   ["difficulty", record.difficulty], ["row", record.row]];
    for (const [name, value] of facts) {
      if (value === undefined || value === null) continue;
      meta.append(name + " ", element("b", "", String(value)), "  ");
    }
    if (record.trained === false) meta.append(element("span", "", "(filtered out: not trained on)"));
    const reference = element("div", "reference");
    reference.append("reference: ", element("b", "", String(record.reference)));
    right.append(meta, element("div", "question", record.question), reference);
    record.answers.forEach((a, i) => right.append(answer(a, i)));
    node.append(left, right);
    return node;
  }

  function show(index) {
    if (!pages.length) {
      list.replaceChildren(element("p", "empty", "No records of this type."));
      return;
    }
    index = Math.max(0, Math.min(pages.length - 1, index));
    page.value = String(index);
    list.replaceChildren(...pages[index].records.map(card));
  }

  view.addEventListener("change", paginate);
  type.addEventListener("change", paginate);
  page.addEventListener("change", () => show(Number(page.value)));
  document.getElementById("prev").addEventListener("click", () => show(Number(page.value) - 1));
  document.getElementById("next").addEventListener("click", () => show(Number(page.value) + 1));
  document.addEventListener("keydown", (event) => {
    if (event.target.tagName === "SELECT") return;
    if (event.key === "ArrowLeft") show(Number(page.value) - 1);
    if (event.key === "ArrowRight") show(Number(page.value) + 1);
  });
  paginate();
})();
