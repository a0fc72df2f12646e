"""Fallback docs build for machines without Quarto: render nbdev's processed notebooks (`_proc/`, from
`nbdev-proc-nbs`) to a static site in `_docs/` with nbconvert, and `README.md` from `index.ipynb` (what `nbdev-readme`
does with Quarto).

The site works offline, opened from disk (`file://`), with nothing fetched from elsewhere:
- **math**: the markdown cells' TeX (`$…$`, `$$…$$`) is converted to MathML at build time by `latex2mathml`. Every
  current browser renders MathML itself, so the pages need no script and no fonts of their own (MathJax, which
  nbconvert would load from a CDN, is left out). A formula latex2mathml cannot convert stops the build with its text.
- **sidebar**: the pages of `nbs/sidebar.yml` by section, the current page's sections under it.
- **search**: `search_index.js` holds each page's sections as text; `search.js` matches them in the browser (a
  `<script>` file rather than JSON, because browsers do not let `file://` pages fetch files).
- **Colab badges** point at a copy of the badge image inside the site; the links still go to Colab.

It honours the few Quarto cell options nbdev emits (`echo: false`, `include: false`) and nothing more: where Quarto
is installed, `make docs` runs `nbdev-docs` instead (`nbs/_quarto.yml` asks it for MathML too)."""
import html as htmlmod, json, os, re, shutil, sys
from pathlib import Path

import jinja2, nbformat, yaml
from bs4 import BeautifulSoup
from latex2mathml.converter import convert as tex_to_mathml
from nbconvert import HTMLExporter, MarkdownExporter
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
PROC, NBS, ASSETS = ROOT/'_proc', ROOT/'nbs', ROOT/'tools'/'docs_assets'
COLAB_BADGE = 'https://colab.research.google.com/assets/colab-badge.svg'
_cell_keys = {'cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count', 'attachments'}
_heading_id = re.compile(r'(<h[1-6] id="([^"]+)")')   # show_doc links use lower-case anchors
_link_attrs = re.compile(r'\)\{[^}\n]*\}')
_inline = {'a', 'abbr', 'b', 'code', 'em', 'i', 'kbd', 'mark', 'small', 'span', 'strong', 'sub', 'sup', 'var',
           'mi', 'mn', 'mo', 'ms', 'mtext'}
_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')
# code (fenced blocks, inline spans: left alone), display math, inline math (`$x$`, not `$5 and $6` or `\$`)
_math = re.compile(r'(?P<fence>^[ \t]*(?P<f>```|~~~).*?^[ \t]*(?P=f))|(?P<code>(?P<t>`+).+?(?P=t))'
                   r'|\$\$(?P<display>.+?)\$\$|(?<![\\$\w])\$(?P<inline>[^\s$](?:[^$\n]*?[^\s$\\])?)\$(?![\w$])',
                   re.S | re.M)

# nbconvert's lab template without its CDN scripts (require.js, MathJax, mermaid), with the site's sidebar and search
TEMPLATE = r"""{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js_requirejs -%}{%- endblock html_head_js_requirejs -%}
{%- block html_head_js_mathjax -%}{%- endblock html_head_js_mathjax -%}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_css -%}<link rel="stylesheet" href="{{ resources.site_root }}site.css">{%- endblock html_head_css -%}
{%- block body_header -%}
<body class="jp-Notebook" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<!--capseg-sidebar-->
<main>
{%- endblock body_header -%}
{% block body_footer %}
</main>
<script src="{{ resources.site_root }}search_index.js"></script>
<script src="{{ resources.site_root }}search.js"></script>
</body>
{% endblock body_footer %}
"""


def sidebar_entries(node=None, section=None):
    "(section, notebook path relative to nbs/) in sidebar order."
    if node is None: node = yaml.safe_load((NBS/'sidebar.yml').read_text())['website']['sidebar']['contents']
    for item in node:
        if isinstance(item, str): yield section, item
        else: yield from sidebar_entries(item.get('contents', []), item.get('section', section))


def front_matter(nb) -> dict:
    "The YAML front matter nbdev puts in the first raw cell (removed from `nb`)."
    if nb.cells and nb.cells[0].cell_type == 'raw' and nb.cells[0].source.startswith('---'):
        return yaml.safe_load(nb.cells.pop(0).source.strip().strip('-')) or {}
    return {}


