"The built docs site, opened in a real (headless) Chromium: pages, API entries, plot images, math, sidebar and search."
import re, shutil, subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT/'_docs'
CHROMIUM, DRIVER = shutil.which('chromium'), shutil.which('chromedriver')
needs_browser = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium + chromium-driver not installed")

# page → an API entry it must document
MODULE_PAGES = {'core.html': 'History', 'images.html': 'read_image', 'seg_data.html': 'load_seg_npz',
                'seg_model.html': 'chan_vese_loss', 'seg_inputs.html': 'load_frames', 'seg_train.html': 'train',
                'segment.html': 'load_model',
                'caption_data.html': 'parse_flickr8k_tokens', 'caption_model.html': 'CaptionDataset', 'caption.html': 'fit',
                'metrics.html': 'caption_metrics',
                'plot.html': 'plot_curves', 'cli.html': 'main', 'predict.html': 'Predictions'}
TUTORIALS = ['tutorials/segment_folder.html', 'tutorials/segment_npz.html', 'tutorials/caption_flickr8k.html']


@pytest.fixture(scope='module')
def site():
    if not (DOCS/'index.html').exists():
        subprocess.run(['make', 'docs'], cwd=ROOT, check=True)
    return DOCS


@pytest.fixture(scope='module')
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in ('--headless=new', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--no-first-run',
                 '--disable-background-networking', '--disable-component-update', '--disable-sync',
                 '--window-size=1280,1600'):
        opts.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def open_page(browser, page):
    "Open `page` of the site and keep a screenshot of it in docs_screens/ (ignored by git)."
    browser.get((DOCS/page).as_uri())
    (ROOT/'docs_screens').mkdir(exist_ok=True)
    browser.save_screenshot(str(ROOT/'docs_screens'/page.replace('/', '_').replace('.html', '.png')))
    return browser


def broken_images(browser):
    "Images of the site itself (inline plots, local files) that did not load; remote badges are not fetched offline."
    return browser.execute_script(
        "return Array.from(document.images).filter(i => /^(data|file):/.test(i.src))"
        ".filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.src.slice(0, 80))")


@needs_browser
def test_index(site, browser):
    b = open_page(browser, 'index.html')
    assert 'capseg' in b.title
    text = b.find_element('tag name', 'body').text
    assert 'make demo' in text and 'make test' in text
    nav = [a.get_attribute('href') for a in b.find_elements('css selector', 'nav.capseg-nav a')]
    for page in MODULE_PAGES: assert any(h.endswith(page) for h in nav), f'{page} missing from the navigation'
    assert not broken_images(b)


@needs_browser
@pytest.mark.parametrize('page,entry', MODULE_PAGES.items())
def test_module_page(site, browser, page, entry):
    b = open_page(browser, page)
    assert b.find_elements('css selector', 'nav.capseg-nav a.active'), 'the current page is marked in the navigation'
    headings = [h.text.strip() for h in b.find_elements('css selector', 'h2, h3, h4')]
    assert any(h.startswith(entry) for h in headings), f'{entry} is not documented on {page}: {headings[:20]}'
    assert not broken_images(b)


@needs_browser
def test_plots_load(site, browser):
    b = open_page(browser, 'plot.html')
    imgs = b.find_elements('tag name', 'img')
    assert len(imgs) >= 3, 'the plot page shows its example figures'
    assert not broken_images(b)


@needs_browser
@pytest.mark.parametrize('page', TUTORIALS)
def test_tutorial_pages(site, browser, page):
    b = open_page(browser, page)
    badges = b.find_elements('css selector', 'a[href^="https://colab.research.google.com/"] img')
    assert badges, 'tutorials carry an Open-in-Colab badge linking to Colab'
    assert all(i.get_attribute('src').startswith('file:') for i in badges), 'the badge image is the local copy'
    local = b.execute_script("return Array.from(document.images).filter(i => /^(data|file):/.test(i.src)).length")
    assert local >= 3 and not broken_images(b), 'the badge and the tutorial figures load offline'


