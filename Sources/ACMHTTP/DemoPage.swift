import Foundation

// The demo page at `/` (docs/http-api.md, "Demo page"): plain HTML, CSS and JS in one document, with the
// bundled Fashion-MNIST images inline as data: URLs, so that it works offline and needs no other route.
// It calls the public API: `/v2/models/NAME/classify?heatmap=1` and `/v2/models/NAME/transcribe`, with
// `Authorization: Bearer` from its key field when the server wants one.

extension InferenceServer {
    /// GET / : the demo page. It is served without a key so that a browser can open it; with API keys on, the
    /// model list is left out of it (the page asks for the names, and every call it makes needs a key).
    func demoPage() -> HTTPResponse {
        var models: [JSON] = []
        if apiKeys == nil {
            for (name, endpoint) in endpoints.sorted(by: { $0.key < $1.key }) {
                if let image = endpoint as? ImageEndpoint {
                    models.append(.object([("name", .string(name)), ("kind", .string("image")), ("acm", .bool(image.hasACMs))]))
                } else if let speech = endpoint as? SpeechEndpoint {
                    models.append(.object([("name", .string(name)), ("kind", .string("speech")), ("acm", .bool(speech.hasACMs))]))
                }
            }
        }
        let images = JSON.array(
            demoImages.map { .object([("index", .integer($0.index)), ("label", .string($0.label)), ("png", .string($0.png))]) })
        let data = JSON.object([
            ("models", .array(models)), ("images", images), ("keys", .bool(apiKeys != nil)),
        ])
        // JSON inside <script>: "<" only ever occurs in its strings, where \u003c means the same and cannot
        // close the element
        let json = String(decoding: data.bytes, as: UTF8.self).replacingOccurrences(of: "<", with: "\\u003c")
        let page = DemoPage.head + json + DemoPage.tail
        return HTTPResponse(
            status: 200,
            headers: [
                ("Content-Type", "text/html; charset=utf-8"),
                (
                    "Content-Security-Policy",
                    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data: blob:; "
                        + "connect-src 'self'; form-action 'none'; frame-ancestors 'none'; base-uri 'none'"
                ),
                ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"), ("Cache-Control", "no-store"),
            ],
            body: Array(page.utf8))
    }
}

