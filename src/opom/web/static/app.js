// opom web: the page's behaviour. Plain JavaScript, no libraries, nothing loaded from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { session: null, maxUploadMb: 0, enrollFiles: [], protectFiles: [], busy: {} };

// ------------------------------------------------------------------------------------------- helpers

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
  }
  for (const child of children) if (child) node.append(child);
  return node;
}

function mb(bytes) { return (bytes / 1048576).toFixed(bytes < 10485760 ? 1 : 0); }

function show(id, on) { $(id).hidden = !on; }

function setError(step, message) {
  const box = $(step + "-error");
  box.textContent = message || "";
  box.hidden = !message;
}

function setProgress(step, text, fraction) {  // fraction null: a running job whose progress cannot be measured
  const box = $(step + "-progress");
  box.hidden = text === null;
  if (text === null) return;
  box.querySelector("p").textContent = text;
  const bar = box.querySelector(".bar");
  bar.classList.toggle("busy", fraction === null);
  bar.querySelector("i").style.width = fraction === null ? "" : Math.round(100 * fraction) + "%";
}

function setOutput(step, text) {
  const box = $(step + "-output");
  box.hidden = !text;
  box.querySelector("pre").textContent = text || "";
}

async function api(path, options = {}) {
  const response = await fetch(`/api/s/${state.session}${path}`, options);
  const body = await response.json().catch(() => ({ error: `error: the server answered ${response.status}` }));
  if (!response.ok) throw new Error(body.error || `error: the server answered ${response.status}`);
  return body;
}

// An upload with progress (fetch cannot report upload progress; XMLHttpRequest can).
function upload(path, form, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/s/${state.session}${path}`);
    xhr.responseType = "json";
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) onProgress(e.loaded, e.total); };
    xhr.onload = () => {
      const body = xhr.response || {};
      if (xhr.status >= 200 && xhr.status < 300) resolve(body);
      else reject(new Error(body.error || `error: the server answered ${xhr.status}`));
    };
    xhr.onerror = () => reject(new Error("error: the upload was cut off (is opom web still running?)"));
    xhr.send(form);
  });
}

function tooLarge(files) {
  const total = files.reduce((s, f) => s + f.size, 0);
  if (total <= state.maxUploadMb * 1048576) return null;
  return `error: the upload is larger than this server's limit of ${state.maxUploadMb} MB: send fewer or ` +
    "smaller files, or start it with `opom web --max-upload-mb N`";
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Poll a job until it ends; onStatus sees every state. Resolves with the final status.
async function follow(jobId, onStatus) {
  for (;;) {
    const status = await api(`/jobs/${jobId}`);
    onStatus(status);
    if (["done", "failed", "cancelled"].includes(status.state)) return status;
    await sleep(400);
  }
}

// Upload the files of a step, then follow its job; returns the job's final status (or throws the error line).
async function run(step, path, form, files, describe) {
  setError(step, null);
  setOutput(step, null);
  const limit = tooLarge(files);
  if (limit) throw new Error(limit);
  let started;
  if (files.length) {
    const total = files.reduce((s, f) => s + f.size, 0);
    setProgress(step, `Uploading ${files.length} file(s) (${mb(total)} MB) to opom on this computer`, 0);
    started = await upload(path, form, (done, all) =>
      setProgress(step, `Uploading ${files.length} file(s): ${mb(done)} of ${mb(all)} MB`, done / all));
  } else {
    started = await api(path, { method: "POST" });
  }
  const status = await follow(started.job, (s) => {
    if (s.state === "queued") setProgress(step, "Waiting for the job before it to finish (one job runs at a time)", null);
    else if (s.state === "running") setProgress(step, describe(s), s.total ? s.done / s.total : null);
  });
  setProgress(step, null);
  setOutput(step, status.output);
  if (status.state !== "done") throw new Error(status.error || "error: the job was cancelled");
  return status.result;
}

function lock(step, locked) { $("step-" + step).classList.toggle("locked", locked); }

function busy(step, on) {
  state.busy[step] = on;
  refreshButtons();
}

function refreshButtons() {
  $("enroll-go").disabled = state.busy.enroll || state.enrollFiles.length === 0;
  $("protect-go").disabled = state.busy.protect || state.protectFiles.length === 0 ||
    $("step-protect").classList.contains("locked");
  $("check-go").disabled = state.busy.check || $("step-check").classList.contains("locked");
}

// ----------------------------------------------------------------------------------------- drop zones

function dropZone(zoneId, inputId, onFiles) {
  const zone = $(zoneId), input = $(inputId);
  input.addEventListener("change", () => { onFiles([...input.files]); input.value = ""; });
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    onFiles([...e.dataTransfer.files]);
  });
}