@needs_browser
def test_math_rendered(site, browser):
    "The Chan–Vese formulas are MathML the browser lays out (fractions stand taller than a line), no raw TeX."
    b = open_page(browser, 'seg_model.html')
    assert '$$' not in b.find_element('tag name', 'body').text and '$$' not in b.page_source
    heights = b.execute_script(
        "return Array.from(document.querySelectorAll('math[display=block]')).map(m => m.getBoundingClientRect().height)")
    assert len(heights) >= 2 and max(heights) > 30, f'display formulas are laid out as math (taller than a line): {heights}'
    texts = b.execute_script("return Array.from(document.querySelectorAll('math[display=block]')).map(m => m.textContent)")
    assert any('fidelity' in t and 'regularization' in t for t in texts), 'the Chan–Vese energy is among the formulas'
    assert len(b.find_elements('css selector', 'math[display=block] mfrac')) >= 4, 'its fractions are MathML fractions'
    assert b.find_elements('css selector', 'p math:not([display=block])'), 'inline math ($p$) is rendered too'


@needs_browser
def test_sidebar(site, browser):
    b = open_page(browser, 'tutorials/segment_npz.html')
    side = b.find_element('css selector', 'aside.capseg-sidebar')
    main = b.find_element('tag name', 'main')
    assert side.is_displayed() and side.rect['x'] + side.rect['width'] <= main.rect['x'] + 1, 'the sidebar is beside the page'
    assert [s.text.lower() for s in side.find_elements('css selector', '.nav-section')] == ['modules', 'tutorials']
    links = {a.text: a.get_attribute('href') for a in side.find_elements('css selector', 'nav.capseg-nav > a')}
    for page in [*MODULE_PAGES, *TUTORIALS]:
        assert any(h.endswith('/_docs/' + page) for h in links.values()), f'{page} missing from the sidebar: {links}'
    b = open_page(browser, 'seg_model.html')
    toc = [a.text for a in b.find_elements('css selector', 'nav.capseg-nav ul.capseg-toc a')]
    assert 'The Chan–Vese loss' in toc, f"the current page's sections are listed: {toc}"


def search(browser, page, query):
    "Type `query` into the search box of `page`; the result links."
    from selenium.webdriver.support.ui import WebDriverWait
    b = open_page(browser, page)
    box = b.find_element('id', 'capseg-search')
    box.clear()
    box.send_keys(query)
    WebDriverWait(b, 5).until(lambda d: d.find_elements('css selector', '#capseg-results li'))
    b.save_screenshot(str(ROOT/'docs_screens'/f"search_{query}_{page.replace('/', '_').replace('.html', '.png')}"))
    return b.find_elements('css selector', '#capseg-results a')


@needs_browser
@pytest.mark.parametrize('page', ['index.html', 'tutorials/caption_flickr8k.html'])
def test_search(site, browser, page):
    hits = search(browser, page, 'chan_vese_loss')
    assert hits and hits[0].get_attribute('href').endswith('/_docs/seg_model.html#chan_vese_loss'), [h.text for h in hits]
    hits[0].click()
    assert browser.current_url.endswith('/_docs/seg_model.html#chan_vese_loss')
    assert browser.find_element('id', 'chan_vese_loss').is_displayed()
    assert not search(browser, 'index.html', 'qwxzv')
    assert browser.find_element('css selector', '#capseg-results li').text == 'no match'


def test_offline_pages(site):
    "No raw TeX and nothing fetched from the network: every page works from disk."
    for html in DOCS.rglob('*.html'):
        text = html.read_text()
        assert '$$' not in text, f'{html.name}: raw $$ left'
        assert not re.findall(r'<(?:script|link|img)[^>]+(?:src|href)="https?://', text), f'{html.name} loads a remote file'
    assert (DOCS/'seg_model.html').read_text().count('<math') >= 3


def test_internal_links_resolve(site):
    for html in DOCS.rglob('*.html'):
        for href in re.findall(r'href="([^"#:]+\.html)', html.read_text()):
            assert (html.parent/href).exists(), f'{html.name} links to missing {href}'