/// The page's text, around the JSON of its data (`InferenceServer.demoPage`).
enum DemoPage {
    static let head = #"""
        <!doctype html>
        <html lang="en">
        <head>
        <meta charset="utf-8">
        <meta name="viewport" content="width=device-width, initial-scale=1">
        <title>acm-serve demo</title>
        <style>
        :root { --fg: #1d2330; --muted: #5b6475; --line: #d5d9e2; --bg: #f6f7f9; --card: #fff; --accent: #2456c7; }
        * { box-sizing: border-box; }
        body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg); }
        header { padding: 1rem 1.5rem; background: var(--card); border-bottom: 1px solid var(--line); }
        header h1 { margin: 0; font-size: 1.3rem; }
        header p { margin: .25rem 0 0; color: var(--muted); }
        main { display: grid; grid-template-columns: repeat(auto-fit, minmax(340px, 1fr)); gap: 1rem; padding: 1rem 1.5rem; max-width: 1200px; }
        section { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 1rem 1.25rem; }
        section h2 { margin: 0 0 .75rem; font-size: 1.1rem; }
        fieldset { border: 0; margin: 0 0 .75rem; padding: 0; }
        legend, label.block { display: block; font-weight: 600; margin-bottom: .3rem; }
        .row { display: flex; flex-wrap: wrap; align-items: center; gap: .5rem; margin-bottom: .6rem; }
        input[type=range] { flex: 1; min-width: 140px; }
        input[type=text], input[type=password], select { font: inherit; padding: .3rem .4rem; border: 1px solid var(--line); border-radius: 4px; min-width: 12rem; }
        button { font: inherit; padding: .35rem .8rem; border: 1px solid var(--accent); background: var(--accent); color: #fff; border-radius: 4px; cursor: pointer; }
        button.plain { background: var(--card); color: var(--fg); border-color: var(--line); padding: 2px; }
        button.plain[aria-pressed=true] { border-color: var(--accent); box-shadow: 0 0 0 2px var(--accent); }
        button:disabled { opacity: .5; cursor: default; }
        button:focus-visible, input:focus-visible, select:focus-visible { outline: 3px solid #f0b400; outline-offset: 1px; }
        .samples { display: flex; flex-wrap: wrap; gap: .4rem; }
        .samples img { display: block; width: 42px; height: 42px; image-rendering: pixelated; }
        .viz { display: flex; flex-wrap: wrap; gap: 1rem; align-items: flex-start; }
        canvas { border: 1px solid var(--line); border-radius: 4px; image-rendering: pixelated; background: #000; }
        .legend { display: flex; align-items: center; gap: .4rem; font-size: .85rem; color: var(--muted); margin-top: .3rem; }
        .legend .bar { width: 140px; height: 12px; border-radius: 2px; border: 1px solid var(--line); }
        ol.labels { margin: 0; padding-left: 1.3rem; min-width: 14rem; }
        ol.labels li { margin: .15rem 0; }
        .prob { display: inline-block; height: .6rem; background: var(--accent); border-radius: 2px; margin-left: .4rem; vertical-align: middle; }
        dl.stats { display: grid; grid-template-columns: auto 1fr; gap: .15rem .8rem; margin: .6rem 0 0; }
        dl.stats dt { color: var(--muted); }
        dl.stats dd { margin: 0; font-variant-numeric: tabular-nums; }
        .status { min-height: 1.4em; color: var(--muted); }
        .status.error { color: #b00020; }
        .transcript { white-space: pre-wrap; background: var(--bg); border-radius: 4px; padding: .5rem; min-height: 3rem; }
        .visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
        .hint { color: var(--muted); font-size: .85rem; }
        </style>
        </head>
        <body>
        <header>
          <h1>acm-serve demo</h1>
          <p>Adaptive Computation Modules: each token of an image picks how many learners it runs. Pick a budget and see where the compute goes.</p>
        </header>
        <main>
        <section id="key-panel" aria-labelledby="key-title" hidden>
          <h2 id="key-title">API key</h2>
          <p class="hint">This server requires an API key for every call. It is sent as <code>Authorization: Bearer</code> and kept only in this page.</p>
          <div class="row">
            <label for="api-key" class="visually-hidden">API key</label>
            <input id="api-key" type="password" autocomplete="off" placeholder="API key">
          </div>
          <p class="hint">Model names are not listed without a key; type them below.</p>
        </section>

        <section id="image-panel" aria-labelledby="image-title">
          <h2 id="image-title">Image classification</h2>
          <div class="row">
            <label for="image-model" class="block">Model</label>
            <input id="image-model" type="text" list="image-models" autocomplete="off" spellcheck="false">
            <datalist id="image-models"></datalist>
          </div>
          <fieldset>
            <legend>Image</legend>
            <div class="samples" id="samples" role="group" aria-label="Bundled Fashion-MNIST test images"></div>
            <div class="row" style="margin-top:.5rem">
              <label for="image-file">Or upload a PNG or JPEG:</label>
              <input id="image-file" type="file" accept="image/png,image/jpeg">
            </div>
          </fieldset>
          <fieldset>
            <legend>Compute budget</legend>
            <div class="row">
              <input id="budget" type="range" min="0.05" max="1" step="0.05" value="0.5" aria-describedby="budget-value" aria-label="Compute budget">
              <output id="budget-value" for="budget">0.50</output>
              <label><input id="budget-auto" type="checkbox"> auto (the gates choose)</label>
            </div>
          </fieldset>
          <div id="image-status" class="status" role="status" aria-live="polite"></div>
          <div id="image-result" data-state="idle" data-seq="0">
            <div class="viz">
              <figure style="margin:0">
                <canvas id="heatmap" width="280" height="280" role="img" aria-label="The image with its per-patch learner counts"></canvas>
                <figcaption>
                  <div class="legend" id="legend" hidden><span id="legend-min">min</span><span class="bar" id="legend-bar"></span><span id="legend-max">max</span><span>learners per patch (mean over ACM layers)</span></div>
                  <label class="hint"><input id="show-heatmap" type="checkbox" checked> show heatmap</label>
                </figcaption>
              </figure>
              <div>
                <h3 style="margin:0 0 .3rem;font-size:1rem">Top 5</h3>
                <ol class="labels" id="labels"></ol>
                <dl class="stats">
                  <dt>Compute fraction</dt><dd id="compute-fraction">–</dd>
                  <dt>Budget</dt><dd id="budget-used">–</dd>
                  <dt>Latency</dt><dd id="latency">–</dd>
                </dl>
              </div>
            </div>
            <table id="heatmap-values" class="visually-hidden"><caption>Mean learners per patch, by row and column</caption><tbody></tbody></table>
          </div>
        </section>

        <section id="speech-panel" aria-labelledby="speech-title">
          <h2 id="speech-title">Speech recognition</h2>
          <div class="row">
            <label for="speech-model" class="block">Model</label>
            <input id="speech-model" type="text" list="speech-models" autocomplete="off" spellcheck="false">
            <datalist id="speech-models"></datalist>
          </div>
          <div class="row">
            <label for="audio-file">Audio file (WAV, FLAC, Ogg):</label>
            <input id="audio-file" type="file" accept="audio/*,.wav,.flac,.ogg">
          </div>
          <fieldset>
            <legend>Compute budget</legend>
            <div class="row">
              <input id="speech-budget" type="range" min="0.05" max="1" step="0.05" value="1" aria-describedby="speech-budget-value" aria-label="Speech compute budget">
              <output id="speech-budget-value" for="speech-budget">1.00</output>
              <label><input id="speech-budget-auto" type="checkbox"> auto</label>
            </div>
          </fieldset>
          <div class="row"><button id="transcribe" type="button" disabled>Transcribe</button></div>
          <div id="speech-status" class="status" role="status" aria-live="polite"></div>
          <div id="speech-result" data-state="idle" data-seq="0">
            <div class="transcript" id="transcript" aria-label="Transcript"></div>
            <dl class="stats">
              <dt>Compute fraction</dt><dd id="speech-fraction">–</dd>
              <dt>Latency</dt><dd id="speech-latency">–</dd>
            </dl>
          </div>
        </section>
        </main>
        <script id="demo-data" type="application/json">
        """#

    static let tail = #"""
        </script>
        <script>
        "use strict";
        const data = JSON.parse(document.getElementById("demo-data").textContent);
        const $ = (id) => document.getElementById(id);
        let current = null;        // the chosen image: a Blob
        let currentURL = null;     // and an object URL for drawing it
        let lastHeatmap = null;    // the last answer's heatmap, for redrawing
        let inflight = 0;

        if (data.keys) $("key-panel").hidden = false;

        function headers() {
          const key = $("api-key").value.trim();
          return key ? { "Authorization": "Bearer " + key } : {};
        }

        function fillModels(kind, listId, inputId) {
          const list = $(listId);
          const models = data.models.filter((m) => m.kind === kind);
          for (const m of models) {
            const o = document.createElement("option");
            o.value = m.name;
            o.label = m.acm ? "ACM" : "dense";
            list.appendChild(o);
          }
          const preferred = models.find((m) => m.acm) || models[0];
          if (preferred) $(inputId).value = preferred.name;
        }
        fillModels("image", "image-models", "image-model");
        fillModels("speech", "speech-models", "speech-model");
        if (!data.keys && !data.models.some((m) => m.kind === "speech")) {
          setStatus("speech-status", "This server serves no speech model.");
        }

        function modelInfo(name) { return data.models.find((m) => m.name === name); }

        // the bundled images
        for (const img of data.images) {
          const b = document.createElement("button");
          b.type = "button";
          b.className = "plain";
          b.setAttribute("aria-pressed", "false");
          b.dataset.index = img.index;
          b.title = img.label + " (test image " + img.index + ")";
          const el = document.createElement("img");
          el.src = "data:image/png;base64," + img.png;
          el.alt = img.label + ", Fashion-MNIST test image " + img.index;
          b.appendChild(el);
          b.addEventListener("click", async () => {
            const bytes = Uint8Array.from(atob(img.png), (c) => c.charCodeAt(0));
            choose(new Blob([bytes], { type: "image/png" }), b);
          });
          $("samples").appendChild(b);
        }

        function choose(blob, button) {
          for (const b of $("samples").children) b.setAttribute("aria-pressed", String(b === button));
          current = blob;
          if (currentURL) URL.revokeObjectURL(currentURL);
          currentURL = URL.createObjectURL(blob);
          classify();
        }

        $("image-file").addEventListener("change", (e) => {
          const f = e.target.files[0];
          if (f) choose(f, null);
        });

        function budgetText() { return $("budget-auto").checked ? "auto" : Number($("budget").value).toFixed(2); }
        function syncBudget() {
          $("budget").disabled = $("budget-auto").checked;
          $("budget-value").textContent = budgetText();
        }
        $("budget").addEventListener("input", syncBudget);
        $("budget").addEventListener("change", () => { syncBudget(); classify(); });
        $("budget-auto").addEventListener("change", () => { syncBudget(); classify(); });
        $("image-model").addEventListener("change", () => classify());
        $("show-heatmap").addEventListener("change", () => draw(lastHeatmap));
        syncBudget();

        function setStatus(id, text, error) {
          const el = $(id);
          el.textContent = text;
          el.classList.toggle("error", !!error);
        }

        async function errorText(r) {
          try { const j = await r.json(); return r.status + ": " + (j.error || r.statusText); }
          catch (_) { return r.status + ": " + r.statusText; }
        }

        async function classify() {
          if (!current) return;
          const model = $("image-model").value.trim();
          if (!model) { setStatus("image-status", "Choose a model.", true); return; }
          const info = modelInfo(model);
          // a dense model has no heatmap; a model the page does not know (keys on) is asked, and told 400 if dense
          const heat = !info || info.acm;
          const q = new URLSearchParams();
          if (!$("budget-auto").checked) q.set("compute_budget", $("budget").value);
          if (heat) q.set("heatmap", "1");
          const result = $("image-result");
          const seq = ++inflight;
          result.dataset.state = "busy";
          setStatus("image-status", "Classifying…");
          const t0 = performance.now();
          try {
            const r = await fetch("/v2/models/" + encodeURIComponent(model) + "/classify?" + q, {
              method: "POST", body: current, headers: headers(),
            });
            const ms = performance.now() - t0;
            if (seq !== inflight) return;  // a newer request is on its way
            if (!r.ok) throw new Error(await errorText(r));
            const j = await r.json();
            show(j, ms);
            setStatus("image-status", "");
            result.dataset.state = "done";
          } catch (e) {
            if (seq !== inflight) return;
            setStatus("image-status", String(e.message || e), true);
            result.dataset.state = "error";
          } finally {
            if (seq === inflight) result.dataset.seq = String(Number(result.dataset.seq) + 1);
          }
        }

        function show(j, ms) {
          const ol = $("labels");
          ol.replaceChildren();
          for (const l of j.labels) {
            const li = document.createElement("li");
            li.dataset.label = l.label;
            li.dataset.index = l.index;
            li.dataset.probability = l.probability;
            const bar = document.createElement("span");
            bar.className = "prob";
            bar.style.width = Math.max(1, Math.round(l.probability * 100)) + "px";
            bar.setAttribute("aria-hidden", "true");
            li.append(l.label + " " + (100 * l.probability).toFixed(1) + "%", bar);
            ol.appendChild(li);
          }
          $("compute-fraction").textContent = j.compute_fraction.toFixed(4);
          $("compute-fraction").dataset.value = j.compute_fraction;
          $("budget-used").textContent = j.compute_budget === undefined ? "auto" : j.compute_budget.toFixed(2);
          $("latency").textContent = ms.toFixed(1) + " ms (round trip)";
          lastHeatmap = j.patch_learners ? { rows: j.patch_learners, min: j.learners_min, max: j.learners_max } : null;
          const tbody = $("heatmap-values").tBodies[0];
          tbody.replaceChildren();
          if (lastHeatmap) {
            lastHeatmap.rows.forEach((row, r) => {
              const tr = document.createElement("tr");
              row.forEach((v, c) => {
                const td = document.createElement("td");
                td.dataset.row = r;
                td.dataset.col = c;
                td.dataset.value = v;
                td.textContent = v.toFixed(2);
                tr.appendChild(td);
              });
              tbody.appendChild(tr);
            });
          }
          draw(lastHeatmap);
        }

        // blue (few learners) → yellow → red (all of them)
        function color(t, alpha) {
          const stops = [[49, 54, 149], [69, 117, 180], [254, 224, 144], [244, 109, 67], [165, 0, 38]];
          t = Math.min(1, Math.max(0, t)) * (stops.length - 1);
          const i = Math.min(stops.length - 2, Math.floor(t)), f = t - i;
          const c = stops[i].map((v, k) => Math.round(v + f * (stops[i + 1][k] - v)));
          return "rgba(" + c.join(",") + "," + alpha + ")";
        }

        function draw(heat) {
          const canvas = $("heatmap"), ctx = canvas.getContext("2d");
          const W = canvas.width, H = canvas.height;
          ctx.clearRect(0, 0, W, H);
          const legend = $("legend");
          legend.hidden = !heat;
          if (heat) {
            const steps = [0, .25, .5, .75, 1].map((t) => color(t, 1) + " " + (t * 100) + "%");
            $("legend-bar").style.background = "linear-gradient(to right, " + steps.join(", ") + ")";
            $("legend-min").textContent = String(heat.min);
            $("legend-max").textContent = String(heat.max);
          }
          if (!currentURL) return;
          const img = new Image();
          img.onload = () => {
            // the model sees a centre square (resize, then centre crop): draw that square
            const s = Math.min(img.width, img.height);
            ctx.imageSmoothingEnabled = false;
            const overlay = heat && $("show-heatmap").checked;
            // under the heatmap, the image a little faded, on white, so that the colours stay readable
            ctx.fillStyle = "#fff";
            ctx.fillRect(0, 0, W, H);
            ctx.globalAlpha = overlay ? 0.7 : 1;
            ctx.drawImage(img, (img.width - s) / 2, (img.height - s) / 2, s, s, 0, 0, W, H);
            ctx.globalAlpha = 1;
            if (!overlay) return;
            const g = heat.rows.length, cw = W / g, ch = H / g, span = Math.max(1e-9, heat.max - heat.min);
            heat.rows.forEach((row, r) => row.forEach((v, c) => {
              ctx.fillStyle = color((v - heat.min) / span, 0.55);
              ctx.fillRect(c * cw, r * ch, cw, ch);
            }));
          };
          img.src = currentURL;
        }

        // speech
        function speechBudgetText() { return $("speech-budget-auto").checked ? "auto" : Number($("speech-budget").value).toFixed(2); }
        function syncSpeech() {
          $("speech-budget").disabled = $("speech-budget-auto").checked;
          $("speech-budget-value").textContent = speechBudgetText();
          $("transcribe").disabled = !$("audio-file").files.length;
        }
        for (const id of ["speech-budget", "speech-budget-auto", "audio-file"]) {
          $(id).addEventListener("input", syncSpeech);
          $(id).addEventListener("change", syncSpeech);
        }
        syncSpeech();

        $("transcribe").addEventListener("click", async () => {
          const file = $("audio-file").files[0];
          const model = $("speech-model").value.trim();
          if (!file || !model) { setStatus("speech-status", "Choose a model and an audio file.", true); return; }
          const q = new URLSearchParams();
          if (!$("speech-budget-auto").checked) q.set("compute_budget", $("speech-budget").value);
          const result = $("speech-result");
          result.dataset.state = "busy";
          $("transcribe").disabled = true;
          setStatus("speech-status", "Transcribing…");
          const t0 = performance.now();
          try {
            const r = await fetch("/v2/models/" + encodeURIComponent(model) + "/transcribe?" + q, {
              method: "POST", body: file, headers: headers(),
            });
            const ms = performance.now() - t0;
            if (!r.ok) throw new Error(await errorText(r));
            const j = await r.json();
            $("transcript").textContent = j.text;
            $("speech-fraction").textContent = j.compute_fraction.toFixed(4) + (j.compute_budget_applied ? "" : " (dense model: the budget does not apply)");
            $("speech-fraction").dataset.value = j.compute_fraction;
            $("speech-latency").textContent = (ms / 1000).toFixed(2) + " s (round trip)";
            setStatus("speech-status", "");
            result.dataset.state = "done";
          } catch (e) {
            setStatus("speech-status", String(e.message || e), true);
            result.dataset.state = "error";
          } finally {
            result.dataset.seq = String(Number(result.dataset.seq) + 1);
            syncSpeech();
          }
        });
        </script>
        </body>
        </html>

        """#
}
