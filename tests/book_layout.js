// Evaluated in each page of the built book by tests/test_book_build.py::test_page_fits_the_column.
// Returns what a reader at 1280 px would find cut, squeezed or unrendered in the content column:
//   wide:   elements wider than the column, or whose content overflows a box that scrolls or clips
//           (code inputs, which scroll on purpose, and inline math, measured by MathJax, are left out);
//   scaled: images shown at less than MIN_SCALE of their natural width (their text shrinks with them);
//   pipes:  Markdown table syntax ("|---|") left as text in a paragraph or an output;
//   math:   display equations wider than their container.
(MIN_SCALE) => {

  const art = document.querySelector("article.bd-article") || document.querySelector("main");
  const box = art.getBoundingClientRect();
  const right = box.right + 1;
  const out = {column: Math.round(box.width), wide: [], scaled: [], pipes: [], math: []};
  const describe = (el) => {
    const cell = el.closest(".cell");
    const tag = el.tagName.toLowerCase() + (el.className && typeof el.className === "string" ? "." + el.className.split(" ")[0] : "");
    let text = (el.innerText || "").trim().split("\n")[0].slice(0, 60);
    return `${tag} (${Math.round(el.getBoundingClientRect().width)} px${cell ? ", in a cell" : ""}): ${text}`;
  };
  // 1. anything wider than the column, or cut inside a scroll box, outside code inputs
  for (const el of art.querySelectorAll("*")) {
    if (el.closest(".cell_input, .highlight, div.highlight, pre.literal-block, .sd-tab-set")) {
      if (!el.closest(".cell_output")) continue;
    }
    if (el.closest("mjx-container, .math, .MathJax")) continue;
    const r = el.getBoundingClientRect();
    if (r.width === 0 || r.height === 0) continue;
    const over = el.scrollWidth > el.clientWidth + 2 && getComputedStyle(el).overflowX !== "visible";
    if (r.right > right || over) {
      // report the outermost offender only
      let p = el.parentElement, inner = false;
      while (p && p !== art) { const pr = p.getBoundingClientRect(); if (pr.right > right || (p.scrollWidth > p.clientWidth + 2 && getComputedStyle(p).overflowX !== "visible")) { inner = true; break; } p = p.parentElement; }
      if (!inner) out.wide.push(describe(el) + (over ? ` [content ${el.scrollWidth} px in ${el.clientWidth} px]` : ""));
    }
  }
  // 2. output images scaled below 85% of their natural width
  for (const img of art.querySelectorAll(".cell_output img, figure img, img")) {
    if (!img.naturalWidth) continue;
    const f = img.getBoundingClientRect().width / img.naturalWidth;
    if (f < MIN_SCALE) out.scaled.push(`${img.getAttribute("src").split("/").pop()}: ${img.naturalWidth} px shown at ${Math.round(img.getBoundingClientRect().width)} px (${Math.round(100*f)}%)`);
  }
  // 3. raw Markdown table text
  for (const el of art.querySelectorAll("p, li, .cell_output .output, .cell_output pre")) {
    if (/\|\s*:?-{3,}:?\s*\|/.test(el.innerText || "")) out.pipes.push(describe(el));
  }
  // 4. display equations wider than their container
  for (const m of art.querySelectorAll('mjx-container[display="true"]')) {
    const inner = m.querySelector("mjx-math");
    const w = inner ? inner.getBoundingClientRect().width : m.scrollWidth;
    if (w > m.getBoundingClientRect().width + 2 || m.getBoundingClientRect().right > right)
      out.math.push(`equation of ${Math.round(w)} px in ${Math.round(m.getBoundingClientRect().width)} px: ${(m.getAttribute("aria-label") || m.innerText || "").slice(0, 50)}`);
  }
  return out;
}
