"""The service as users run it: `imgclf serve` in its own process on 127.0.0.1, called over
real HTTP, and its page driven in a real browser (Debian's chromium, headless, via Selenium)."""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from imgclf.bench.serve import Service, client

from .conftest import BAD_REQUESTS, LIMITS, image_bytes
from conftest import headless_chromium

pytestmark = pytest.mark.slow


def free_port() -> int:
    """A port free right now (the CLI test below needs one given on the command line)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(model: Path, *extra: str) -> Service:
    return Service(model, *extra, limits=LIMITS)


@pytest.fixture(scope="module")
def service(export_runs):
    """Two worker processes: the limits and the model reach each, and they stop without a
    traceback. (One worker, uvicorn's app in the command's own process: the bench-serve test in
    export/test_export.py.)"""
    running = start_service(export_runs["seed"] / "best_model.keras", "--workers", "2")
    yield running.url
    output = running.stop()
    assert "Traceback" not in output, output


def test_real_http_good_and_bad_requests(service):
    with client(service) as http:
        answer = http.post("/predict", files={"files": ("r.png", image_bytes((200, 40, 40)), "image/png")},
                           data={"top_k": "2"})
        assert answer.status_code == 200
        assert answer.json()["predictions"][0]["top"][0]["label"] == "red"
        for kind, (kwargs, status) in BAD_REQUESTS.items():
            answer = http.post("/predict", **kwargs)
            assert answer.status_code == status, (kind, answer.text)
            assert answer.json()["detail"], kind
        assert http.get("/health").json()["status"] == "ok"
        for path in ("/", "/health"):  # uptime checkers and load balancers send HEAD
            head = http.head(path)
            assert head.status_code == 200 and head.content == b"", path


def test_concurrent_clients_all_answered(service):
    colors = {"red": (200, 40, 40), "green": (40, 190, 40), "blue": (40, 40, 200)}

    def one(name):
        with client(service) as http:
            return [http.post("/predict", files={"files": (f"{name}.png", image_bytes(colors[name]), "image/png")})
                    .json()["predictions"][0]["top"][0]["label"] for _ in range(5)]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(one, list(colors) * 3 + ["red"] * 2))
    assert answers == [[name] * 5 for name in list(colors) * 3 + ["red"] * 2]


def test_bad_model_file_fails_with_one_line(tmp_path):
    from conftest import run_main

    (tmp_path / "model.onnx").write_bytes(b"junk")
    done = run_main("serve", tmp_path / "model.onnx", "--port", str(free_port()))
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "cannot load onnx model" in done.stderr


def test_page_in_headless_chromium(service, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    driver = headless_chromium(tmp_path / "profile")
    try:
        driver.set_window_size(1100, 900)
        driver.get(service + "/")
        wait = WebDriverWait(driver, 30)
        wait.until(lambda d: "classes: blue, green, red" in d.find_element(By.ID, "model").text)
        # the model line and the options above it end before the drop zone's dashed border starts
        gap = driver.execute_script(
            "const top = document.getElementById('drop').getBoundingClientRect().top;"
            "return ['model', 'options'].map(id => top - document.getElementById(id).getBoundingClientRect().bottom);")
        assert min(gap) >= 0, gap
        green, junk = tmp_path / "green.png", tmp_path / "notes.jpg"
        green.write_bytes(image_bytes((40, 190, 40), size=(48, 40)))
        junk.write_bytes(b"not an image")
        driver.find_element(By.ID, "files").send_keys(str(green))
        card = wait.until(expected_conditions.presence_of_element_located((By.CSS_SELECTOR, ".card[data-state]")))
        assert card.get_attribute("data-state") == "done"
        bars = card.find_elements(By.CSS_SELECTOR, ".prediction")
        assert len(bars) == 3
        assert bars[0].find_element(By.CLASS_NAME, "label").text == "green"
        assert float(bars[0].find_element(By.CLASS_NAME, "value").text.rstrip("%")) > 50
        image = card.find_element(By.TAG_NAME, "img")
        wait.until(lambda d: image.get_attribute("naturalWidth") != "0")
        assert image.get_attribute("naturalWidth") == "48"  # the image is shown
        assert driver.get_log("browser") == []  # no console message of any level so far
        # with the toggle on, the card also shows the Grad-CAM heatmap the service draws
        driver.find_element(By.ID, "explain").click()
        driver.find_element(By.ID, "files").send_keys(str(green))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state]")) == 2)
        newest = driver.find_element(By.CSS_SELECTOR, ".card")
        assert newest.get_attribute("data-state") == "done"
        heatmap = newest.find_element(By.CSS_SELECTOR, "img.heatmap")
        assert heatmap.get_attribute("naturalWidth") == "224"
        assert "Grad-CAM heatmap of green" in heatmap.get_attribute("alt")
        assert driver.get_log("browser") == []
        # a bad file shows the service's message on its card, and the page goes on working
        driver.find_element(By.ID, "files").send_keys(str(junk))
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".card[data-state]")) == 3)
        assert "not an image" in driver.find_element(By.CSS_SELECTOR, ".card .error").text
        # the only console line: Chromium's note of the 415 answer, which the page has shown
        (entry,) = driver.get_log("browser")
        assert "status of 415" in entry["message"]
    finally:
        driver.quit()