function listFiles(listId, files, thumbs) {
  const list = $(listId);
  list.replaceChildren();
  for (const f of files) {
    if (thumbs && f.type.startsWith("image/")) {
      const img = el("img", { alt: f.name, title: f.name });
      img.src = URL.createObjectURL(f);
      img.onload = () => URL.revokeObjectURL(img.src);
      list.append(el("li", {}, img));
    } else {
      list.append(el("li", { text: `${f.name} (${mb(f.size)} MB)` }));
    }
  }
}

// ---------------------------------------------------------------------------------------------- enroll

function showMask(info, words, preview) {
  $("mask-title").textContent = `Mask of “${info.identity}” (strength ${info.eps}, made on ${info.surrogate_name})`;
  $("mask-words").replaceChildren(...(words || []).map((w) => el("li", { text: w })));
  if (!info.match) {
    $("mask-words").append(el("li", { text: "This mask file has no enrolment embedding: in step 2 choose " +
      "“the largest face” or “every face”." }));
  }
  $("mask-preview").hidden = !preview;
  if (preview) $("mask-preview").src = preview;
  show("enroll-result", true);
  const save = $("mask-save");
  save.href = info.download;
  save.setAttribute("download", info.file);
  save.hidden = false;
  lock("protect", false);
  refreshButtons();
}

async function enroll() {
  busy("enroll", true);
  const form = new FormData();
  for (const f of state.enrollFiles) form.append("files", f, f.name);
  form.append("name", $("enroll-name").value);
  form.append("strength", $("enroll-strength").value);
  form.append("eps", $("enroll-eps").value);
  form.append("iterations", $("enroll-iterations").value);
  try {
    const result = await run("enroll", "/enroll", form, state.enrollFiles,
      (s) => `${s.phase[0].toUpperCase()}${s.phase.slice(1)} (${Math.round(s.elapsed_s)} s)`);
    const skipped = Object.entries(result.skipped).map(([name, why]) => `Not used: ${name}: ${why}`);
    showMask(result.mask, result.plain.concat(skipped), result.preview);
  } catch (err) {
    setProgress("enroll", null);
    setError("enroll", err.message);
  } finally {
    busy("enroll", false);
  }
}

async function loadMask(file) {
  setError("enroll", null);
  const form = new FormData();
  form.append("file", file, file.name);
  try {
    const info = await upload("/mask", form, () => {});
    showMask(info, [`Loaded from ${file.name}.`], null);
  } catch (err) {
    setError("enroll", err.message);
  }
}

// --------------------------------------------------------------------------------------------- protect

function pictures(cls, ...items) {  // items: [label, url] pairs; missing pictures are left out
  const figs = items.filter(([, src]) => src).map(([label, src]) =>
    el("figure", {}, el("img", { src, alt: label }), el("figcaption", { text: label })));
  return el("div", { class: "pictures " + cls }, ...figs);
}

function card(file) {
  const p = file.pictures || {};
  const badge = el("span", { class: "badge " + (file.ok ? "ok" : "bad"), text: file.ok ? "protected" : file.outcome });
  const head = el("h3", {}, badge, el("span", { text: " " + file.name }));
  const words = file.ok  // otherwise the reason as `opom protect` prints it
    ? `${file.faces} face(s) protected; the largest change in a face is ${file.max_change} grey levels.`
    : (file.reason || file.plain);
  const body = el("div", { class: "card" + (file.ok ? "" : " failed") }, head, el("p", { text: words }));
  if (file.warning) body.append(el("p", { class: "warn", text: file.warning }));
  if (p.before || p.after) body.append(pictures("views", ["before", p.before], ["after", p.after]));
  if (p.zoom_before) {
    body.append(pictures("zooms", ["face before", p.zoom_before], ["face after", p.zoom_after],
      ["what changed (×10)", p.change]));
  }
  if (file.download) {
    body.append(el("a", { class: "button", href: file.download, download: file.name, text: "Download the protected copy" }));
  }
  return body;
}