def math_to_placeholders(md: str, formulas: dict, where: str) -> str:
    """Replace the TeX formulas of markdown `md` (outside code) by plain-word placeholders that markdown leaves alone;
    their MathML goes into `formulas` (placeholder → MathML), to be put back into the HTML."""
    def sub(m):
        tex, display = (m['display'], 'block') if m['display'] is not None else (m['inline'], 'inline')
        if tex is None: return m[0]                                # code
        try: mathml = tex_to_mathml(tex.strip(), display=display)
        except Exception as e: sys.exit(f'render_docs: {where}: cannot convert the formula {tex.strip()!r} to MathML ({e})')
        key = f'CAPSEGMATH{len(formulas)}X'
        formulas[key] = mathml
        return key
    return _math.sub(sub, md)


def prepare(nb, meta: dict, formulas: dict | None = None, where: str = ''):
    """Apply nbdev's cell options, strip them from the shown source, and add the page title; with `formulas`, turn
    the markdown cells' math into placeholders (see `math_to_placeholders`)."""
    cells = []
    for cell in nb.cells:
        for key in set(cell) - _cell_keys: del cell[key]   # nbdev's own markers (e.g. has_sd) are not nbformat
        cell.metadata.pop('execution', None)              # execnb's timings, not nbformat either
        if cell.cell_type == 'code':
            opts = dict(m.groups() for m in map(_directive.match, cell.source.splitlines()) if m)
            if opts.get('include') == 'false': continue
            cell.source = '\n'.join(l for l in cell.source.splitlines() if not _directive.match(l)).strip()
            if opts.get('echo') == 'false' or not cell.source: cell.metadata.setdefault('tags', []).append('remove_input')
            for out in cell.get('outputs', []):   # Quarto link attributes ([source](url){target=...}) mean nothing here
                if 'text/markdown' in out.get('data', {}):
                    out.data['text/markdown'] = _link_attrs.sub(')', out.data['text/markdown'])
        elif cell.cell_type == 'markdown' and formulas is not None:
            cell.source = math_to_placeholders(cell.source, formulas, where)
        cells.append(cell)
    head = f"# {meta.get('title', '')}\n\n" + (f"> {meta['description']}" if meta.get('description') else '')
    nb.cells = [nbformat.v4.new_markdown_cell(head)] + cells


def sections(html: str, page_title: str) -> list[dict]:
    """The page's sections in order: `{level, id, title, text}`, one per heading with an id (the text before the first
    heading goes to the page itself); what the search index and the sidebar's table of contents are made of."""
    main = BeautifulSoup(html, 'html.parser').find('main')
    out = [dict(level=1, id='', title=page_title, text=[])]
    for heading in main.find_all(['h1', 'h2', 'h3', 'h4']):
        for a in heading.find_all('a', class_='anchor-link'): a.decompose()
    heads = {id(h) for h in main.find_all(['h1', 'h2', 'h3', 'h4']) if h.get('id')}
    for node in main.find_all(string=True):
        if node.parent.name in ('script', 'style'): continue
        head = node.find_parent(['h1', 'h2', 'h3', 'h4'])
        if head is not None and id(head) in heads:
            if out[-1]['id'] != head['id']:
                out.append(dict(level=int(head.name[1]), id=head['id'], title=head.get_text('', strip=True), text=[]))
        else: out[-1]['text'].append(('' if node.parent.name in _inline else ' ') + node)   # no gaps inside a line of code
    for s in out: s['text'] = ' '.join(''.join(s['text']).split())
    if len(out) > 1 and out[1]['level'] == 1 and not out[0]['text']: out.pop(0)   # the page's own h1
    return out


def sidebar_html(pages, current: str, toc: list[dict]) -> str:
    "The sidebar of page `current` (an html path under _docs/): search box, then every page by section, with the current page's h2 sections."
    root = os.path.relpath('.', os.path.dirname(current) or '.')
    root = '' if root == '.' else root + '/'
    links, section = [], None
    for sec, title, href in pages:
        if sec != section and sec: links.append(f'<span class="nav-section">{htmlmod.escape(sec)}</span>')
        section = sec
        cls = ' class="active"' if href == current else ''
        links.append(f'<a href="{root}{href}"{cls}>{htmlmod.escape(title)}</a>')
        if href == current and toc:
            links.append('<ul class="capseg-toc">' + ''.join(
                f'<li><a href="#{htmlmod.escape(s["id"], quote=True)}">{htmlmod.escape(s["title"])}</a></li>' for s in toc)
                + '</ul>')
    return (f'<aside class="capseg-sidebar" data-root="{root}">'
            f'<div class="capseg-brand"><a href="{root}index.html">capseg</a></div>'
            '<input id="capseg-search" type="search" placeholder="Search the docs ( / )" aria-label="Search the docs" autocomplete="off">'
            '<ul id="capseg-results" hidden></ul>'
            f'<nav class="capseg-nav">{"".join(links)}</nav></aside>')


