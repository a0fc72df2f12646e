"""Fallback docs build for machines without Quarto: render nbdev's processed notebooks (`_proc/`, from
`nbdev-proc-nbs`) to static HTML in `_docs/` with nbconvert, with a navigation bar taken from `nbs/sidebar.yml`,
and `README.md` from `index.ipynb` (what `nbdev-readme` does with Quarto).

It honours the few Quarto cell options nbdev emits (`echo: false`, `include: false`) and nothing more: where Quarto
is installed, `make docs` runs `nbdev-docs` instead."""
import os, re, shutil, sys
from pathlib import Path

import nbformat, yaml
from nbconvert import HTMLExporter, MarkdownExporter
from traitlets.config import Config

ROOT = Path(__file__).resolve().parents[1]
PROC, NBS = ROOT/'_proc', ROOT/'nbs'
_cell_keys = {'cell_type', 'id', 'metadata', 'source', 'outputs', 'execution_count', 'attachments'}
_heading_id = re.compile(r'(<h[1-6] id="([^"]+)")')   # show_doc links use lower-case anchors
_link_attrs = re.compile(r'\)\{[^}\n]*\}')
_directive = re.compile(r'^\s*#\|\s*([\w-]+)\s*:\s*(.*?)\s*$')


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


def prepare(nb, meta: dict):
    "Apply nbdev's cell options, strip them from the shown source, and add the page title."
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
        cells.append(cell)
    head = f"# {meta.get('title', '')}\n\n" + (f"> {meta['description']}" if meta.get('description') else '')
    nb.cells = [nbformat.v4.new_markdown_cell(head)] + cells


def nav_html(pages, current: str) -> str:
    "A navigation bar linking every page, relative to `current` (an html path under _docs/)."
    links, section = [], None
    for sec, title, href in pages:
        if sec != section and sec: links.append(f'<span class="nav-section">{sec}</span>')
        section = sec
        rel = os.path.relpath(href, os.path.dirname(current) or '.')
        cls = ' class="active"' if href == current else ''
        links.append(f'<a href="{rel}"{cls}>{title}</a>')
    return ('<nav class="capseg-nav" style="padding:.6em 1em;border-bottom:1px solid #ddd;font-family:sans-serif">'
            + ' · '.join(links) + '</nav>')


def exporter_config() -> Config:
    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_input_tags = {'remove_input'}
    c.TemplateExporter.exclude_input_prompt = c.TemplateExporter.exclude_output_prompt = True
    return c


def write_readme(nb, meta: dict):
    "README.md from the processed index notebook; its images (committed under nbs/images/) are linked from there."
    prepare(nb, meta)
    md, _ = MarkdownExporter(config=exporter_config()).from_notebook_node(nb)
    md = re.sub(r'\]\((?!https?:)images/', '](nbs/images/', md)
    (ROOT/'README.md').write_text(md.strip() + '\n')
    print('render_docs: README.md')


def main():
    if not PROC.exists(): sys.exit('render_docs: run nbdev-proc-nbs first (no _proc/)')
    out_dir = ROOT/'_docs'
    site_url = yaml.safe_load((NBS/'nbdev.yml').read_text())['website'].get('site-url', '').rstrip('/') + '/'
    exporter = HTMLExporter(config=exporter_config(), template_name='lab')
    pages, notebooks = [], []
    for section, name in sidebar_entries():
        nb = nbformat.read(PROC/name, as_version=4)
        meta = front_matter(nb)
        href = str(Path(name).parent/meta.get('output-file', Path(name).with_suffix('.html').name))
        if name == 'index.ipynb': href = 'index.html'
        pages.append((section, meta.get('title', Path(name).stem), href))
        notebooks.append((nb, meta, href))
    index = nbformat.read(PROC/'index.ipynb', as_version=4)
    write_readme(index, front_matter(index))
    if (NBS/'images').exists(): shutil.copytree(NBS/'images', out_dir/'images', dirs_exist_ok=True)
    for nb, meta, href in notebooks:
        prepare(nb, meta)
        html, _ = exporter.from_notebook_node(nb, resources={'metadata': {'name': f"capseg - {meta.get('title', '')}"}})
        up = os.path.relpath('.', os.path.dirname(href) or '.')
        html = html.replace(site_url, '' if up == '.' else up + '/')
        html = re.sub(r'href="([^":]+)\.ipynb', r'href="\1.html', html)
        html = _heading_id.sub(lambda m: (f'<a id="{m[2].lower()}"></a>' if m[2] != m[2].lower() else '') + m[1], html)
        html = re.sub(r'(<body[^>]*>)', lambda m: m.group(1) + nav_html(pages, href), html, count=1)
        dest = out_dir/href
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(html)
        print(f'render_docs: {dest.relative_to(ROOT)}')


if __name__ == '__main__': main()