async function protect() {
  busy("protect", true);
  const form = new FormData();
  for (const f of state.protectFiles) form.append("files", f, f.name);
  form.append("choose", $("protect-choose").value);
  form.append("strip_location", $("protect-strip").checked ? "1" : "");
  try {
    const result = await run("protect", "/protect", form, state.protectFiles, (s) => s.total
      ? `Protecting file ${Math.min(s.done + 1, s.total)} of ${s.total} (${Math.round(s.elapsed_s)} s)`
      : `${s.phase} (${Math.round(s.elapsed_s)} s)`);
    const summary = $("protect-summary");
    summary.replaceChildren(el("span", { text: `${result.protected} of ${result.total} file(s) protected. ` }));
    if (result.zip) summary.append(el("a", { class: "button", href: result.zip, download: "opom_protected.zip", text: "Download all (zip)" }));
    summary.hidden = false;
    const cards = $("protect-results");
    for (const file of result.files.slice().reverse()) cards.prepend(card(file));
    if (result.protected) { lock("check", false); }
    state.protectFiles = [];
    listFiles("protect-list", [], false);
  } catch (err) {
    setProgress("protect", null);
    setError("protect", err.message);
  } finally {
    busy("protect", false);
  }
}

// ----------------------------------------------------------------------------------------------- check

async function check() {
  busy("check", true);
  show("check-result", false);
  try {
    const result = await run("check", "/check", null, [],
      (s) => `${s.phase[0].toUpperCase()}${s.phase.slice(1)} (${Math.round(s.elapsed_s)} s)`);
    $("check-headline").textContent = result.headline;
    $("check-headline").className = "headline " + (result.all_protected ? "ok" : "bad");
    $("check-models").replaceChildren(...result.models.map((m) => el("li", { text: m.plain })));
    $("check-rows").replaceChildren(...result.rows.map((r) =>
      el("li", { class: r.protected ? "ok" : "bad" }, el("span", { class: "mark", text: r.protected ? "✓" : "✗" }),
        el("span", { text: r.plain }))));
    $("check-notes").replaceChildren(...result.notes.map((n) => el("li", { text: "Note: " + n })));
    show("check-result", true);
  } catch (err) {
    setProgress("check", null);
    setError("check", err.message);
  } finally {
    busy("check", false);
  }
}

// ------------------------------------------------------------------------------------------------ start

async function start() {
  // a file dropped next to a drop zone must not make the browser leave the page
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  dropZone("enroll-drop", "enroll-input", (files) => {
    state.enrollFiles = files; listFiles("enroll-list", files, true); refreshButtons();
  });
  dropZone("protect-drop", "protect-input", (files) => {
    state.protectFiles = files; listFiles("protect-list", files, false); refreshButtons();
  });
  $("mask-load-input").parentElement.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); $("mask-load-input").click(); }
  });
  $("mask-load-input").addEventListener("change", (e) => {
    const file = e.target.files[0]; e.target.value = ""; if (file) loadMask(file);
  });
  $("enroll-go").addEventListener("click", enroll);
  $("protect-go").addEventListener("click", protect);
  $("check-go").addEventListener("click", check);
  const response = await fetch("/api/session", { method: "POST" });
  const body = await response.json();
  state.session = body.session;
  state.maxUploadMb = body.max_upload_mb;
  document.body.dataset.session = state.session;  // for tests and curious people
  window.addEventListener("pagehide", () => navigator.sendBeacon(`/api/s/${state.session}/close`));
  window.addEventListener("pageshow", (e) => { if (e.persisted) location.reload(); });
}

start().catch((err) => setError("enroll", `error: cannot reach opom on this computer (${err.message})`));
