// A virtualised list of fixed-height rows: only the rows in view (plus a margin) exist in the
// DOM, so a run of 100,000 events scrolls as lightly as one of ten. It follows the end while
// the reader is at the end, and stays put when they have scrolled up to read.
const OVERSCAN = 12;

export class VirtualList {
  /** `renderRow(i, el)` fills the row element `el` for item i. */
  constructor(container, { rowHeight = 22, renderRow }) {
    this.box = container;
    this.rowHeight = rowHeight;
    this.renderRow = renderRow;
    this.count = 0;
    this.spacer = document.createElement("div");
    this.spacer.className = "spacer";
    this.box.append(this.spacer);
    this.rows = new Map(); // index -> element
    this.pending = false;
    this.box.addEventListener("scroll", () => this.schedule(), { passive: true });
  }

  atEnd() {
    return this.box.scrollTop + this.box.clientHeight >= this.box.scrollHeight - 2 * this.rowHeight;
  }

  setCount(n) {
    const follow = this.atEnd();
    this.count = n;
    this.spacer.style.height = `${n * this.rowHeight}px`;
    if (follow) this.box.scrollTop = this.box.scrollHeight;
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const first = Math.max(0, Math.floor(this.box.scrollTop / this.rowHeight) - OVERSCAN);
    const visible = Math.ceil(this.box.clientHeight / this.rowHeight) + 2 * OVERSCAN;
    const last = Math.min(this.count, first + visible);
    for (const [i, el] of this.rows) {
      if (i < first || i >= last) { el.remove(); this.rows.delete(i); }
    }
    for (let i = first; i < last; i++) {
      if (this.rows.has(i)) continue;
      const el = document.createElement("div");
      el.className = "vrow";
      el.setAttribute("role", "listitem");
      el.style.top = `${i * this.rowHeight}px`;
      this.renderRow(i, el);
      this.spacer.append(el);
      this.rows.set(i, el);
    }
  }
}
