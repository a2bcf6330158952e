"""rotnet-serve's page in a real browser: Debian's headless Chromium driven through its chromedriver by
selenium (never a browser download). A photo turned by 90 degrees is dropped on the page; the page must
show it before and after, the after picture must be the upload turned back by the angle the service
predicts, and the angle must be on the page. The screenshot is kept in build/test-artifacts/."""

from __future__ import annotations

import base64
import io
import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import TEST_ARTIFACTS
from tests.factories import synthetic_image
from tests.system_programs import require_program

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]

# No network, no sync, no first-run UI, a profile of its own: a browser that only talks to 127.0.0.1.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1100,900",
)


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    chromium = require_program("chromium", "chromium")
    chromedriver = require_program("chromedriver", "chromium-driver")
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for or fetch anything
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        options=options,
        service=Service(executable_path=chromedriver, log_output=str(tmp_path / "chromedriver.log")),
    )
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


# Drops the file of a (hidden) file input on #drop, as a person's drag and drop does.
DROP_SCRIPT = """
const input = arguments[0];
const transfer = new DataTransfer();
transfer.items.add(input.files[0]);
const zone = document.getElementById("drop");
for (const name of ["dragenter", "dragover", "drop"]) {
  zone.dispatchEvent(new DragEvent(name, { dataTransfer: transfer, bubbles: true, cancelable: true }));
}
"""

# The after picture's pixels (red channel), read back through a canvas.
READ_AFTER_SCRIPT = """
const image = document.getElementById("after");
const canvas = document.createElement("canvas");
canvas.width = image.naturalWidth; canvas.height = image.naturalHeight;
const context = canvas.getContext("2d");
context.drawImage(image, 0, 0);
const data = context.getImageData(0, 0, canvas.width, canvas.height).data;
let red = "";
for (let i = 0; i < data.length; i += 4) red += String.fromCharCode(data[i]);
return [canvas.width, canvas.height, btoa(red)];
"""


def test_dropping_a_turned_photo_shows_it_upright_with_the_angle(
    browser, rotnet_serve, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    upright = np.kron(synthetic_image(3, size=28)[:, :, 0], np.ones((6, 6), np.uint8))  # 168 px, readable
    turned = np.ascontiguousarray(np.rot90(upright, 1))
    photo = tmp_path / "turned.png"
    Image.fromarray(turned).save(photo)
    predict = urllib.request.Request(rotnet_serve.url + "/v1/predict", data=photo.read_bytes(), method="POST")
    with urllib.request.urlopen(predict, timeout=60) as response:
        expected = json.loads(response.read())

    browser.get(rotnet_serve.url + "/")
    assert "Which way up?" in browser.title + browser.find_element(By.TAG_NAME, "h1").text
    picker = browser.execute_script(
        "const input = document.createElement('input'); input.type = 'file'; input.id = 'test-upload';"
        "input.style.display = 'none'; document.body.appendChild(input); return input;"
    )
    picker.send_keys(str(photo))
    browser.execute_script(DROP_SCRIPT, picker)
    WebDriverWait(browser, 60).until(
        lambda driver: (
            driver.execute_script(
                "const image = document.getElementById('after'); return image.complete && image.naturalWidth > 0;"
            )
            or driver.find_element(By.ID, "error").text
        )
    )
    assert browser.find_element(By.ID, "error").text == ""
    angle_text = browser.find_element(By.ID, "angle").text
    turn = expected["quarter_turn"]
    if turn:
        assert f"Turned {90 * turn}\u00b0 counter-clockwise" in angle_text, angle_text
    else:
        assert "Upright already" in angle_text
    assert browser.find_element(By.ID, "drop").get_attribute("data-angle") == str(90 * turn)
    assert "confidence" in browser.find_element(By.ID, "status").text
    assert browser.execute_script("return document.getElementById('before').naturalWidth") == turned.shape[1]
    width, height, red = browser.execute_script(READ_AFTER_SCRIPT)
    shown = np.frombuffer(base64.b64decode(red), np.uint8).reshape(height, width)
    np.testing.assert_array_equal(shown, np.rot90(turned, -turn))  # the page shows the corrected photo
    TEST_ARTIFACTS.mkdir(parents=True, exist_ok=True)
    screenshot = TEST_ARTIFACTS / "serve-page.png"
    screenshot.write_bytes(browser.get_screenshot_as_png())
    assert Image.open(io.BytesIO(screenshot.read_bytes())).size[0] > 500
