"""Screenshot of the web page at / (docs/serve.png): start the server with the shipped model, open the page in
headless Chromium at 1200x800, attach a MiniVL image, ask for its caption, wait for the answer, then catch the
diffusion panel (which replays the steps slower than they came) on a step with masked cells, save a PNG.

    python examples/serve/screenshot.py [--out docs/serve.png]

Needs Chromium and its driver (apt-get install chromium chromium-driver) and selenium.
"""

import argparse
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from diffusionvl.minivl.generator import generate
from diffusionvl.serving.cli import build
from diffusionvl.serving.config import ServerConfig
from diffusionvl.serving.local import serving


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/serve.png", help="where to write the PNG")
    args = parser.parse_args()

    sample = generate("caption", "test", 0, 8)[7]  # three shapes: an answer of a few blocks
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                 "--hide-scrollbars"):
        options.add_argument(flag)
    with tempfile.TemporaryDirectory() as folder, serving(build(ServerConfig())) as url:
        image = Path(folder) / "image.png"
        sample.image.save(image)
        driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
        try:
            driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",  # the page itself 1200x800
                                   {"width": 1200, "height": 800, "deviceScaleFactor": 1, "mobile": False})
            driver.get(url + "/")
            driver.find_element(By.ID, "file").send_keys(str(image))
            WebDriverWait(driver, 10).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#preview img"))
            driver.find_element(By.ID, "message").send_keys(sample.question)
            driver.find_element(By.ID, "send").click()
            done = ("return document.body.dataset.state === 'idle' && "
                    "!!document.querySelector('.answer .stats').textContent")
            WebDriverWait(driver, 120).until(lambda d: d.execute_script(done))
            # the answer is in; the panel replays its steps ~120 ms each: catch it on the third block, masks showing
            midway = "return document.querySelectorAll('#blocks .block').length === 3 && " \
                     "document.querySelectorAll('#blocks .block:last-child .mask').length >= 3"
            try:
                WebDriverWait(driver, 10, poll_frequency=0.01).until(lambda d: d.execute_script(midway))
            except TimeoutException:  # missed it: show the last step instead
                finished = "return document.body.dataset.anim === 'done'"
                WebDriverWait(driver, 60).until(lambda d: d.execute_script(finished))
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(args.out)
        finally:
            driver.quit()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
