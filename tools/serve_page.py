"""The page rotnet-serve shows at GET /: drop a photo (or pick one), see it before and after, with the angle.

Plain HTML and JavaScript, no external resources (the service may run where nothing else is reachable).
The photo goes to POST /v1/correct as the request body; the answer is the corrected image, and the
X-Rotnet-* headers carry the angle, confidence and action, shown under the pictures. Element ids
(#drop, #file, #before, #after, #angle, #status, #error, #lossless) are what tests/test_serve_browser.py
drives.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>rotnet: which way up?</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 70rem; }
  #drop { border: 3px dashed #888; border-radius: 12px; padding: 2rem; text-align: center; cursor: pointer; }
  #drop.over { border-color: #2a7; background: #efe; }
  .pair { display: flex; gap: 2rem; margin-top: 1.5rem; flex-wrap: wrap; }
  figure { margin: 0; flex: 1 1 20rem; }
  figure img { max-width: 100%; max-height: 26rem; border: 1px solid #ccc; background: #fafafa; }
  #angle { font-size: 1.4rem; font-weight: 600; margin-top: 1rem; }
  #error { color: #b00; margin-top: 1rem; }
  #status { color: #666; }
</style>
</head>
<body>
<h1>Which way up?</h1>
<p>Drop a photo here, or click to pick one. rotnet predicts how it is turned and turns it upright.</p>
<div id="drop" tabindex="0">Drop a photo (JPEG, PNG, WebP, ...)
  <input id="file" type="file" accept="image/*" hidden>
</div>
<p><label>JPEG output (quarter-turn models):
  <select id="lossless">
    <option value="">re-encode</option>
    <option value="exif">lossless: EXIF orientation tag</option>
    <option value="transpose">lossless: turn the JPEG data (jpegtran)</option>
  </select></label> <span id="status"></span></p>
<div id="angle"></div>
<div id="error"></div>
<div class="pair">
  <figure><figcaption>Before</figcaption><img id="before" alt="the photo as uploaded"></figure>
  <figure><figcaption>After</figcaption><img id="after" alt="the photo turned upright"></figure>
</div>
<script>
"use strict";
const drop = document.getElementById("drop");
const picker = document.getElementById("file");
const show = (id, text) => { document.getElementById(id).textContent = text; };
let urls = [];

async function send(file) {
  urls.forEach(URL.revokeObjectURL);
  urls = [URL.createObjectURL(file)];
  document.getElementById("before").src = urls[0];
  document.getElementById("after").removeAttribute("src");
  show("angle", ""); show("error", ""); show("status", "working...");
  const lossless = document.getElementById("lossless").value;
  const query = lossless ? "?lossless=" + encodeURIComponent(lossless) : "";
  try {
    const response = await fetch("/v1/correct" + query, { method: "POST", body: file,
      headers: { "Content-Type": file.type || "application/octet-stream" } });
    if (!response.ok) {
      let message = response.status + " " + response.statusText;
      try { message = (await response.json()).error; } catch (ignored) {}
      show("status", ""); show("error", message);
      return;
    }
    const header = (name) => response.headers.get("X-Rotnet-" + name);
    const blob = await response.blob();
    urls.push(URL.createObjectURL(blob));
    document.getElementById("after").src = urls[1];
    const angle = Number(header("Angle-Degrees"));
    const confidence = Number(header("Confidence"));
    show("angle", angle === 0 ? "Upright already (0\\u00b0)" :
      "Turned " + angle + "\\u00b0 counter-clockwise; corrected by turning it " + angle + "\\u00b0 clockwise");
    drop.dataset.angle = String(angle);
    show("status", "confidence " + (100 * confidence).toFixed(1) + "% \\u00b7 " + header("Action") +
      " \\u00b7 " + header("Timing-Ms") + " ms \\u00b7 model " + header("Model"));
  } catch (error) {
    show("status", ""); show("error", "request failed: " + error);
  }
}

drop.addEventListener("click", () => picker.click());
drop.addEventListener("keydown", (event) => { if (event.key === "Enter") picker.click(); });
picker.addEventListener("change", () => { if (picker.files.length) send(picker.files[0]); });
["dragenter", "dragover"].forEach((name) => drop.addEventListener(name, (event) => {
  event.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((name) => drop.addEventListener(name, () => drop.classList.remove("over")));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  const file = event.dataTransfer.files[0];
  if (file) send(file); else show("error", "that was not a file");
});
</script>
</body>
</html>
"""
