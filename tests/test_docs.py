"The built docs site, opened in a real (headless) Chromium: pages, API entries and plot images."
import shutil, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT/'_docs'
CHROMIUM, DRIVER = shutil.which('chromium'), shutil.which('chromedriver')
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="Debian's chromium + chromium-driver not installed")

# page → an API entry it must document
MODULE_PAGES = {'core.html': 'History', 'data.html': 'load_seg_npz', 'segment.html': 'chan_vese_loss',
                'caption_data.html': 'parse_flickr8k_tokens', 'caption.html': 'CaptionDataset', 'metrics.html': 'corpus_bleu',
                'plot.html': 'plot_curves', 'cli.html': 'main', 'predict.html': 'Predictions'}
TUTORIALS = ['tutorials/segment_npz.html', 'tutorials/caption_flickr8k.html']


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


def test_index(site, browser):
    b = open_page(browser, 'index.html')
    assert 'capseg' in b.title
    text = b.find_element('tag name', 'body').text
    assert 'make demo' in text and 'make test' in text
    nav = [a.get_attribute('href') for a in b.find_elements('css selector', 'nav.capseg-nav a')]
    for page in MODULE_PAGES: assert any(h.endswith(page) for h in nav), f'{page} missing from the navigation'
    assert not broken_images(b)


@pytest.mark.parametrize('page,entry', MODULE_PAGES.items())
def test_module_page(site, browser, page, entry):
    b = open_page(browser, page)
    assert b.find_elements('css selector', 'nav.capseg-nav a.active'), 'the current page is marked in the navigation'
    headings = [h.text.strip() for h in b.find_elements('css selector', 'h2, h3, h4')]
    assert any(h.startswith(entry) for h in headings), f'{entry} is not documented on {page}: {headings[:20]}'
    assert not broken_images(b)


def test_plots_load(site, browser):
    b = open_page(browser, 'plot.html')
    imgs = b.find_elements('tag name', 'img')
    assert len(imgs) >= 3, 'the plot page shows its example figures'
    assert not broken_images(b)


@pytest.mark.parametrize('page', TUTORIALS)
def test_tutorial_pages(site, browser, page):
    b = open_page(browser, page)
    assert 'colab.research.google.com' in b.page_source, 'tutorials carry an Open-in-Colab badge'
    local = b.execute_script("return Array.from(document.images).filter(i => /^(data|file):/.test(i.src)).length")
    assert local >= 2 and not broken_images(b), 'tutorial figures load'


def test_internal_links_resolve(site):
    import re
    for html in DOCS.rglob('*.html'):
        for href in re.findall(r'href="([^"#:]+\.html)', html.read_text()):
            assert (html.parent/href).exists(), f'{html.name} links to missing {href}'
