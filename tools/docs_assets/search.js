// Client-side search over the docs: `search_index.js` (written by tools/render_docs.py) sets CAPSEG_SEARCH to one
// entry per section of every page: {p: page title, s: section title, h: link from the site root, x: the text}.
(function () {
  const box = document.getElementById('capseg-search'), list = document.getElementById('capseg-results');
  if (!box || !list || !window.CAPSEG_SEARCH) return;
  const root = document.querySelector('aside.capseg-sidebar').dataset.root;
  const entries = window.CAPSEG_SEARCH.map(e => ({...e, sl: e.s.toLowerCase(), xl: e.x.toLowerCase()}));
  const esc = s => s.replace(/[&<>"]/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;'}[c]));

  function score(e, terms) {           // every term must occur; a term in the section's title counts most
    let total = 0;
    for (const t of terms) {
      const inTitle = e.sl.includes(t), inText = e.xl.includes(t);
      if (!inTitle && !inText && !e.p.toLowerCase().includes(t)) return 0;
      total += (e.sl === t || e.sl.startsWith(t + '(') || e.sl.startsWith(t + ' ') ? 100 : 0) + (inTitle ? 20 : 0)
             + (inText ? 1 + Math.min(e.xl.split(t).length - 1, 10) : 0);
    }
    return total;
  }

  function snippet(e, terms) {
    const i = Math.max(0, Math.min(...terms.map(t => e.xl.indexOf(t)).filter(i => i >= 0).concat([0])) - 50);
    let s = esc((i > 0 ? '…' : '') + e.x.slice(i, i + 160) + (e.x.length > i + 160 ? '…' : ''));
    for (const t of terms) s = s.replace(new RegExp('(' + esc(t).replace(/[.*+?^${}()|[\]\\]/g, '\\$&') + ')', 'gi'), '<mark>$1</mark>');
    return s;
  }

  function show() {
    const terms = box.value.toLowerCase().split(/\s+/).filter(t => t.length > 1);
    if (!terms.length) { list.innerHTML = ''; list.hidden = true; return; }
    const hits = entries.map(e => [score(e, terms), e]).filter(h => h[0] > 0).sort((a, b) => b[0] - a[0]).slice(0, 12);
    list.hidden = false;
    list.innerHTML = hits.length ? hits.map(([, e]) =>
      `<li><a href="${root}${e.h}"><span class="capseg-hit-title">${esc(e.s)}</span>` +
      `<span class="capseg-hit-page">${esc(e.p)}</span><span class="capseg-hit-text">${snippet(e, terms)}</span></a></li>`).join('')
      : '<li class="capseg-no-hit">no match</li>';
  }

  box.addEventListener('input', show);
  box.addEventListener('keydown', ev => {
    if (ev.key === 'Enter') { const a = list.querySelector('a'); if (a) window.location.href = a.href; }
    if (ev.key === 'Escape') { box.value = ''; show(); }
  });
  document.addEventListener('keydown', ev => {
    if (ev.key === '/' && document.activeElement !== box) { ev.preventDefault(); box.focus(); }
  });
  const q = new URLSearchParams(window.location.search).get('q');
  if (q) { box.value = q; show(); }
})();