def exporter_config() -> Config:
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    c.TemplateExporter.exclude_input_prompt = c.TemplateExporter.exclude_output_prompt = True
    return c


def raw_url() -> str:
    "Where the repository's files are served raw: from pyproject's Repository URL (a GitHub one)."
    repo = re.search(r'^Repository = "(.+)"', (ROOT/'pyproject.toml').read_text(), re.M)[1]
    return repo.rstrip('/').replace('https://github.com/', 'https://raw.githubusercontent.com/') + '/main/'

def write_readme(nb, meta: dict):
    """README.md from the processed index notebook. Its images (committed under nbs/images/) are absolute links to the
    repository's raw files, so that they show wherever the README does: GitHub, a package index page, a local viewer."""
    prepare(nb, meta)
    md, _ = MarkdownExporter(config=exporter_config()).from_notebook_node(nb)
    md = re.sub(r'\]\((?!https?:)images/', f']({raw_url()}nbs/images/', md)
    (ROOT/'README.md').write_text(md.strip() + '\n')
    print('render_docs: README.md')


def main():
    if not PROC.exists(): sys.exit('render_docs: run nbdev-proc-nbs first (no _proc/)')
    out_dir = ROOT/'_docs'
    site_url = yaml.safe_load((NBS/'nbdev.yml').read_text())['website'].get('site-url', '').rstrip('/') + '/'
    exporter = HTMLExporter(config=exporter_config(), template_name='lab',
                            extra_loaders=[jinja2.DictLoader({'capseg.html.j2': TEMPLATE})], template_file='capseg.html.j2')
    pages, notebooks = [], []
    for section, name in sidebar_entries():
        nb = nbformat.read(PROC/name, as_version=4)
        meta = front_matter(nb)
        href = str(Path(name).parent/meta.get('output-file', Path(name).with_suffix('.html').name))
        if name == 'index.ipynb': href = 'index.html'
        pages.append((section, meta.get('title', Path(name).stem), href))
        notebooks.append((nb, meta, href, name))
    index = nbformat.read(PROC/'index.ipynb', as_version=4)
    write_readme(index, front_matter(index))
    if (NBS/'images').exists(): shutil.copytree(NBS/'images', out_dir/'images', dirs_exist_ok=True)
    (out_dir/'images').mkdir(parents=True, exist_ok=True)
    for asset in ('site.css', 'search.js'): shutil.copy(ASSETS/asset, out_dir/asset)
    shutil.copy(ASSETS/'colab-badge.svg', out_dir/'images'/'colab-badge.svg')
    rendered, index_entries = [], []
    for (nb, meta, href, name), (_, title, _) in zip(notebooks, pages):
        formulas = {}
        prepare(nb, meta, formulas, where=name)
        up = os.path.relpath('.', os.path.dirname(href) or '.')
        root = '' if up == '.' else up + '/'
        html, _ = exporter.from_notebook_node(nb, resources={'metadata': {'name': f"capseg - {meta.get('title', '')}"},
                                                             'site_root': root})
        for key, mathml in formulas.items():
            if key not in html: sys.exit(f'render_docs: {name}: a formula went missing in the HTML ({mathml[:80]})')
            html = html.replace(key, mathml)
        html = html.replace(COLAB_BADGE, f'{root}images/colab-badge.svg')
        html = html.replace(site_url, root)
        html = re.sub(r'href="([^":]+)\.ipynb', r'href="\1.html', html)
        html = _heading_id.sub(lambda m: (f'<a id="{m[2].lower()}"></a>' if m[2] != m[2].lower() else '') + m[1], html)
        secs = sections(html, title)
        index_entries += [dict(p=title, s=s['title'], h=href + (f"#{s['id']}" if s['id'] else ''), x=s['text'])
                          for s in secs]
        rendered.append((href, html, [s for s in secs if s['level'] == 2]))
    for href, html, toc in rendered:
        dest = out_dir/href
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(html.replace('<!--capseg-sidebar-->', sidebar_html(pages, href, toc), 1))
        print(f'render_docs: {dest.relative_to(ROOT)}')
    (out_dir/'search_index.js').write_text('window.CAPSEG_SEARCH = ' + json.dumps(index_entries, ensure_ascii=False) + ';\n')
    print(f'render_docs: {len(index_entries)} sections in _docs/search_index.js')


if __name__ == '__main__': main()
