"""The web page at /, in a real headless Chromium (selenium + Debian's chromium and chromedriver) against the
server on a localhost socket: attach an image, ask, watch the streamed answer equal the API's; drag-and-drop;
an error shown in the page, which stays usable."""

import base64
import io
import shutil

import openai
import pytest

from diffusionvl.minivl.generator import generate
from diffusionvl.serving.cli import build
from diffusionvl.serving.config import ServerConfig
from diffusionvl.serving.local import serving

pytestmark = pytest.mark.usefixtures("one_thread")
MODEL = "minivl-dvlm"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    missing = [name for name, path in (("chromium", CHROMIUM), ("chromedriver", CHROMEDRIVER)) if path is None]
    if missing:
        pytest.fail(f"the page test needs Chromium and its driver; {', '.join(missing)} not found. Install them: "
                    "bash scripts/install-browser.sh (the README's test command runs it)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    flags = ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1200,800")
    for flag in flags:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(browser, url):
    browser.get(url + "/")
    return browser


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def wait(driver, condition, timeout=60):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: condition(d))


def js(driver, script, *args):
    return driver.execute_script(script, *args)


def attach_file(driver, path):
    from selenium.webdriver.common.by import By

    driver.find_element(By.ID, "file").send_keys(str(path))
    wait(driver, lambda d: js(d, "return !!document.querySelector('#preview img')"), 10)


def ask(driver, question) -> dict:
    """Type `question`, press Send, wait for the request to end; the newest answer's text, stats and error."""
    from selenium.webdriver.common.by import By

    before = js(driver, "return document.querySelectorAll('.answer').length")
    driver.find_element(By.ID, "message").send_keys(question)
    driver.find_element(By.ID, "send").click()
    wait(driver, lambda d: js(d, "return document.body.dataset.state === 'idle' && "
                                 "document.querySelectorAll('.answer').length === arguments[0]", before + 1))
    return js(driver, """const a = [...document.querySelectorAll('.answer')].pop();
        return {text: a.querySelector('.text').textContent, stats: a.querySelector('.stats').textContent,
                error: a.querySelector('.error').textContent, cells: document.querySelectorAll('#blocks .cell').length,
                masked: document.querySelectorAll('#blocks .cell.mask').length};""")


def image_turn(sample) -> dict:
    return {"role": "user", "content": [{"type": "image_url", "image_url": {"url": data_url(sample.image)}},
                                        {"type": "text", "text": sample.question}]}


def stats_of(usage) -> str:
    return f"NFE {usage.nfe} · tokens/forward {usage.tokens_per_forward:.2f} · tokens {usage.completion_tokens}"


def test_chat_with_an_image_streams_the_apis_answer(page, client, tmp_path):
    sample = generate("count", "test", 1, 1, 112)[0]
    path = tmp_path / "count.png"
    path.write_bytes(png(sample.image))
    attach_file(page, path)
    shown = ask(page, sample.question)
    messages = [image_turn(sample)]
    expected = client.chat.completions.create(model=MODEL, messages=messages)
    assert shown["error"] == ""
    assert shown["text"] == expected.choices[0].message.content != ""
    assert "NFE" in shown["stats"] and shown["stats"] == stats_of(expected.usage)
    assert shown["cells"] > 0  # the diffusion panel drew the block
    assert js(page, "return document.querySelector('#preview').children.length") == 0  # sent: attachment cleared

    # a follow-up without an image: the page sends the whole conversation
    follow = "Describe the image."
    shown = ask(page, follow)
    messages += [{"role": "assistant", "content": expected.choices[0].message.content},
                 {"role": "user", "content": follow}]
    assert shown["text"] == client.chat.completions.create(model=MODEL, messages=messages).choices[0].message.content
    # the server decodes greedy requests speculatively: the panel tells accepted drafts from the verifier's tokens
    wait(page, lambda d: js(d, "return document.body.dataset.anim === 'done'"), 30)
    kinds = js(page, "return ['accepted', 'corrected'].map((k) => document.querySelectorAll('#blocks .cell.' + k)"
                     ".length)")
    assert kinds[0] > 0 and kinds[1] > 0, kinds


def test_dropping_an_image_attaches_it(page, client):
    sample = generate("digits", "test", 1, 1, 112)[0]
    js(page, """const bytes = Uint8Array.from(atob(arguments[0]), (c) => c.charCodeAt(0));
        const transfer = new DataTransfer();
        transfer.items.add(new File([bytes], 'digits.png', {type: 'image/png'}));
        document.querySelector('#messages').dispatchEvent(
            new DragEvent('drop', {dataTransfer: transfer, bubbles: true, cancelable: true}));""",
       base64.b64encode(png(sample.image)).decode())
    loaded = "const i = document.querySelector('#preview img'); return !!i && i.naturalWidth > 0"
    wait(page, lambda d: js(d, loaded), 10)
    assert js(page, "return document.querySelector('#preview img').src") == data_url(sample.image)
    shown = ask(page, sample.question)
    expected = client.chat.completions.create(model=MODEL, messages=[image_turn(sample)])
    assert shown["text"] == expected.choices[0].message.content != ""


def test_a_server_error_is_shown_and_the_page_stays_usable(page, client, tmp_path):
    bad = tmp_path / "not-an-image.png"
    bad.write_text("hello, I am text")
    attach_file(page, bad)
    shown = ask(page, "How many crosses are there?")
    assert "cannot be decoded" in shown["error"] and shown["text"] == "" and shown["stats"] == ""

    sample = generate("count", "test", 1, 1, 112)[0]  # the failed turn is dropped: the next request succeeds
    good = tmp_path / "count.png"
    good.write_bytes(png(sample.image))
    attach_file(page, good)
    shown = ask(page, sample.question)
    expected = client.chat.completions.create(model=MODEL, messages=[image_turn(sample)])
    assert shown["error"] == "" and shown["text"] == expected.choices[0].message.content != ""
    assert "NFE" in shown["stats"]


def test_with_an_api_key_the_page_asks_for_it_once_and_answers(browser, tmp_path):
    from selenium.webdriver.support import expected_conditions

    with serving(build(ServerConfig(api_key="page-key"))) as base:
        browser.get(base + "/")  # a new origin: nothing stored yet
        alert = wait(browser, expected_conditions.alert_is_present(), 10)
        alert.send_keys("page-key")
        alert.accept()
        wait(browser, lambda d: "model minivl-dvlm" in js(d, "return document.getElementById('model').textContent"), 10)
        sample = generate("caption", "test", 2, 1, 112)[0]
        path = tmp_path / "caption.png"
        path.write_bytes(png(sample.image))
        attach_file(browser, path)
        shown = ask(browser, sample.question)
        keyed = openai.OpenAI(base_url=f"{base}/v1", api_key="page-key", max_retries=0)
        expected = keyed.chat.completions.create(model=MODEL, messages=[image_turn(sample)])
        assert shown["error"] == "" and shown["text"] == expected.choices[0].message.content != ""
        assert ask(browser, "Describe the image.")["error"] == ""  # the key is kept: no second question
